"""CLI for training: ``make-dataset``, ``finetune`` (also under torchrun), ``finetune-multitask``, ``bench-data``."""

from __future__ import annotations

import argparse
import sys

from ..cliutil import add_model_args, print_json
from ..options import add_flags


def make_dataset_args(p: argparse.ArgumentParser) -> None:
    from ..datasets.reference import SHAPES

    p.add_argument("out", help="output folder (gets train/, val/, boxes.csv, dataset.json)")
    p.add_argument("--task", choices=("reference", "transfer"), default="reference",
                   help="reference: the 10 shapes; transfer: 5 other shapes (hexagon, diamond, ellipse, trapezoid, "
                        "semicircle) for transfer-learning experiments")
    p.add_argument("--classes", type=int, default=None, help=f"number of shape classes, 2..{len(SHAPES)} (default: all of the task's)")
    p.add_argument("--per-class", type=int, default=200, help="training images per class (default: 200)")
    p.add_argument("--val-per-class", type=int, default=None, help="validation images per class (default: a quarter of --per-class, at least 10)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.set_defaults(func=cmd_make_dataset)


def finetune_args(p: argparse.ArgumentParser) -> None:
    _finetune_args(p, multitask=False)


def finetune_multitask_args(p: argparse.ArgumentParser) -> None:
    _finetune_args(p, multitask=True)


def _finetune_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    from .finetune import FREEZE_MODES, OPTIMIZERS, RECIPES

    # one flag list for both commands; finetune-multitask only fixes --multitask on
    p.add_argument("data", help="dataset folder: train/ and val/ class folders, or class folders only")
    p.add_argument("--out", required=True, help="output folder: best.pt, last.pt, metrics.csv, confusion.png, summary.json")
    add_model_args(p, default_weights="imagenet")  # --arch, --weights, --seed (init, shuffling, augmentation)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per process (default: 32)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the recipe's, scaled by the batch a step really sees)")
    p.add_argument("--recipe", choices=RECIPES, default="auto",
                   help="defaults for the pieces below: fast (from scratch: adamw, channels-last, min-crop-scale 0.8) "
                        "or classic (sgd, crop 0.35); auto: fast for --weights random")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default: the recipe's (fast: adamw, classic: sgd)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--freeze", choices=FREEZE_MODES, default="none", help="backbone: head only; gradual: one more stage per epoch")
    p.add_argument("--layer-lr-decay", type=float, default=1.0, metavar="D",
                   help="discriminative learning rates: layer4 trains at lr*D, layer3 at lr*D^2, ... (default: 1)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: fp16+GradScaler on CUDA, bf16 on CPUs with native bf16 (else fp32, with a warning)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: the recipe's; fast: on)")
    p.add_argument("--progressive", default=None, metavar="SIZES",
                   help="progressive resizing: train sides per phase, e.g. 64,80,96 (last = input size), auto, or off "
                        "(default: off; auto = 2/3, 5/6, 1 of the input size)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="average the weights with this decay, validate the average late in the run, keep the better "
                        "as best.pt; 0: off (default: off; 0.99 suits ~60 steps/epoch)")
    p.add_argument("--tta-flip", action="store_true", help="validate on the mean logits of each image and its mirror")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (eager fallback if it fails)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes (default: 2)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the dataset's, else 224)")
    p.add_argument("--min-crop-scale", type=float, default=None,
                   help="RandomResizedCrop's smallest area share (default: the recipe's; fast 0.8, classic 0.35)")
    if not multitask:
        p.add_argument("--multitask", action="store_true", help="classification + box heads on one backbone")
    p.add_argument("--class-weight", type=float, default=1.0, help="multi-task: weight of the classification loss")
    p.add_argument("--box-weight", type=float, default=1.0, help="multi-task: weight of the box loss")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also write last.pt every N steps (default: epoch ends)")
    p.add_argument("--stop-after-steps", type=int, default=None, help="stop (after checkpointing) at this global step")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT (default: refuse)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_finetune, multitask_default=multitask)


BENCH_DATA_FLAGS = ("arch", "batch_size", "workers", "image_size", "steps", "amp", "channels_last", "seed")


