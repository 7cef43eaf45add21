"""``resnet-xray show features|kernels|cam|stages``: one PNG per call."""

from __future__ import annotations

import argparse
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

        return Flags(FeaturesOptions, ("layer", "channels"), required=("layer",), choices={"channels": ("first", "top")},
                     help={"layer": "layer name as in `resnet-xray anatomy`, e.g. layer1.0.relu_2",
                           "channels": "first: channels 0-63 (as the seed); top: the 64 with the highest mean activation"})
    if picture == "kernels":
        from .kernels import KernelsOptions

        return Flags(KernelsOptions, ("layer", "count"), help={"layer": "Conv2d module name", "count": "filters to draw"})
    if picture == "cam":
        from .cam import CAM_METHODS, CamOptions

        return Flags(CamOptions, ("class_index", "methods"), spelling={"class_index": "--class", "methods": "--method"},
                     repeat=("methods",), choices={"methods": CAM_METHODS},
                     help={"class_index": "class index (default: the prediction)",
                           "methods": "extra CAM method beside Grad-CAM; repeatable (default: gradcam++)"})
    from .stages import StagesOptions

    return Flags(StagesOptions, ("channels",), help={"channels": "channels per row"})


def cmd_show(args: argparse.Namespace) -> int:
    """Build the picture's options (refusing bad values before the model is built), draw it, say where it went."""
    opts = _flags(args.picture).build(args)
    check_writable(args.output)
    model, meta = model_from_args(args)
    return {"features": _features, "kernels": _kernels, "cam": _cam, "stages": _stages}[args.picture](args, model, meta, opts)


def _features(args, model, meta, opts) -> int:
    from .show import show_features

    path, grid = show_features(args.image, model, meta, args.output, opts)
    print(f"{grid.caption()}\nwrote {path}")
    return 0


def _kernels(args, model, meta, opts) -> int:
    from .show import show_kernels

    path, caption = show_kernels(model, args.output, opts, weights=meta.weights)
    print(f"{caption}\nwrote {path}")
    if not meta.pretrained:
        print("note: random weights; the kernels are initialisation noise, not learned filters", file=sys.stderr)
    return 0


def _cam(args, model, meta, opts) -> int:
    from .cam import METHOD_TITLES, format_prob
    from .show import show_cam

    path, r = show_cam(args.image, model, meta, args.output, opts)
    print(f"class #{r.class_index} {r.label} (p = {format_prob(r.prob)}, {'predicted' if r.predicted else 'requested'}); "
          f"{', '.join(METHOD_TITLES[m] for m in r.maps)} on {r.layer}\nwrote {path}")
    return 0


def _stages(args, model, meta, opts) -> int:
    from .show import show_stages

    print(f"wrote {show_stages(args.image, model, meta, args.output, opts)}")
    return 0


PICTURES = (
    ("features", "8x8 grid of 64 channels of one layer's output", True),
    ("kernels", "a conv layer's weights (conv1: 64 RGB 7x7 filters)", False),
    ("cam", "Grad-CAM (and more) overlays on layer4 for the predicted or given class", True),
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
        p.set_defaults(func=cmd_show)
