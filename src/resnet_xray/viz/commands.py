"""``resnet-xray show features|kernels|cam|stages``: one PNG per call."""

from __future__ import annotations

import argparse
import sys

from ..atomic import check_writable
from ..cliutil import add_model_args, model_from_args


def _output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("-o", "--output", default=default, help=f"PNG to write (default: {default})")


def _precheck(path: str) -> None:
    """Refuse an unwritable destination before any compute is spent."""
    check_writable(path)


def cmd_features(args: argparse.Namespace) -> int:
    from .features import FeaturesOptions
    from .show import show_features

    _precheck(args.output)
    model, meta = model_from_args(args)
    path, grid = show_features(args.image, model, meta, args.output, FeaturesOptions(layer=args.layer, channels=args.channels))
    print(f"{grid.caption()}\nwrote {path}")
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from .kernels import KernelsOptions
    from .show import show_kernels

    _precheck(args.output)
    model, meta = model_from_args(args)
    path, caption = show_kernels(model, args.output, KernelsOptions(layer=args.layer, count=args.count), weights=meta.weights)
    print(f"{caption}\nwrote {path}")
    if not meta.pretrained:
        print("note: random weights; the kernels are initialisation noise, not learned filters", file=sys.stderr)
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from .cam import METHOD_TITLES, CamOptions, format_prob
    from .show import show_cam

    _precheck(args.output)
    model, meta = model_from_args(args)
    methods = tuple(dict.fromkeys(["gradcam", *(args.method or ["gradcam++"])]))
    path, r = show_cam(args.image, model, meta, args.output, CamOptions(class_index=args.class_index, methods=methods))
    print(f"class #{r.class_index} {r.label} (p = {format_prob(r.prob)}, {'predicted' if r.predicted else 'requested'}); "
          f"{', '.join(METHOD_TITLES[m] for m in r.maps)} on {r.layer}\nwrote {path}")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from .show import show_stages
    from .stages import StagesOptions

    opts = StagesOptions(channels=args.channels)  # refuse a bad value before the model is built
    _precheck(args.output)
    model, meta = model_from_args(args)
    path = show_stages(args.image, model, meta, args.output, opts)
    print(f"wrote {path}")
    return 0


def show_args(show: argparse.ArgumentParser) -> None:
    from .cam import CAM_METHODS

    kinds = show.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    p = kinds.add_parser("features", help="8x8 grid of 64 channels of one layer's output")
    p.add_argument("image")
    p.add_argument("--layer", required=True, help="layer name as in `resnet-xray anatomy`, e.g. layer1.0.relu_2")
    p.add_argument("--channels", choices=("first", "top"), default="first",
                   help="first: channels 0-63 (as the seed); top: the 64 with the highest mean activation")
    add_model_args(p)
    _output(p, "features.png")
    p.set_defaults(func=cmd_features)

    p = kinds.add_parser("kernels", help="a conv layer's weights (conv1: 64 RGB 7x7 filters)")
    p.add_argument("--layer", default="conv1", help="Conv2d module name (default: conv1)")
    p.add_argument("--count", type=int, default=64, help="filters to draw (default: 64)")
    add_model_args(p)
    _output(p, "kernels.png")
    p.set_defaults(func=cmd_kernels)

    p = kinds.add_parser("cam", help="Grad-CAM (and more) overlays on layer4 for the predicted or given class")
    p.add_argument("image")
    p.add_argument("--class", dest="class_index", type=int, default=None, help="class index (default: the prediction)")
    p.add_argument("--method", action="append", choices=CAM_METHODS, default=[],
                   help="extra CAM method beside Grad-CAM; repeatable (default: gradcam++)")
    add_model_args(p)
    _output(p, "cam.png")
    p.set_defaults(func=cmd_cam)

    p = kinds.add_parser("stages", help="one row per stage (stem, layer1..layer4) of the most active channels")
    p.add_argument("image")
    p.add_argument("--channels", type=int, default=8, help="channels per row (default: 8)")
    add_model_args(p)
    _output(p, "stages.png")
    p.set_defaults(func=cmd_stages)
