"""``resnet-xray report IMAGE -o DIR``: the self-contained HTML report and its JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliutil import add_model_args, model_from_args, warn_random


def cmd_report(args: argparse.Namespace) -> int:
    from .. import api
    from ..atomic import writable_dir
    from ..image import load_image
    from .assemble import check_sections

    # Bad flags fail before the model is built or anything is written.
    sections = check_sections(tuple(s.strip() for s in args.sections.split(",") if s.strip())) if args.sections else None
    load_image(args.image)  # a bad image fails here, before the model is built
    model = model_from_args(args)  # before the folder: a refused model must not leave an empty output folder behind
    writable_dir(args.output)
    warn_random(model.meta)
    res = api.report(model, args.image, args.output, cam_class=args.class_index, gradflow=not args.no_gradflow,
                     sections=sections, quiet=args.quiet)
    slowest = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(res.seconds.items(), key=lambda kv: -kv[1])[:4] if k != "total_before_write")
    print(f"wrote {res.html} ({res.html_bytes / 1e6:.1f} MB, self-contained) and {res.json}")
    print(f"time: {res.total_s:.1f} s (slowest: {slowest})")
    print(f"open it: file://{Path(res.html).resolve()}")
    return 0


def report_args(p: argparse.ArgumentParser) -> None:
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
