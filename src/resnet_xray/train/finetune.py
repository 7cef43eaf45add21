"""Fine-tune a ResNet on an image folder: new classifier, freezing, AMP, resumable checkpoints, DDP.

:func:`finetune` is the whole job behind ``resnet-xray finetune``; :func:`fit` is the
training loop alone, usable on any already-built model (for example a pruned one).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import XrayError
from ..interface import ReplacedClassifier, class_logits, reset_classifier
from ..model import ModelMeta, changes_of, check_arch, check_changes_rebuild, load_model, save_checkpoint
from . import distributed as D
from .checkpoint import load_training_state, remove_stale_temporaries, save_training_state, set_rng_state
from .data import DataBundle, make_loaders, steps_per_epoch
from .heads import Heads, MultiTaskResNet, attach_heads, box_loss, box_metrics, multitask_spec
from .metrics import TensorBoardLog, per_class_accuracy, save_confusion_png, write_history_csv, write_text_atomic

FREEZE_MODES = ("none", "backbone", "gradual")
OPTIMIZERS = ("sgd", "adamw")
STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")  # the order ``gradual`` unfreezes them


@dataclass
class FinetuneOptions:
    arch: str | None = "resnet50"  # None: the --weights checkpoint's arch, else resnet50
    weights: str = "imagenet"  # starting point: imagenet, random, or a checkpoint path
    epochs: int = 10
    batch_size: int = 32  # per process
    lr: float | None = None  # None: scaled from the optimizer's base rate by global batch / 256
    optimizer: str = "sgd"  # sgd (momentum, nesterov) or adamw
    weight_decay: float | None = None  # None: 1e-4 for sgd, 0.05 for adamw; never on norms and biases
    warmup_epochs: float = 1.0  # linear warm-up before the cosine decay; big steps on a fresh head wreck features
    freeze: str = "none"  # none, backbone (train the head only) or gradual (one more stage per epoch)
    label_smoothing: float = 0.1
    amp: bool = False  # fp16 + GradScaler on CUDA, bf16 autocast on CPU
    channels_last: bool = False  # NHWC memory layout: faster convolutions on CUDA tensor cores and oneDNN
    workers: int = 2  # DataLoader processes per training process
    seed: int = 0  # init, shuffling and augmentation
    image_size: int | None = None  # None: the dataset's native size, else 224
    min_crop_scale: float = 0.35  # RandomResizedCrop's smallest area; small objects must stay in frame
    multitask: bool = False  # classification + box heads on one backbone (needs boxes.csv)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"class": 1.0, "box": 1.0})
    checkpoint_every: int = 0  # also write last.pt every N optimizer steps (0: at epoch ends only)
    stop_after_steps: int | None = None  # end early (after checkpointing) at this global step: time-boxed runs
    max_nonfinite: int = 3  # consecutive non-finite losses tolerated (steps skipped) before giving up
    device: str = "auto"  # auto, cpu, cuda
    progress: bool = True  # progress bars and per-epoch lines on stderr (rank 0 only)

    def validate(self) -> None:
        if self.arch is not None:
            check_arch(self.arch)
        if self.freeze not in FREEZE_MODES:
            raise XrayError(f"--freeze {self.freeze!r}: choose one of {', '.join(FREEZE_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise XrayError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1:
            raise XrayError(f"--epochs {self.epochs}: must be at least 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise XrayError(f"--lr {self.lr}: must be a positive number")
        if not 0 <= self.label_smoothing < 1:
            raise XrayError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        if not 0 < self.min_crop_scale <= 1:
            raise XrayError(f"--min-crop-scale {self.min_crop_scale}: must be in (0, 1]")
        if self.checkpoint_every < 0:
            raise XrayError(f"--checkpoint-every {self.checkpoint_every}: must be 0 or more")
        if self.device not in ("auto", "cpu", "cuda"):
            raise XrayError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise XrayError("--device cuda: no CUDA device is available here")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- model surgery ---


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, MultiTaskResNet) else model


def _stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    b = _backbone(model)
    return {
        "stem": [b.conv1, b.bn1],
        "layer1": [b.layer1],
        "layer2": [b.layer2],
        "layer3": [b.layer3],
        "layer4": [b.layer4],
    }


def frozen_stages(mode: str, epoch: int) -> list[str]:
    """Backbone stages that do not train in ``epoch``: all, none, or fewer each epoch."""
    if mode == "none":
        return []
    if mode == "backbone":
        return list(STAGES)
    return list(STAGES[epoch:])  # gradual: epoch 0 trains the head, epoch 1 adds layer4, ...


def apply_freeze(model: nn.Module, frozen: list[str]) -> None:
    """``requires_grad`` off for frozen stages, and their BatchNorms in eval so statistics stay put."""
    for name, mods in _stage_modules(model).items():
        for m in mods:
            m.requires_grad_(name not in frozen)
            if name in frozen:
                m.eval()


# --- precision, optimizer, schedule ---


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None  # None: full fp32
    use_scaler: bool  # fp16 gradients underflow without loss scaling; bf16 ones do not

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast + GradScaler", torch.bfloat16: "bf16 autocast"}[self.autocast_dtype]


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(amp: bool, device: torch.device) -> Precision:
    """fp16 + GradScaler on CUDA; bf16 autocast on CPUs with native bf16; otherwise refuse ``--amp``."""
    if not amp:
        return Precision(None, False)
    if device.type == "cuda":
        return Precision(torch.float16, True)
    if device.type == "cpu":
        if not cpu_supports_bf16():
            raise XrayError("--amp: this CPU has no native bfloat16 (needs AVX512-BF16 or AMX) and there is no CUDA device; run without --amp")
        return Precision(torch.bfloat16, False)
    raise XrayError(f"--amp: no mixed precision for device {device.type}; run without --amp")


def resolve_device(name: str, ctx: D.DistContext) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())


def default_lr(options: FinetuneOptions, global_batch: int, pretrained: bool) -> float:
    # Linear scaling rule (Goyal et al.): base rates are for a batch of 256.
    base = {"sgd": 0.1, "adamw": 2e-3}[options.optimizer]
    if pretrained and options.freeze != "backbone":
        base /= 5  # gentler on features worth keeping
    return base * global_batch / 256


def make_optimizer(model: nn.Module, options: FinetuneOptions, lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    wd = options.weight_decay if options.weight_decay is not None else {"sgd": 1e-4, "adamw": 0.05}[options.optimizer]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


class WarmupCosine:
    """Multiplier for LambdaLR: linear warm-up from 1% then cosine decay to 0, per step."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup, self.total = max(0, warmup_steps), max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# --- evaluation ---


