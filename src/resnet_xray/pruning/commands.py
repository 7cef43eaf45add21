"""``resnet-xray prune``: the iterative pruning loop, or (``--analyze-only``) the importance it would act on."""

from __future__ import annotations

import argparse
import sys

from ..cliutil import add_model_args, model_from_args, report_skipped
from ..errors import XrayError
from ..options import Flags


PRUNE_FLAGS = ("target_macs", "steps", "importance", "finetune_epochs", "distill", "global_pruning", "round_to", "input_size", "lr",
               "batch_size", "workers", "latency_repeats", "threads", "measure_ort", "out", "skip_unreadable")


def prune_flags() -> Flags:
    from .importance import CRITERIA
    from .loop import PruneOptions

    return Flags(
        PruneOptions, PRUNE_FLAGS, spelling={"global_pruning": "--global", "measure_ort": "--no-ort"},
        choices={"importance": CRITERIA},
    )


def analyze_flags() -> Flags:
    from .analyze import AnalyzeOptions

    return Flags(AnalyzeOptions, ("ratio",))


def prune_args(p: argparse.ArgumentParser) -> None:
    p.description = (
            "Remove whole channels (Torch-Pruning DepGraph: channels tied through residual adds and projection "
            "shortcuts go together; the classifier's outputs are never pruned) in --steps rounds until the model "
            "keeps --target-macs of its MACs, fine-tuning and evaluating after each round."
    )
    add_model_args(p)
    p.add_argument("--data", help="ImageFolder dataset (train/ and val/, or class folders) for fine-tuning, accuracy and taylor gradients")
    prune_flags().add(p)
    g = p.add_argument_group("--analyze-only")
    g.add_argument("--analyze-only", action="store_true", help="print and plot channel importance and what would be dropped; prune nothing")
    analyze_flags().add(g)
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from .loop import prune_loaders

    if args.importance == "taylor" and not args.data:
        raise XrayError("--importance taylor needs gradients of the loss: pass --data DIR (or choose l1, l2 or bn-scale)")
    opts = prune_flags().build(args, seed=args.seed)  # refuses bad flags, named as typed, before the model is built or the data read
    model, meta = model_from_args(args)
    data = prune_loaders(args.data, meta, opts, skip_flag="--skip-unreadable")
    if args.analyze_only:
        from .analyze import (
            analyze_importance,
            importance_text,
            write_importance,
        )

        aopts = analyze_flags().build(args, importance=opts.importance, global_pruning=opts.global_pruning,
                                       round_to=opts.round_to, out=opts.out)
        groups = analyze_importance(model, aopts, data)
        print(importance_text(groups, aopts))
        from ..locks import output_lock

        with output_lock(args.out, "--out"):
            js, png = write_importance(groups, aopts, meta.arch)
        print(f"wrote {js} and {png}")
    else:
        from ..deploy.search import prune_with_ort as prune  # the loop with its ONNX Runtime column

        result = prune(model, meta, opts, data, log=lambda s: print(s, flush=True))
        print()
        print(result.rounds_table)
        print()
        print("channels per stage (before -> after)")
        print(result.stage_table)
        print()
        print(f"pruned model: {result.final_checkpoint} (load it anywhere with --weights {result.final_checkpoint})")
        if result.plot:
            print(f"plot: {result.plot}")
    sys.stdout.flush()
    return report_skipped(data.skipped if data is not None else [])
