"""``resnet-xray report IMAGE -o DIR``: the self-contained HTML report and its JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliutil import add_model_args, model_from_args, print_json, warn_random
from ..options import Flags


def _flags() -> Flags:
    from .assemble import ReportOptions

    return Flags(
        ReportOptions, ("out_dir", "cam_class", "gradflow", "sections", "layers", "quiet"),
        spelling={"out_dir": ("-o", "--output"), "cam_class": "--class"},
        metavar={"sections": "IDS", "out_dir": "OUTPUT", "layers": "LAYERS.json"},
    )


def cmd_report(args: argparse.Namespace) -> int:
    from .. import api
    from ..atomic import removed_if_failed, writable_dir
    from ..image import load_image

    opts = _flags().build(args)  # bad flags fail before the model is built or anything is written
    load_image(args.image)  # a bad image fails here, before the model is built
    model = model_from_args(args)  # before the folder: a refused model must not leave an empty output folder behind
    with removed_if_failed(opts.out_dir):  # a failed report leaves no empty folder behind
        writable_dir(opts.out_dir)
        warn_random(model.meta)
        res = api.report(model, args.image, opts)
    if args.json:
        print_json(res.to_dict())
        return 0
    slowest = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(res.seconds.items(), key=lambda kv: -kv[1])[:4] if k != "total_before_write")
    print(f"wrote {res.html} ({res.html_bytes / 1e6:.1f} MB, self-contained) and {res.json}")
    print(f"time: {res.total_s:.1f} s (slowest: {slowest})")
    print(f"open it: file://{Path(res.html).resolve()}")
    return 0


def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image")
    _flags().add(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="what was written, the time per section and the weights' provenance, as JSON")
    p.set_defaults(func=cmd_report)