def _unpack(batch, device: torch.device, channels_last: bool):
    x = batch[0].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch[1].to(device, non_blocking=True)
    box = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
    return x, y, box


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
    channels_last: bool = False,
    ctx: D.DistContext | None = None,
) -> dict[str, Any]:
    """Loss (plain cross-entropy), accuracy, per-class accuracy and confusion matrix on ``loader``.

    Multi-task models also get ``box_iou`` (mean IoU) and ``box_l1`` (mean absolute
    coordinate error, in image fractions). Under DDP every number is summed over ranks.

    Returns:
        ``{"accuracy", "loss", "images", "per_class_accuracy", "confusion", ...}``.
    """
    device = torch.device(device)
    ctx = ctx or D.DistContext()
    precision = precision or Precision(None, False)
    was_training = model.training
    model.eval()
    confusion = None
    loss_sum = iou_sum = l1_sum = 0.0
    n = n_box = 0
    for batch in loader:
        x, y, box = _unpack(batch, device, channels_last)
        with precision.autocast(device):
            out = model(x)
        logits = class_logits(out).float()
        if confusion is None:
            confusion = torch.zeros(logits.shape[1], logits.shape[1], dtype=torch.int64, device=device)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(dim=1)
        confusion += torch.bincount(y * logits.shape[1] + pred, minlength=logits.shape[1] ** 2).view_as(confusion)
        n += len(y)
        if box is not None and isinstance(out, dict) and "box" in out:
            m = box_metrics(out["box"], box)
            iou_sum += float(m["iou_sum"])
            l1_sum += float(m["l1_sum"])
            n_box += len(y)
    if was_training:
        model.train()
    if confusion is None:
        raise XrayError("no readable validation images: every file in the val split was skipped")
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
    loss_sum, iou_sum, l1_sum, n, n_box = D.all_reduce_sum([loss_sum, iou_sum, l1_sum, n, n_box], ctx, device)
    cm = confusion.cpu()
    result: dict[str, Any] = {
        "accuracy": float(cm.diagonal().sum()) / max(1, n),
        "loss": loss_sum / max(1, n),
        "images": int(n),
        "per_class_accuracy": per_class_accuracy(cm),
        "confusion": cm,
    }
    if n_box:
        result["box_iou"] = iou_sum / n_box
        result["box_l1"] = l1_sum / n_box
    return result