def bench_data_args(p: argparse.ArgumentParser) -> None:
    from .bench import DataBenchOptions

    p.add_argument("data", help="dataset folder")
    add_flags(p, DataBenchOptions, BENCH_DATA_FLAGS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_data)


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from ..datasets.reference import TASKS, ReferenceOptions, make_reference_dataset

    classes = args.classes if args.classes is not None else len(TASKS[args.task])
    opts = ReferenceOptions(classes=classes, per_class=args.per_class,
                            val_per_class=args.val_per_class, size=args.size, seed=args.seed, overwrite=args.overwrite,
                            task=args.task)
    info = make_reference_dataset(args.out, opts, quiet=args.quiet)
    n_train, n_val = info["train_per_class"] * len(info["classes"]), info["val_per_class"] * len(info["classes"])
    print(f"wrote {args.out}: {n_train} train + {n_val} val images, {len(info['classes'])} classes "
          f"({', '.join(info['classes'])}), {info['size']}x{info['size']} px, boxes in boxes.csv")
    return 0


def _one_line_warnings() -> None:
    """Library warnings (an empty class folder left out) as one ``resnet-xray: warning:`` line each."""
    import warnings

    warnings.showwarning = lambda message, *a, **k: print(f"resnet-xray: warning: {message}", file=sys.stderr)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .. import api

    _one_line_warnings()

    res = api.finetune(
        args.data, args.out, resume=args.resume, overwrite=args.overwrite,
        arch=args.arch, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        recipe=args.recipe, optimizer=args.optimizer, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        progressive=args.progressive, ema=args.ema, tta_flip=args.tta_flip, compile=args.compile,
        freeze=args.freeze, layer_lr_decay=args.layer_lr_decay, label_smoothing=args.label_smoothing, amp=args.amp, channels_last=args.channels_last,
        workers=args.workers, seed=args.seed, image_size=args.image_size, min_crop_scale=args.min_crop_scale,
        multitask=args.multitask_default or getattr(args, "multitask", False),
        loss_weights={"class": args.class_weight, "box": args.box_weight},
        checkpoint_every=args.checkpoint_every, stop_after_steps=args.stop_after_steps, device=args.device,
        progress=not args.no_progress,
    )
    r = res.raw
    if not r["is_main"]:
        return 0
    final = r["final"]
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"validation accuracy: {final['accuracy']:.1%} of {final['images']} images ({_best_text(r['best'])}); "
          f"loss {final['loss']:.3f}"
          + (f"; box IoU {final['box_iou']:.3f}, L1 {final['box_l1']:.3f}" if "box_iou" in final else ""))
    print("per-class accuracy: " + ", ".join(f"{c} {a:.0%}" for c, a in zip(r["class_names"], final["per_class_accuracy"])))
    m, sec = divmod(round(r["seconds"]), 60)
    print(f"{r['global_step']} steps in {m} min {sec} s ({r['precision']}, {r['device']}"
          + (f", {r['world_size']} processes, max weight difference between ranks {r['rank_weight_max_diff']:.3g}" if r["world_size"] > 1 else "")
          + ")" + (" - stopped early (--stop-after-steps); --resume continues" if r["stopped_early"] else ""))
    print(f"skipped files: {len(r['skipped'])}")
    for s in r["skipped"]:
        print(f"  {s.path}: {s.reason}")
    from pathlib import Path

    names = [n for n in ("best.pt", "last.pt", "metrics.csv", "confusion.png", "summary.json") if (Path(r["out_dir"]) / n).exists()]
    print(f"wrote {r['out_dir']}/{', '.join(names)}")
    return 0


def _best_text(best: dict) -> str:
    if best.get("accuracy") is None:  # stopped before the first epoch ended: no validation yet
        return "no epoch finished, so no best.pt yet"
    return f"best {best['accuracy']:.1%} at epoch {best['epoch']}" + (" (EMA weights)" if best.get("weights") == "ema" else "")


def cmd_bench_data(args: argparse.Namespace) -> int:
    from .. import api

    res = api.bench_data(args.data, **{n: getattr(args, n) for n in BENCH_DATA_FLAGS})
    if args.json:
        print_json(res.to_dict())
        return 0
    r = res.rates
    print(f"loader alone:      {r['loader_images_per_s']:8.1f} images/s ({r['workers']} workers, batch {r['batch_size']}, {r['image_size']} px)")
    print(f"model step alone:  {r['step_images_per_s']:8.1f} images/s ({r['arch']}, forward+backward+update, {r['precision']})")
    print(f"training loop:     {r['loop_images_per_s']:8.1f} images/s, {r['data_wait_fraction']:.1%} of step time waiting for data")
    verdict = "the loader keeps up" if r["data_wait_fraction"] < 0.10 else "input-bound: add --workers or shrink images"
    print(f"verdict: {verdict}")
    return 0
