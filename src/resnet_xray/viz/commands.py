"""``resnet-xray show features|kernels|cam|stages``: one PNG per call."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..atomic import check_writable
from ..cliutil import add_model_args, model_from_args
from ..options import Flags


def _output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("-o", "--output", default=default, help=f"PNG to write (default: {default})")


def _flags(picture: str) -> Flags:
    """The options dataclass fields that are flags of ``show PICTURE``."""
    if picture == "features":
        from .features import FeaturesOptions

        return Flags(FeaturesOptions, ("layer", "channels"), required=("layer",), choices={"channels": ("first", "top")})
    if picture == "kernels":
        from .kernels import KernelsOptions

        return Flags(KernelsOptions, ("layer", "count"))
    if picture == "cam":
        from .cam import CAM_METHODS, CAM_STAGES, CamOptions

        return Flags(CamOptions, ("class_index", "layer", "methods"), spelling={"class_index": "--class", "methods": "--method"},
                     repeat=("methods",), choices={"methods": CAM_METHODS, "layer": CAM_STAGES})
    from .stages import StagesOptions

    return Flags(StagesOptions, ("channels",))


def cmd_show(args: argparse.Namespace) -> int:
    """Build the picture's options (refusing bad values before the model is built), draw it, say where it went."""
    from .. import api
    from ..cliutil import print_json
    from .canvas import weights_warning

    opts = _flags(args.picture).build(args)
    check_writable(args.output)
    model = api.LoadedModel(*model_from_args(args))
    res = api.show(model, args.picture, args.output, getattr(args, "image", None), **dataclasses.asdict(opts))
    warning = weights_warning(res.weights)  # the line the picture's title carries
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"{res.caption}\nwrote {res.path}" if args.picture != "stages" else f"wrote {res.path}")
    return 0


PICTURES = (
    ("features", "8x8 grid of 64 channels of one layer's output", True),
    ("kernels", "a conv layer's weights (conv1: 64 RGB 7x7 filters)", False),
    ("cam", "Grad-CAM (and more) overlays from any stage (layer4 by default) for the predicted or given class", True),
    ("stages", "one row per stage (stem, layer1..layer4) of the most active channels", True),
)  # name, help, whether it takes an image


def show_args(show: argparse.ArgumentParser) -> None:
    kinds = show.add_subparsers(dest="picture", metavar="PICTURE", required=True)
    for name, text, takes_image in PICTURES:
        p = kinds.add_parser(name, help=text)
        if takes_image:
            p.add_argument("image")
        _flags(name).add(p)
        add_model_args(p)
        _output(p, f"{name}.png")
        p.add_argument("--json", action="store_true", help="print the picture's path, caption and numbers as JSON")
        p.set_defaults(func=cmd_show)
