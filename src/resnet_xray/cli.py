"""The ``resnet-xray`` command: parse, call one library function, print.

User errors (:class:`~resnet_xray.errors.XrayError`) become one line on stderr and
exit status 2. Each capability package adds its subcommands through a
``commands.register(subparsers)`` function listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import XrayError

# Capability packages that contribute subcommands, in the order of the seed.
COMMAND_MODULES: tuple[str, ...] = (
    "resnet_xray.trace.commands",
    "resnet_xray.viz.commands",
    "resnet_xray.report.commands",
    "resnet_xray.train.commands",
    "resnet_xray.deploy.commands",
    "resnet_xray.prune.commands",
)


def add_model_args(p: argparse.ArgumentParser, default_weights: str = "imagenet", *, allow_nonfinite: bool = False) -> None:
    """``--arch`` and ``--weights``, meaning the same thing in every command.

    ``allow_nonfinite`` adds ``--allow-nonfinite``, for commands where looking at a model
    with NaN/Inf weights tells the user something (its structure, where the NaNs spread).
    """
    from .model import ARCHS

    p.add_argument("--arch", choices=ARCHS, default=None, help="torchvision ResNet (default: the checkpoint's, else resnet50)")
    p.add_argument(
        "--weights",
        default=default_weights,
        help="imagenet | imagenet-v1 | imagenet-v2 | random | PATH (.pth/.pt/.safetensors or a checkpoint) "
        f"(default: {default_weights})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    if allow_nonfinite:
        p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN/Inf (refused by default), to inspect them")


def model_from_args(args: argparse.Namespace):
    from .model import load_model

    return load_model(args.arch, args.weights, seed=args.seed, allow_nonfinite=getattr(args, "allow_nonfinite", False))


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def report_skipped(skipped) -> int:
    """List files that could not be used; exit status 2 if there were any."""
    for s in skipped:
        print(f"resnet-xray: skipped {s.path}: {s.reason}", file=sys.stderr)
    return 2 if skipped else 0


# --- foundation commands ---


def cmd_classify(args: argparse.Namespace) -> int:
    from .classify import ClassifyOptions, classify
    from .model import random_weights_warning

    if getattr(args, "model", None):  # a deployed artefact (.onnx / .xml) instead of --arch/--weights
        from .deploy.runtime import load_deployed

        model, meta = load_deployed(args.model)
    else:
        model, meta = model_from_args(args)
    result = classify(args.images, model, meta, ClassifyOptions(topk=args.topk, batch_size=args.batch_size))
    if not result.predictions and not result.skipped:
        raise XrayError(f"no image files found in: {' '.join(map(str, args.images))}")
    if not result.predictions and len(result.skipped) == 1:
        s = result.skipped[0]
        raise XrayError(f"{s.path}: {s.reason}")
    if args.json:
        print_json(result.to_dict())
    else:
        warn = random_weights_warning(meta)
        if warn:
            print(warn, file=sys.stderr)
        print(f"weights: {result.weights}; transforms: {result.transforms}")
        for p in result.predictions:
            print(p.image)
            for t in p.topk:
                print(f"  {t['prob']:7.2%}  {t['label']} (#{t['index']})")
            for h, v in p.heads.items():
                if h == "box":
                    from .train.boxes import describe_box

                    print(f"  box: {describe_box(v, p.image, meta.preprocessing)}")
                else:
                    print(f"  {h}: {', '.join(f'{x:.3f}' for x in v)}")
    if args.draw:
        from .train.boxes import draw_predictions

        for path in draw_predictions(result.predictions, meta.preprocessing, args.draw):
            print(f"drew {path}", file=sys.stderr)
    return report_skipped(result.skipped)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .preprocess import PreprocessOptions, preprocess_image

    info = preprocess_image(args.image, PreprocessOptions(output=args.output, weights=args.weights, arch=args.arch))
    if args.json:
        print_json(info)
    else:
        print(f"transforms: {info['transforms']}")
        print(f"tensor: shape {tuple(info['shape'])}, dtype {info['dtype']}")
        for c, m, s in zip("RGB", info["channel_mean"], info["channel_std"]):
            print(f"  channel {c}: mean {m:+.4f}  std {s:.4f}")
        if info.get("output"):
            print(f"saved what the network sees to {info['output']}")
    return 0


def cmd_anatomy(args: argparse.Namespace) -> int:
    from .anatomy import AnatomyOptions, analyze
    from .anatomy.text import full_text, layers_csv, summary_text

    if args.input_size < 32:
        raise XrayError(f"--input-size {args.input_size}: must be at least 32 (five stride-2 steps)")
    model, meta = model_from_args(args)
    a = analyze(model, meta.arch, AnatomyOptions(input_size=args.input_size))
    if args.json:
        print_json(a.to_dict())
    elif args.csv:
        sys.stdout.write(layers_csv(a))
    else:
        print(summary_text(a) if args.summary else full_text(a))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    return run_demo(DemoOptions(arch=args.arch or "resnet50", weights=args.weights, out_dir=Path(args.out), quiet=args.quiet))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-xray",
        description="Take a torchvision ResNet apart layer by layer, then make it fast and useful.",
    )
    parser.add_argument("--version", action="version", version=f"resnet-xray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("classify", help="top-k ImageNet (or checkpoint) labels for images and folders")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    add_model_args(p)
    p.add_argument("--model", metavar="PATH", help="a deployed model (.onnx, or OpenVINO .xml) instead of --arch/--weights")
    p.add_argument("--topk", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--draw", metavar="DIR", help="multi-task models: save each image with its predicted box drawn")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("preprocess", help="save what the network sees and print the tensor's statistics")
    p.add_argument("image")
    p.add_argument("-o", "--output", help="PNG of the de-normalised crop")
    p.add_argument("--weights", default=None, help="use these weights' declared transforms (default: the seed pipeline)")
    p.add_argument("--arch", default=None, help="arch for --weights imagenet* (default: resnet50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("anatomy", help="the measured layer table, Table 1 summary, totals and breakdowns")
    add_model_args(p, default_weights="random", allow_nonfinite=True)
    p.add_argument("--input-size", type=int, default=224, help="square input side (default: 224)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="everything as JSON")
    fmt.add_argument("--csv", action="store_true", help="the per-layer table as CSV")
    fmt.add_argument("--summary", action="store_true", help="stages, totals and breakdowns only")
    p.set_defaults(func=cmd_anatomy)

    p = sub.add_parser("demo", help="the main job on the bundled cat photo")
    add_model_args(p)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.set_defaults(func=cmd_demo)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except XrayError as e:
        print(f"resnet-xray: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("resnet-xray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `resnet-xray anatomy | head` closed the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
