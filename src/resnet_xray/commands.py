"""The foundation commands: ``classify``, ``preprocess``, ``anatomy`` and ``demo``.

Each ``*_args`` function adds one command's flags (listed in :data:`resnet_xray.cli.COMMANDS`);
each ``cmd_*`` calls one API verb and renders its result, as text or as its ``to_dict()``.
"""

from __future__ import annotations

import argparse
import sys

from .cliutil import add_model_args, model_from_args, print_json, print_result, refuse_batch_flags_without_out, report_skipped, warn_random
from .errors import XrayError
from .options import Flags



def _classify_flags() -> Flags:
    from .classification import ClassifyOptions

    return Flags(ClassifyOptions, ("topk", "batch_size"))


def _batch_flags() -> Flags:
    from .batch.options import BatchOptions

    return Flags(BatchOptions, ("workers", "threads", "overwrite"))


def classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files and/or folders (with --out: glob patterns too)")
    add_model_args(p)
    p.add_argument("--model", metavar="PATH", help="a deployed model (.onnx, or OpenVINO .xml) instead of --arch/--weights")
    _classify_flags().add(p)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--draw", metavar="DIR", help="multi-task models: save each image with its predicted box drawn")
    big = p.add_argument_group("large collections (with --out)")
    big.add_argument("--out", metavar="FILE", help="write one record per image to FILE (.jsonl or .parquet) in "
                     "throughput mode; running again resumes")
    big.add_argument("--manifest", metavar="FILE", help="also classify the paths this text or CSV file lists")
    big.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run as a Ray Data pipeline on this cluster (no ADDRESS: a local Ray instance)")
    _batch_flags().add(big)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    from . import api

    if args.out:
        return _classify_to_file(args)
    refuse_batch_flags_without_out(args, "--manifest", "--ray", "--workers", "--threads", "--overwrite")
    if not args.images:
        raise XrayError("classify: give image files or folders")
    opts = _classify_flags().build(args)  # checked before the model is built: a bad flag costs no time
    if args.model:  # a deployed artefact describes itself (class names, preprocessing, arch)
        from .api import LoadedModel
        from .deploy.runtime import load_deployed

        model = LoadedModel(*load_deployed(args.model))
    else:
        model = model_from_args(args)
    result = api.classify(model, args.images, topk=opts.topk, batch_size=opts.batch_size, progress=not args.json)
    if args.json:
        print_json(result.to_dict())
    else:
        warn_random(result.weights)
        print(f"weights: {result.weights.source}; transforms: {result.transforms}")
        print(result.weights.trained_line())
        for p in result.results:
            print(p.image)
            for t in p.topk:
                print(f"  {t['prob']:7.2%}  {t['label']} (#{t['index']})")
            for h, v in p.heads.items():
                if h == "box":
                    from .train.boxes import describe_box

                    print(f"  box: {describe_box(v, p.image, model.meta.preprocessing)}")
                else:
                    print(f"  {h}: {', '.join(f'{x:.3f}' for x in v)}")
    if args.draw:
        from .train.boxes import draw_predictions

        for path in draw_predictions(result.results, model.meta.preprocessing, args.draw):
            print(f"drew {path}", file=sys.stderr)
    return report_skipped(result.skipped)


def _classify_to_file(args: argparse.Namespace) -> int:
    """classify --out: the collection into a results file, resumable (resnet_xray.batch)."""
    from . import api
    from .batch.records import check_out

    opts = _batch_flags().build(args, topk=args.topk, batch_size=args.batch_size, progress=not args.json)
    check_out(args.out)  # before the model loads
    if args.ray:
        from .batch.on_ray import require_ray

        require_ray()
    if args.draw:
        raise XrayError("--draw: not with --out; classify the images to draw without --out")
    if not args.images and not args.manifest:
        raise XrayError("classify --out: give image files, folders, glob patterns or --manifest FILE")
    model = args.model or model_from_args(args)
    res = api.classify_batch(model, args.images, args.out, opts, manifest=args.manifest, ray=args.ray)
    if args.json:
        print_json(res.to_dict())
    else:
        warn_random(res.weights)
        print(f"{res.out}: {res.written} record(s) added, {res.already} already there; "
              f"{res.images_per_s:.1f} img/s ({res.engine}{', on Ray' if res.ray else ''})")
    if res.errors:
        print(f"resnet-xray: {res.errors} file(s) could not be read; their records in {res.out} say why", file=sys.stderr)
    return 0


def _preprocess_flags() -> Flags:
    from .preprocessing import PreprocessOptions

    return Flags(PreprocessOptions, ("output", "weights", "arch"), spelling={"output": ("-o", "--output")})


def preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image")
    _preprocess_flags().add(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from . import api

    return print_result(args, api.preprocess(args.image, **_preprocess_flags().values(args)), _preprocess_text)


def _preprocess_text(res) -> str:
    lines = [f"transforms: {res.transforms}", f"tensor: shape {tuple(res.shape)}, dtype {res.dtype}"]
    lines += [f"  channel {c}: mean {m:+.4f}  std {s:.4f}" for c, m, s in zip("RGB", res.channel_mean, res.channel_std)]
    if res.output:
        lines.append(f"saved what the network sees to {res.output}")
    return "\n".join(lines)


def anatomy_args(p: argparse.ArgumentParser) -> None:
    from .dissect import AnatomyOptions

    add_model_args(p, default_weights="random", allow_nonfinite=True)
    Flags(AnatomyOptions, ("input_size",)).add(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="everything as JSON")
    fmt.add_argument("--csv", action="store_true", help="the per-layer table as CSV")
    fmt.add_argument("--summary", action="store_true", help="stages, totals and breakdowns only")
    p.set_defaults(func=cmd_anatomy)


def cmd_anatomy(args: argparse.Namespace) -> int:
    from . import api
    from .dissect import AnatomyOptions
    from .dissect.text import full_text, layers_csv, summary_text

    AnatomyOptions(input_size=args.input_size)  # refuse a bad size before the model is built
    res = api.anatomy(model_from_args(args), input_size=args.input_size)
    if args.json:
        print_json(res.to_dict())
    elif args.csv:
        sys.stdout.write(layers_csv(res))
    else:
        print(summary_text(res) if args.summary else full_text(res))
    return 0


def _demo_flags() -> Flags:
    from .demo import DemoOptions

    return Flags(DemoOptions, ("out_dir", "quiet"), spelling={"out_dir": "--out"})


def demo_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    _demo_flags().add(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(_demo_flags().build(args, arch=args.arch or "resnet50", weights=args.weights))
