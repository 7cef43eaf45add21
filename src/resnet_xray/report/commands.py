"""``resnet-xray report IMAGE -o DIR``: the self-contained HTML report and its JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from ..cli import model_from_args
    from ..model import random_weights_warning
    from . import ReportOptions, build_report
    from ..image import load_image
    from .assemble import check_out_dir, check_sections

    # Bad flags fail before the model is built or anything is written.
    sections = check_sections(tuple(s.strip() for s in args.sections.split(",") if s.strip())) if args.sections else None
    load_image(args.image)  # a bad image fails here, before the model is built
    model, meta = model_from_args(args)  # before the folder: a refused model must not leave an empty output folder behind
    out = check_out_dir(args.output)
    warn = random_weights_warning(meta)
    if warn:
        print(warn, file=sys.stderr)
    opts = ReportOptions(out_dir=out, cam_class=args.class_index, gradflow=not args.no_gradflow, sections=sections, quiet=args.quiet)
    res = build_report(args.image, model, meta, opts)
    slowest = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(res.seconds.items(), key=lambda kv: -kv[1])[:4] if k != "total_before_write")
    print(f"wrote {res.html} ({res.html_bytes / 1e6:.1f} MB, self-contained) and {res.json}")
    print(f"time: {res.total_s:.1f} s (slowest: {slowest})")
    print(f"open it: file://{Path(res.html).resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_model_args

    p = sub.add_parser("report", help="one self-contained HTML page (and JSON) following an image through the network")
    p.add_argument("image")
    p.add_argument("-o", "--output", default="out/report", help="output folder (default: out/report)")
    p.add_argument("--class", dest="class_index", type=int, default=None, help="Grad-CAM class index (default: the prediction)")
    p.add_argument("--no-gradflow", action="store_true", help="leave out the gradient-flow section (its slowest part)")
    p.add_argument("--sections", default=None, metavar="IDS",
                   help="comma-separated subset, kept in the seed's order: input,kernel,channels,conv1,bottleneck,shortcuts,"
                        "stages,residual,gradflow,cost,cam,conclusion (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    add_model_args(p)
    p.set_defaults(func=cmd_report)