# --- the loop ---


@dataclass
class _StepStats:
    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    box_loss: float = 0.0
    wait_s: float = 0.0
    nonfinite: int = 0


def _loss(out, y: torch.Tensor, box: torch.Tensor | None, options: FinetuneOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = class_logits(out).float()
    ce = nn.functional.cross_entropy(logits, y, label_smoothing=options.label_smoothing)
    parts = {"class": ce}
    total = ce * options.loss_weights.get("class", 1.0) if isinstance(out, dict) else ce
    if isinstance(out, dict) and box is not None and "box" in out:
        bl = box_loss(out["box"], box)
        parts["box"] = bl
        total = total + options.loss_weights.get("box", 1.0) * bl
    return total, parts


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(msg, file=sys.stderr)


def fit(
    model: nn.Module,
    data: DataBundle,
    options: FinetuneOptions,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_extra: dict[str, Any] | None = None,
    pretrained: bool = True,
    meta: ModelMeta | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data`` and return its history and final metrics.

    Args:
        model: any ResNet-shaped model whose outputs match ``data``'s classes (plain logits,
            or a dict with ``class`` and ``box`` from :func:`~resnet_xray.train.heads.attach_heads`).
        data: from :func:`~resnet_xray.train.data.make_loaders` (``distributed=True`` under torchrun).
        options: the schedule, precision, freezing and checkpoint settings.
        out_dir: where ``last.pt`` (resumable), ``best.pt`` (best validation accuracy),
            ``metrics.csv`` and ``confusion.png`` go; None writes nothing.
        resume: continue from ``out_dir/last.pt`` when it exists.
        checkpoint_extra: more plain-data keys for every checkpoint.
        pretrained: whether the starting weights are worth protecting (picks the default lr).
        meta: the model's metadata; its ``changes`` (pruned widths, heads, a new classifier)
            go into every checkpoint. None reads them off the model's structure.

    Returns:
        ``{"history": [...], "final": evaluate(...) on the final weights, "best": {...},
        "skipped": [...], "stopped_early": bool, "global_step": int, ...}``.
    """
    options.validate()
    if options.arch is None:
        raise XrayError("FinetuneOptions.arch must name the model's architecture for its checkpoints")
    if data.train is None:
        raise XrayError("fit needs a training loader (DataBundle.train is None)")
    ctx = D.DistContext(*_dist_env()) if data.info.get("world_size", 1) > 1 else D.DistContext()
    device = resolve_device(options.device, ctx)
    precision = resolve_precision(options.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
    main = ctx.is_main
    talk = options.progress and main
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XrayError(f"--out {out}: cannot create ({e.strerror})") from None
        remove_stale_temporaries(out)

    heads = model.heads_spec if isinstance(model, MultiTaskResNet) else None
    # The checkpoints carry the model's whole change list (pruned widths included), checked
    # here so a run never trains for an hour and then writes files that cannot be loaded.
    changes = list(meta.changes) if meta is not None and meta.changes else (changes_of(_bare(model), options.arch) if out is not None else [])
    meta = ModelMeta(options.arch, f"fine-tuned from {options.weights}", list(data.class_names), data.preprocessing, True, changes=changes)
    if out is not None:
        check_changes_rebuild(_bare(model), meta)
    extra = {"options": options.to_dict(), **(checkpoint_extra or {})}

    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = steps_per_epoch(data.train)
    if steps == 0:
        raise XrayError("the training split is empty after sharding; add images or use fewer processes")
    global_batch = options.batch_size * ctx.world_size
    lr = options.lr or default_lr(options, global_batch, pretrained)
    optimizer = make_optimizer(model, options, lr)
    schedule = WarmupCosine(round(options.warmup_epochs * steps), options.epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": -1}
    start_epoch = start_step = global_step = 0
    last_path = out / "last.pt" if out is not None else None
    if resume and last_path is not None and last_path.exists():
        ck = load_training_state(last_path, arch=options.arch, class_names=data.class_names, heads=heads)
        model.load_state_dict(ck["state_dict"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        start_epoch, start_step, global_step = int(ck["epoch"]), int(ck["step_in_epoch"]), int(ck["global_step"])
        history, best = list(ck["history"]), dict(ck["best"])
        # Said even without progress output: a resumed run should never look like a fresh one.
        _say(f"resuming from {last_path}: epoch {start_epoch + 1}, step {start_step}/{steps}", main)
    elif resume:
        _say(f"--resume: no checkpoint in {out} yet; starting from the beginning", main)

    def save_last(epoch: int, step_in_epoch: int) -> None:
        if last_path is not None and main:
            save_training_state(last_path, _bare(model), meta, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                                history=history, best=best, **extra)
        D.barrier(ctx)

    tb = TensorBoardLog(out / "tensorboard" if (out is not None and main) else None)
    ddp_model: nn.Module = model
    wrapped_for: tuple[str, ...] | None = None
    stopped_early = False
    t_start = time.perf_counter()
    t_first: float | None = None  # end of the first step: startup (workers, first batch) excluded from rates
    first_step = global_step
    _say(f"training {options.arch} on {data.info.get('train_images')} images ({len(data.class_names)} classes) "
         f"x {options.epochs} epochs: {steps} steps/epoch of {global_batch}, {options.optimizer} lr {lr:.3g}, "
         f"{precision.name}, {device}{f', {ctx.world_size} processes' if ctx.enabled else ''}", main and out is not None)

    for epoch in range(start_epoch, options.epochs):
        if stopped_early:
            break
        frozen = frozen_stages(options.freeze, epoch)
        model.train()
        apply_freeze(model, frozen)
        if ctx.enabled and wrapped_for != tuple(frozen):
            # DDP fixes its set of synchronised parameters at construction, so rewrap when it changes.
            ddp_model = nn.parallel.DistributedDataParallel(_bare(model), device_ids=[device.index] if device.type == "cuda" else None)
            wrapped_for = tuple(frozen)
        skip = start_step if epoch == start_epoch else 0
        data.train.sampler.set_epoch(epoch, skip=skip * options.batch_size)
        stats = _StepStats()
        nonfinite_run = 0
        bar = tqdm(total=steps, initial=skip, desc=f"epoch {epoch + 1}/{options.epochs}", unit="step", disable=not talk, leave=False, file=sys.stderr)
        t_epoch = time.perf_counter()
        t_wait = time.perf_counter()
        step_in_epoch = skip
        for batch in data.train:
            x, y, box = _unpack(batch, device, options.channels_last)
            stats.wait_s += time.perf_counter() - t_wait
            with precision.autocast(device):
                out_ = ddp_model(x)
            loss, parts = _loss(out_, y, box, options)
            if not D.all_true(bool(torch.isfinite(loss)), ctx, device):
                # Skip the update on every rank together: one NaN step must not poison the weights.
                optimizer.zero_grad(set_to_none=True)
                nonfinite_run += 1
                stats.nonfinite += 1
                _say(f"non-finite loss at epoch {epoch + 1} step {step_in_epoch + 1}: step skipped", main)
                if nonfinite_run >= options.max_nonfinite:
                    tb.close()
                    raise XrayError(
                        f"training stopped: {nonfinite_run} non-finite losses in a row (epoch {epoch + 1}, step {step_in_epoch + 1}); "
                        f"no NaN weights were saved; lower --lr or run without --amp"
                    )
            else:
                nonfinite_run = 0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                stats.loss += float(loss.detach()) * len(y)
                stats.correct += int((class_logits(out_).argmax(1) == y).sum())
                stats.seen += len(y)
                if "box" in parts:
                    stats.box_loss += float(parts["box"].detach()) * len(y)
            with warnings.catch_warnings():
                # After a skipped step the scheduler still advances, so the schedule stays aligned.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            global_step += 1
            step_in_epoch += 1
            if t_first is None:
                t_first = time.perf_counter()
            if talk:
                el = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{stats.loss / max(1, stats.seen):.3f}", acc=f"{stats.correct / max(1, stats.seen):.1%}",
                                ips=f"{stats.seen * ctx.world_size / max(el, 1e-9):.1f}", refresh=False)
                bar.update(1)
            at_stop = options.stop_after_steps is not None and global_step >= options.stop_after_steps
            if at_stop or (options.checkpoint_every and global_step % options.checkpoint_every == 0 and step_in_epoch < steps):
                save_last(epoch, step_in_epoch)
            if at_stop:
                stopped_early = True
                break
            t_wait = time.perf_counter()
        bar.close()
        if stopped_early and step_in_epoch < steps:
            break
        seconds = time.perf_counter() - t_epoch
        D.average_buffers(_bare(model), ctx)
        val = evaluate(_bare(model), data.val, device=device, channels_last=options.channels_last, ctx=ctx)
        tr_loss, tr_correct, tr_seen, tr_box, wait = D.all_reduce_sum(
            [stats.loss, stats.correct, stats.seen, stats.box_loss, stats.wait_s], ctx, device)
        row = {
            "epoch": epoch + 1,
            "train_loss": tr_loss / max(1, tr_seen),
            "train_accuracy": tr_correct / max(1, tr_seen),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            **({"val_box_iou": val["box_iou"], "val_box_l1": val["box_l1"], "train_box_loss": tr_box / max(1, tr_seen)} if "box_iou" in val else {}),
            "lr": scheduler.get_last_lr()[0],
            "images_per_s": tr_seen / max(seconds, 1e-9),
            "data_wait_fraction": (wait / ctx.world_size) / max(seconds, 1e-9),
            "seconds": seconds,
            "nonfinite_steps": stats.nonfinite,
            "skipped_files": len(data.skipped),
            "frozen": "+".join(frozen) or "-",
        }
        history.append(row)
        improved = val["accuracy"] > best["accuracy"]
        if improved:
            best = {"accuracy": val["accuracy"], "epoch": epoch + 1, "loss": val["loss"]}
        _say(f"epoch {epoch + 1}/{options.epochs}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.1%} | "
             f"val loss {val['loss']:.3f} acc {val['accuracy']:.1%}"
             + (f" box IoU {val['box_iou']:.3f}" if "box_iou" in val else "")
             + f" | {row['images_per_s']:.1f} img/s, data wait {row['data_wait_fraction']:.0%}, {seconds:.0f}s",
             main and (options.progress or out is not None))  # a run that writes files also logs its epochs
        if out is not None and main:
            write_history_csv(out / "metrics.csv", history)
            tb.epoch(row)
            if improved:
                save_checkpoint(out / "best.pt", _bare(model), meta, metrics={"val_accuracy": val["accuracy"], "epoch": epoch + 1}, **extra)
        save_last(epoch + 1, 0)

    tb.close()
    t_loop_end = time.perf_counter()
    final = evaluate(_bare(model), data.val, device=device, channels_last=options.channels_last, ctx=ctx)
    weight_diff = D.max_weight_difference(_bare(model), ctx, device)
    if out is not None and main:
        save_confusion_png(final["confusion"], data.class_names, out / "confusion.png",
                           f"validation: {final['accuracy']:.1%} of {final['images']} images")
    model.eval()
    return {
        "history": history,
        "final": final,
        "best": best,
        "skipped": list(data.skipped),
        "stopped_early": stopped_early,
        "global_step": global_step,
        "seconds": time.perf_counter() - t_start,
        # Steady-state rate of this call: steps after the first, per second (includes epoch-end evaluation).
        "steps_after_first": global_step - first_step - 1,
        "seconds_after_first": (t_loop_end - t_first) if t_first is not None else 0.0,
        "precision": precision.name,
        "device": str(device),
        "world_size": ctx.world_size,
        "rank_weight_max_diff": weight_diff,
        "lr": lr,
    }


def _bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _dist_env() -> tuple[int, int, int, str | None]:
    import torch.distributed as dist

    return dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend()


# --- the whole job ---


def build_for_finetune(options: FinetuneOptions, class_names: list[str]) -> tuple[nn.Module, ModelMeta]:
    """Starting weights, the classifier swapped for ``len(class_names)`` outputs, heads if multi-task.

    The returned metadata lists every change, the loaded model's own (pruned widths) first.
    """
    model, meta = load_model(options.arch, options.weights, seed=options.seed, progress=options.progress)
    options.arch = meta.arch
    n = len(class_names)
    if isinstance(model, MultiTaskResNet) and not options.multitask:
        raise XrayError(f"--weights {options.weights}: is a multi-task checkpoint; add --multitask")
    if list(meta.class_names) != list(class_names):
        model = reset_classifier(model, n)
        meta = meta.with_change(ReplacedClassifier(n))
    if options.multitask and not isinstance(model, MultiTaskResNet):
        model = attach_heads(model, multitask_spec(n))
        meta = meta.with_change(Heads.of(model))
    return model, meta


def finetune(data_dir: str | Path, options: FinetuneOptions, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Fine-tune on an image folder and write checkpoints, metrics and a confusion matrix to ``out_dir``.

    Under ``torchrun`` each process runs this; DDP, sharding and rank-0 writing are automatic.

    Returns:
        :func:`fit`'s result plus ``out_dir`` and ``data`` (counts).
    """
    options.validate()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    want_cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    ctx = D.init_from_env("cuda" if want_cuda else "cpu")
    try:
        data = make_loaders(data_dir, image_size=options.image_size, batch_size=options.batch_size, workers=options.workers,
                            seed=options.seed, distributed=ctx.enabled, multitask=options.multitask,
                            min_crop_scale=options.min_crop_scale)
        model, meta = build_for_finetune(options, data.class_names)
        result = fit(model, data, options, out_dir=out_dir, resume=resume, pretrained=meta.pretrained, meta=meta)
        result["out_dir"] = str(out_dir)
        result["data"] = data.info
        result["class_names"] = data.class_names
        result["is_main"] = ctx.is_main
        if ctx.is_main:
            summary = {k: v for k, v in result.items() if k not in ("final", "skipped")}
            summary["final"] = {k: v for k, v in result["final"].items() if k != "confusion"}
            summary["final"]["confusion"] = result["final"]["confusion"].tolist()
            summary["skipped"] = [{"path": s.path, "reason": s.reason} for s in result["skipped"]]
            write_text_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str))
        return result
    finally:
        D.shutdown(ctx)
