"""``resnet-xray prune``: the iterative pruning loop, or (``--analyze-only``) the importance it would act on."""

from __future__ import annotations

import argparse
import sys

from ..cliutil import add_model_args, model_from_args, report_skipped
from ..errors import XrayError


def prune_args(p: argparse.ArgumentParser) -> None:
    from .importance import CRITERIA

    p.description = (
            "Remove whole channels (Torch-Pruning DepGraph: channels tied through residual adds and projection "
            "shortcuts go together; the classifier's outputs are never pruned) in --steps rounds until the model "
            "keeps --target-macs of its MACs, fine-tuning and evaluating after each round."
    )
    add_model_args(p)
    p.add_argument("--data", help="ImageFolder dataset (train/ and val/, or class folders) for fine-tuning, accuracy and taylor gradients")
    p.add_argument(
        "--target-macs",
        type=float,
        default=0.5,
        help="share of the unpruned model's MACs to KEEP, strictly between 0 and 1: 0.5 removes half of the MACs, "
        "0.3 removes 70%% (default: 0.5)",
    )
    p.add_argument("--steps", type=int, default=5, help="pruning rounds to reach the target, MACs removed evenly (default: 5)")
    p.add_argument("--importance", choices=CRITERIA, default="l1", help="channel criterion; taylor needs --data (default: l1)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after each round, 0 for none (default: 1)")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels across all layers instead of within each")
    p.add_argument("--round-to", type=int, default=8, help="keep pruned widths multiples of this, 1 for none (default: 8)")
    p.add_argument("--input-size", type=int, default=None, help="square side for MACs and latency (default: the data's or model's crop)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning peak learning rate (default: half the checkpoint's own, else the trainer's)")
    p.add_argument("--batch-size", type=int, default=32, help="images per fine-tuning/evaluation step (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default: 2)")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 runs per latency (median; default: 20)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for the latency runs (default: torch's and ORT's own)")
    p.add_argument("--no-ort", dest="measure_ort", action="store_false", help="skip the ONNX Runtime latency column")
    p.add_argument("--out", default="out/prune", help="output folder; rerunning with the same options resumes (default: out/prune)")
    g = p.add_argument_group("--analyze-only")
    g.add_argument("--analyze-only", action="store_true", help="print and plot channel importance and what would be dropped; prune nothing")
    g.add_argument("--ratio", type=float, default=0.3, help="with --analyze-only: share of channels to show as dropped (default: 0.3)")
    p.set_defaults(func=cmd_prune, option_flags={"ratio": "--ratio"})


def cmd_prune(args: argparse.Namespace) -> int:
    from .. import api
    from .loop import PruneOptions

    if args.importance == "taylor" and not args.data:
        raise XrayError("--importance taylor needs gradients of the loss: pass --data DIR (or choose l1, l2 or bn-scale)")
    opts = PruneOptions(
        target_macs=args.target_macs,
        steps=args.steps,
        importance=args.importance,
        finetune_epochs=args.finetune_epochs,
        global_pruning=args.global_pruning,
        round_to=args.round_to,
        input_size=args.input_size,
        lr=args.lr,
        batch_size=args.batch_size,
        workers=args.workers,
        latency_repeats=args.latency_repeats,
        measure_ort=args.measure_ort,
        threads=args.threads,
        seed=args.seed,
        out=args.out,
    )  # refuses bad flags, named as typed, before the model is built or the data read
    model, meta = model_from_args(args)
    data = api.prune_data(args.data, meta, opts)
    if args.analyze_only:
        from .analyze import (
            AnalyzeOptions,
            analyze_importance,
            importance_text,
            write_importance,
        )

        aopts = AnalyzeOptions(importance=args.importance, ratio=args.ratio, global_pruning=args.global_pruning, round_to=args.round_to, out=args.out)
        groups = analyze_importance(model, aopts, data)
        print(importance_text(groups, aopts))
        from ..locks import output_lock

        with output_lock(args.out, "--out"):
            js, png = write_importance(groups, aopts, meta.arch)
        print(f"wrote {js} and {png}")
    else:
        from .loop import prune

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
