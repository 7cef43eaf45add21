"""CLI for training: ``make-dataset``, ``finetune`` (also under torchrun), ``finetune-multitask``, ``bench-data``."""

from __future__ import annotations

import argparse

from ..cliutil import add_model_args, print_json, print_result
from ..options import Flags


MAKE_DATASET_FLAGS = ("task", "classes", "per_class", "val_per_class", "size", "seed", "overwrite")


def make_dataset_flags() -> Flags:
    from ..datasets.reference import TASKS, ReferenceOptions

    return Flags(ReferenceOptions, MAKE_DATASET_FLAGS, choices={"task": tuple(TASKS)})


def make_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (gets train/, val/, boxes.csv, dataset.json)")
    make_dataset_flags().add(p)
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.add_argument("--json", action="store_true", help="print what was written (classes, counts, size) as JSON")
    p.set_defaults(func=cmd_make_dataset)


def finetune_args(p: argparse.ArgumentParser) -> None:
    _finetune_args(p, multitask=False)


def finetune_multitask_args(p: argparse.ArgumentParser) -> None:
    _finetune_args(p, multitask=True)


# FinetuneOptions fields that are flags (arch, weights and seed come from the shared model flags)
FINETUNE_FLAGS = ("epochs", "batch_size", "lr", "recipe", "optimizer", "muon_lr", "muon_stages", "ns_steps", "weight_decay", "warmup_epochs", "freeze", "layer_lr_decay",
                  "label_smoothing", "amp", "channels_last", "zero_init_residual", "stem_init", "progressive", "ema", "tta_flip", "compile", "workers", "image_size",
                  "min_crop_scale", "multitask", "checkpoint_every", "stop_after_steps", "device", "progress", "skip_unreadable")


def finetune_flags(multitask: bool) -> Flags:
    from .recipe import FREEZE_MODES, OPTIMIZERS, RECIPES, STEM_INITS, FinetuneOptions

    names = tuple(n for n in FINETUNE_FLAGS if not (multitask and n == "multitask"))  # finetune-multitask fixes it on
    return Flags(
        FinetuneOptions, names,
        choices={"recipe": RECIPES, "optimizer": OPTIMIZERS, "freeze": FREEZE_MODES, "stem_init": STEM_INITS, "device": ("auto", "cpu", "cuda")},
        metavar={"layer_lr_decay": "D", "progressive": "SIZES", "ema": "DECAY", "muon_stages": "STAGES", "ns_steps": "N"},
    )


def _finetune_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    # one flag list for both commands; finetune-multitask only fixes --multitask on
    p.add_argument("data", help="dataset folder: train/ and val/ class folders, or class folders only")
    p.add_argument("--out", required=True, help="output folder: best.pt, last.pt, metrics.csv, confusion.png, summary.json")
    add_model_args(p, default_weights="imagenet")  # --arch, --weights, --seed (init, shuffling, augmentation)
    finetune_flags(multitask).add(p)
    p.add_argument("--class-weight", type=float, default=1.0, help="multi-task: weight of the classification loss (finite, 0 or more)")
    p.add_argument("--box-weight", type=float, default=1.0, help="multi-task: weight of the box loss (finite, 0 or more)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT (default: refuse)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_finetune, multitask_default=multitask)


BENCH_DATA_FLAGS = ("arch", "batch_size", "workers", "image_size", "steps", "amp", "channels_last", "seed")


def bench_data_args(p: argparse.ArgumentParser) -> None:
    from .bench import DataBenchOptions

    p.add_argument("data", help="dataset folder")
    Flags(DataBenchOptions, BENCH_DATA_FLAGS).add(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_data)


def cmd_make_dataset(args: argparse.Namespace) -> int:
    import dataclasses

    from .. import api

    opts = make_dataset_flags().build(args)
    res = api.make_dataset(args.out, quiet=args.quiet or args.json, **dataclasses.asdict(opts))
    if args.json:
        print_json(res.to_dict())
        return 0
    info = res.info
    n_train, n_val = info["train_per_class"] * len(info["classes"]), info["val_per_class"] * len(info["classes"])
    print(f"wrote {args.out}: {n_train} train + {n_val} val images, {len(info['classes'])} classes "
          f"({', '.join(info['classes'])}), {info['size']}x{info['size']} px, boxes in boxes.csv")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .. import api

    multitask = args.multitask_default or args.multitask
    options = {**finetune_flags(args.multitask_default).values(args), "multitask": multitask}
    res = api.finetune(args.data, args.out, resume=args.resume, overwrite=args.overwrite, arch=args.arch, weights=args.weights,
                       seed=args.seed, loss_weights={"class": args.class_weight, "box": args.box_weight}, **options)
    if not res.is_main:
        return 0
    final = res.final
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"validation accuracy: {final['accuracy']:.1%} of {final['images']} images ({_best_text(res.best)}); "
          f"loss {final['loss']:.3f}"
          + (f"; box IoU {final['box_iou']:.3f}, L1 {final['box_l1']:.3f}" if "box_iou" in final else ""))
    counts = final["confusion"].sum(dim=1).tolist()  # a class with no val images (a folder skipped) has no accuracy
    print("per-class accuracy: " + ", ".join(f"{c} {a:.0%}" if n else f"{c} - (no val images)"
                                             for c, a, n in zip(res.class_names, final["per_class_accuracy"], counts)))
    m, sec = divmod(round(res.seconds), 60)
    print(f"{res.global_step} steps in {m} min {sec} s ({res.precision}, {res.device}"
          + (f", {res.world_size} processes, max weight difference between ranks {res.rank_weight_max_diff:.3g}" if res.world_size > 1 else "")
          + ")" + (" - stopped early (--stop-after-steps); --resume continues" if res.stopped_early else ""))
    print(f"skipped files: {len(res.skipped)}")
    for s in res.skipped:
        print(f"  {s.path}: {s.reason}")
    names = [n for n in ("best.pt", "last.pt", "metrics.csv", "confusion.png", "summary.json") if (res.out_dir / n).exists()]
    print(f"wrote {res.out_dir}/{', '.join(names)}")
    return 0


def _best_text(best: dict) -> str:
    if best.get("accuracy") is None:  # stopped before the first epoch ended: no validation yet
        return "no epoch finished, so no best.pt yet"
    return f"best {best['accuracy']:.1%} at epoch {best['epoch']}" + (" (EMA weights)" if best.get("weights") == "ema" else "")


def cmd_bench_data(args: argparse.Namespace) -> int:
    from .. import api

    return print_result(args, api.bench_data(args.data, **{n: getattr(args, n) for n in BENCH_DATA_FLAGS}), _bench_data_text)


def _bench_data_text(res) -> str:
    r = res.to_dict()
    verdict = "the loader keeps up" if r["data_wait_fraction"] < 0.10 else "input-bound: add --workers or shrink images"
    return "\n".join([
        f"loader alone:      {r['loader_images_per_s']:8.1f} images/s ({r['workers']} workers, batch {r['batch_size']}, {r['image_size']} px)",
        f"model step alone:  {r['step_images_per_s']:8.1f} images/s ({r['arch']}, forward+backward+update, {r['precision']})",
        f"training loop:     {r['loop_images_per_s']:8.1f} images/s, {r['data_wait_fraction']:.1%} of step time waiting for data",
        f"verdict: {verdict}",
    ])
