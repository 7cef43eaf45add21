"""Fine-tune a ResNet on an image folder: new classifier, freezing, AMP, resumable checkpoints, DDP.

:func:`finetune` is the whole job behind ``resnet-xray finetune``; :func:`fit` is the
training loop alone, usable on any already-built model (for example a pruned one).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import XrayError
from ..interface import ReplacedClassifier, class_logits, reset_classifier
from ..locks import output_lock
from ..model import ModelMeta, changes_of, check_arch, check_changes_rebuild, load_model, save_checkpoint
from ..options import OptionError, at_least, batch_fits, image_side, learning_rate, one_of, seed_in_range, thread_count, within
from ..provenance import Provenance, TrainingStage
from . import distributed as D
from .checkpoint import load_training_state, remove_stale_temporaries, save_training_state, set_rng_state
from .data import DataBundle, make_loaders, steps_per_epoch
from .heads import Heads, MultiTaskResNet, attach_heads, box_loss, box_metrics, multitask_spec
from .metrics import TensorBoardLog, per_class_accuracy, save_confusion_png, write_history_csv, write_text_atomic

class TrainingFailed(XrayError):
    """The run could not train (no optimiser step was possible): a failure of the run, exit status 1."""

    exit_code = 1


FREEZE_MODES = ("none", "backbone", "gradual")
OPTIMIZERS = ("sgd", "adamw", "muon")  # muon: Muon on the hidden convs, AdamW on the rest (train/muon.py)
STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")  # the order ``gradual`` unfreezes them


RECIPES = ("auto", "fast", "classic")  # auto: fast for --weights random, classic otherwise
STEM_INITS = ("default", "whiten")
# Pieces of the fast from-scratch recipe; docs/train.md says what each one buys.
# Muon on layer1-3 with a whitened stem took a 5-epoch ResNet-50 run from 64% (AdamW 2e-3) to 94%.
# Progressive resizing and EMA are built and tested but off: in the measured ablation the first
# cost 8.8 points for 20% less time, the second changed nothing and costs validation passes.
# Zero-init residuals are off: +4.8 val points after two ResNet-50 epochs, but full runs with it
# ended lower (docs/train.md), as on generator version 1.
FAST_RECIPE: dict[str, Any] = {"optimizer": "muon", "stem_init": "whiten", "warmup_epochs": 0.5, "min_crop_scale": 0.8,
                               "channels_last": True, "ema": 0.0, "progressive": "off", "zero_init_residual": False}
CLASSIC_RECIPE: dict[str, Any] = {"optimizer": "sgd", "stem_init": "default", "warmup_epochs": 1.0, "min_crop_scale": 0.35,
                                  "channels_last": False, "ema": 0.0, "progressive": "off", "zero_init_residual": False}
# Options that shape the schedule or the data a step sees: a --resume must keep them.
RESUME_KEYS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "warmup_epochs", "freeze", "layer_lr_decay", "label_smoothing",
               "image_size", "min_crop_scale", "progressive", "ema", "seed", "multitask", "zero_init_residual", "muon_lr", "muon_stages",
               "ns_steps", "stem_init")


@dataclass
class FinetuneOptions:
    arch: str | None = "resnet50"  # None: the --weights checkpoint's arch, else resnet50
    weights: str = "imagenet"  # starting point: imagenet, random, or a checkpoint path
    epochs: int = 10
    batch_size: int = 32  # per process
    lr: float | None = None  # None: the recipe's peak rate, scaled by the effective global batch
    recipe: str = "auto"  # fills every piece left at None: fast (from scratch) or classic (fine-tuning)
    optimizer: str | None = None  # sgd (momentum, nesterov), adamw, or muon (Muon on hidden convs + AdamW); None: the recipe's
    muon_lr: float = 0.02  # --optimizer muon: peak rate of the Muon group (--lr is the AdamW groups')
    muon_stages: str = "layer1,layer2,layer3"  # --optimizer muon: stages whose convs Muon trains ("all": layer1-4)
    ns_steps: int = 3  # --optimizer muon: Newton-Schulz iterations per step (3 scored as 5 did at 5 epochs, for 60% of the work)
    weight_decay: float | None = None  # None: 1e-4 for sgd, 0.05 for adamw and muon; never on norms and biases
    warmup_epochs: float | None = None  # linear warm-up before the cosine decay; None: the recipe's (0.5 fast, 1 classic)
    freeze: str = "none"  # none, backbone (train the head only) or gradual (one more stage per epoch)
    layer_lr_decay: float = 1.0  # discriminative rates: each stage below the head trains this many times slower
    label_smoothing: float = 0.1
    amp: bool = False  # fp16 + GradScaler on CUDA, bf16 autocast on CPUs with native bf16 (else fp32, with a warning)
    channels_last: bool | None = None  # NHWC memory layout (oneDNN, tensor cores); None: the recipe's
    progressive: str | None = None  # train sizes per phase, e.g. "64,80,96" (last = input size); "off"; "auto": 2/3, 5/6, 1
    ema: float | None = None  # decay of an exponential moving average of the weights (0: off); None: the recipe's
    # Random weights only: each block's last BatchNorm scale starts at 0, so every block starts as the
    # identity and the network as a shallow one (Goyal et al. 2017; timm's zero_init_last). None: the recipe's
    zero_init_residual: bool | None = None
    # Random weights only: "whiten" starts conv1 as the whitening filters of the training images' patches
    # (airbench's first layer; train/stem.py), "default" keeps torchvision's init. None: the recipe's
    stem_init: str | None = None
    tta_flip: bool = False  # validate on the mean of the image's and its mirror's logits (2x evaluation cost)
    compile: bool = False  # torch.compile the model for training steps (eager fallback if it fails)
    workers: int | None = None  # DataLoader processes per training process; None: 2, or 0 on a machine with 2 CPUs or fewer
    seed: int = 0  # init, shuffling and augmentation
    image_size: int | None = None  # None: the dataset's native size, else 224
    min_crop_scale: float | None = None  # RandomResizedCrop's smallest area; None: the recipe's (0.8 fast, 0.35 classic)
    multitask: bool = False  # classification + box heads on one backbone (needs boxes.csv)
    # Multi-task loss = sum of weight * loss per head: each finite and 0 or more (0 leaves a head untrained),
    # not all 0. NaN skipped every step; a negative weight trained that head to be worse.
    loss_weights: dict[str, float] = field(default_factory=lambda: {"class": 1.0, "box": 1.0})
    skip_unreadable: bool = False  # leave out dataset folders that cannot be read (listed as skipped) instead of refusing
    checkpoint_every: int = 0  # also write last.pt every N optimizer steps (0: at epoch ends only)
    stop_after_steps: int | None = None  # end early (after checkpointing) at this global step: time-boxed runs
    max_nonfinite: int = 3  # consecutive non-finite losses tolerated (steps skipped) before giving up
    device: str = "auto"  # auto, cpu, cuda
    progress: bool = True  # progress bars and per-epoch lines on stderr (rank 0 only)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch is not None:
            check_arch(self.arch)
        one_of("recipe", self.recipe, RECIPES)
        one_of("freeze", self.freeze, FREEZE_MODES)
        if self.optimizer is not None:
            one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.stem_init is not None:
            one_of("stem_init", self.stem_init, STEM_INITS)
        at_least("epochs", self.epochs, 1)
        learning_rate("muon_lr", self.muon_lr)
        parse_stages(self.muon_stages)
        within("ns_steps", self.ns_steps, 1, 99, allow_none=False)
        seed_in_range("seed", self.seed)
        at_least("batch_size", self.batch_size, 1)
        learning_rate("lr", self.lr, allow_none=True)
        if self.weight_decay is not None and not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise OptionError("weight_decay", self.weight_decay, "must be 0 or more")
        within("label_smoothing", self.label_smoothing, 0, 1, open_high=True)
        within("min_crop_scale", self.min_crop_scale, 0, 1, open_low=True, allow_none=True)
        if not 0 < self.layer_lr_decay <= 1:
            raise OptionError("layer_lr_decay", self.layer_lr_decay, "must be in (0, 1] (1: one rate for all)")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise OptionError("ema", self.ema, "must be in [0, 1) (0 turns it off)")
        if self.progressive not in (None, "auto", "off"):
            parse_sizes(self.progressive)
        if self.warmup_epochs is not None and not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise OptionError("warmup_epochs", self.warmup_epochs, "must be 0 or more")
        if self.batch_size == 1 and self.freeze != "backbone":
            # Found by tests/test_hypothesis_flags.py: a training BatchNorm fails on a batch of one.
            raise OptionError("batch_size", 1, "BatchNorm cannot train on one image per step; use 2 or more (or --freeze backbone)")
        thread_count("workers", self.workers, low=0)
        image_side("image_size", self.image_size, allow_none=True)
        batch_fits("batch_size", self.batch_size, self.image_size, training=True)
        at_least("checkpoint_every", self.checkpoint_every, 0)
        at_least("stop_after_steps", self.stop_after_steps, 1, allow_none=True)
        at_least("max_nonfinite", self.max_nonfinite, 1)
        for head, w in self.loss_weights.items():
            if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
                raise OptionError(f"{head}_weight", w, "must be a finite number, 0 or more")
        if self.loss_weights and not any(self.loss_weights.values()):
            head = next(iter(self.loss_weights))
            raise OptionError(f"{head}_weight", 0, "at least one loss weight must be above 0, or nothing trains")
        one_of("device", self.device, ("auto", "cpu", "cuda"))
        if self.device == "cuda" and not torch.cuda.is_available():
            raise XrayError("--device cuda: no CUDA device is available here")

    def resolved(self) -> FinetuneOptions:
        """A copy with every recipe piece left at None filled in (what checkpoints record)."""
        self.validate()
        name = self.recipe if self.recipe != "auto" else ("fast" if self.weights == "random" else "classic")
        pieces = FAST_RECIPE if name == "fast" else CLASSIC_RECIPE
        fill = {k: v for k, v in pieces.items() if getattr(self, k) is None}
        return replace(self, recipe=name, **fill)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_stages(text: str) -> list[str]:
    """``"layer1,layer2"`` -> ``["layer1", "layer2"]``; ``"all"``: layer1-4."""
    allowed = [s for s in reversed(STAGES) if s != "stem"]  # layer1 .. layer4
    if text == "all":
        return allowed
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in allowed for n in names):
        raise OptionError("muon_stages", text, f"must be 'all' or a comma-separated subset of {','.join(allowed)}")
    return names


def parse_sizes(text: str) -> list[int]:
    """``"64,80,96"`` -> ``[64, 80, 96]``: the training side of each progressive-resizing phase."""
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise XrayError(f"--progressive {text!r}: give sizes like 64,80,96, or auto, or off") from None
    from ..options import MAX_IMAGE_SIDE

    if not sizes or any(not 16 <= s <= MAX_IMAGE_SIDE for s in sizes) or sizes != sorted(sizes):
        raise XrayError(f"--progressive {text!r}: sizes must lie in [16, {MAX_IMAGE_SIDE}] and increase, like 64,80,96")
    return sizes


def resize_plan(progressive: str | None, crop: int, epochs: int) -> list[int]:
    """Training side for each epoch: the phases share the epochs equally, the last is ``crop``.

    Ending at the evaluation size keeps BatchNorm's running statistics (which track the
    input size) matched to what validation and ``classify`` feed the model.
    """
    if progressive in (None, "off"):
        return [crop] * epochs
    if progressive == "auto":
        sizes = sorted({max(16, round(crop * f / 8) * 8) for f in (2 / 3, 5 / 6)} | {crop})
    else:
        sizes = parse_sizes(progressive)
        if sizes[-1] != crop:
            raise XrayError(f"--progressive {progressive}: the last size must be the input size {crop}, "
                            f"so BatchNorm statistics end at the size the model is evaluated at")
    k = len(sizes)
    # Counted from the end, so the last epoch is always at ``crop``, even with fewer epochs than sizes.
    return [sizes[max(0, k - 1 - (epochs - 1 - e) * k // epochs)] for e in range(epochs)]


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


def resolve_precision(amp: bool, device: torch.device, *, strict: bool = False) -> Precision:
    """fp16 + GradScaler on CUDA; bf16 autocast on CPUs with native bf16; otherwise fp32.

    Without native bf16, ``--amp`` warns in one line and trains in fp32 (emulated bf16 is
    slower than fp32); ``strict`` raises instead, for callers that pick another plan.
    """
    if not amp:
        return Precision(None, False)
    if device.type == "cuda":
        return Precision(torch.float16, True)
    if device.type == "cpu":
        if not cpu_supports_bf16():
            msg = "--amp: this CPU has no native bfloat16 (needs AVX512-BF16 or AMX) and there is no CUDA device"
            if strict:
                raise XrayError(f"{msg}; run without --amp")
            print(f"resnet-xray: warning: {msg}; training in fp32", file=sys.stderr)
            return Precision(None, False)
        return Precision(torch.bfloat16, False)
    raise XrayError(f"--amp: no mixed precision for device {device.type}; run without --amp")


def resolve_device(name: str, ctx: D.DistContext) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())


def default_lr(options: FinetuneOptions, effective_batch: int, pretrained: bool) -> float:
    """Peak rate for ``effective_batch`` images per step (summed over processes).

    ``effective_batch`` is what a step really sees, never more than the training set: a
    ``--batch-size`` larger than the data must not inflate the rate (100000 on
    24 images would give sgd lr 39). SGD follows the linear scaling rule (Goyal et al., base
    0.1 per 256); AdamW the square-root rule (Malladi et al.), from 1e-3 per 32, the
    peak tuned on the reference task.
    """
    if options.optimizer == "adamw":
        lr = 1e-3 * math.sqrt(effective_batch / 32)
    elif options.optimizer == "muon":  # the rate of its AdamW groups, measured with Muon beside them
        lr = 2e-3 * math.sqrt(effective_batch / 32)
    else:
        lr = 0.1 * effective_batch / 256
    if pretrained and options.freeze != "backbone":
        lr /= 5  # gentler on features worth keeping
    return lr


def stage_lr_scales(model: nn.Module, decay: float) -> dict[int, float]:
    """Discriminative learning rates: ``id(param) -> multiplier``, the head at 1, each earlier stage ``decay`` times less.

    layer4 gets ``decay``, layer3 ``decay**2``, ... the stem ``decay**5`` (ULMFiT's
    discriminative fine-tuning): general early features move least.
    """
    scales: dict[int, float] = {}
    for depth, name in enumerate(STAGES, start=1):
        for m in _stage_modules(model)[name]:
            for p in m.parameters():
                scales[id(p)] = decay**depth
    return scales


def make_optimizer(model: nn.Module, options: FinetuneOptions, lr: float) -> torch.optim.Optimizer:
    name = options.optimizer or "sgd"
    wd = options.weight_decay if options.weight_decay is not None else {"sgd": 1e-4, "adamw": 0.05, "muon": 0.05}[name]
    scales = stage_lr_scales(model, options.layer_lr_decay) if options.layer_lr_decay != 1.0 else {}
    muon = {id(p) for p in muon_params(model, options.muon_stages)} if name == "muon" else set()
    by_group: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        by_group.setdefault((id(p) in muon, scales.get(id(p), 1.0), p.ndim > 1), []).append(p)
    # No decay on norms and biases; one group per (kind, lr scale, decay) so the schedule scales them all alike.
    groups = [{"params": ps, "lr": (options.muon_lr if is_muon else lr) * scale, "weight_decay": wd if decays else 0.0}
              | ({"muon": is_muon} if name == "muon" else {})
              for (is_muon, scale, decays), ps in sorted(by_group.items(), key=lambda kv: (not kv[0][0], -kv[0][1], not kv[0][2]))]
    # fused: one kernel pass a tensor. On a CPU torch's default (foreach) took 2.6x as long or more a
    # ResNet-50 step (benchmarks/bench_optimizer.py).
    from .muon import Muon, fused_step_supported

    fused = fused_step_supported(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, fused=fused)
    if name == "muon":
        return Muon(groups, lr=lr, ns_steps=options.ns_steps)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def _optimizer_text(o: FinetuneOptions, lr: float) -> str:
    if o.optimizer == "muon":
        return f"muon lr {o.muon_lr:.3g} on the {o.muon_stages} convs ({o.ns_steps} Newton-Schulz steps) + adamw lr {lr:.3g}"
    return f"{o.optimizer} lr {lr:.3g}"


def muon_params(model: nn.Module, stages: str) -> list[nn.Parameter]:
    """The conv kernels ``--optimizer muon`` hands to Muon: every conv in the named backbone stages."""
    b = _backbone(model)
    return [m.weight for s in parse_stages(stages) for m in getattr(b, s).modules() if isinstance(m, nn.Conv2d)]


class WarmupCosine:
    """Multiplier for LambdaLR: linear warm-up from 1% then cosine decay to 0, per step."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup, self.total = max(0, warmup_steps), max(1, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class WeightEMA:
    """Exponential moving average of a model's weights and float buffers (timm's ModelEmaV3 idea).

    The decay ramps up as ``(1 + n) / (10 + n)`` over the first updates, so the average is
    not anchored to the random initialisation. BatchNorm running statistics are averaged
    too, and the step counters copied, so the averaged model evaluates on its own.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(_bare(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_t, live_t = [], []
        for (_, e), (_, m) in zip(self.module.state_dict().items(), _bare(model).state_dict().items()):
            if e.is_floating_point():
                ema_t.append(e)
                live_t.append(m.detach())
            else:
                e.copy_(m)
        torch._foreach_lerp_(ema_t, live_t, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay, "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["state_dict"])


# --- evaluation ---


def _unpack(batch, device: torch.device, channels_last: bool, size: int | None = None):
    x = batch[0].to(device, non_blocking=True)
    if size is not None and x.shape[-1] != size:
        # Progressive resizing on the batch, not in the workers: the workers' transform stays
        # fixed, and the crop a sample gets stays a function of (seed, epoch, index).
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
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
    flip: bool = False,
) -> dict[str, Any]:
    """Loss (plain cross-entropy), accuracy, per-class accuracy and confusion matrix on ``loader``.

    ``flip`` scores the mean of the logits of each image and its mirror image (test-time
    augmentation; box heads are read from the unflipped image).

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
            if flip:
                logits = (logits + class_logits(model(torch.flip(x, dims=[3]))).float()) / 2
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


@dataclass
class _Run:
    """Everything one :func:`fit` call shares between its steps; the position fields are what last.pt saves."""

    model: nn.Module
    data: DataBundle
    options: FinetuneOptions  # resolved: no recipe piece left at None
    ctx: D.DistContext
    device: torch.device
    precision: Precision
    out: Path | None
    meta: ModelMeta
    extra: dict[str, Any]  # more keys for every checkpoint
    steps: int  # optimizer steps per epoch
    effective_batch: int  # images per step over all processes (never more than the training set)
    lr: float
    sizes: list[int]  # training side of each epoch (progressive resizing)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: WeightEMA | None
    tb: TensorBoardLog
    forward: nn.Module | None = None  # what a training step calls: the model, its DDP wrapper, or compiled
    wrapped_for: tuple[str, ...] | None = None
    compiled_sizes: set = field(default_factory=set)
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"accuracy": None, "epoch": None})
    stopped_early: bool = False
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float | None = None  # end of the first step: startup (workers, first batch) excluded from rates
    first_step: int = 0
    last_val: tuple[int, dict[str, Any]] | None = None  # (global step, evaluation) of the live weights
    updates: int = 0  # optimiser steps taken by this call (a non-finite loss skips its step)
    nonfinite_run: int = 0  # consecutive non-finite losses, across epoch ends, for max_nonfinite

    @property
    def main(self) -> bool:
        return self.ctx.is_main

    @property
    def talk(self) -> bool:
        return self.options.progress and self.ctx.is_main


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
        options: the schedule, recipe, precision, freezing and checkpoint settings.
        out_dir: where ``last.pt`` (resumable), ``best.pt`` (best validation accuracy, of the
            weights or their EMA), ``metrics.csv`` and ``confusion.png`` go; None writes nothing.
        resume: continue from ``out_dir/last.pt`` when it exists.
        checkpoint_extra: more plain-data keys for every checkpoint.
        pretrained: whether the starting weights are worth protecting (picks the default lr).
        meta: the model's metadata; its ``changes`` (pruned widths, heads, a new classifier)
            go into every checkpoint. None reads them off the model's structure.

    Returns:
        ``{"history": [...], "final": evaluate(...) on the final weights, "best": {...},
        "skipped": [...], "stopped_early": bool, "global_step": int, ...}``.
    """
    run = _setup(model, data, options.resolved(), out_dir, checkpoint_extra, pretrained, meta)
    if resume:
        _restore(run)
    _announce(run)
    try:
        for epoch in range(run.epoch, run.options.epochs):
            stats, seconds = _train_epoch(run, epoch)
            if stats is None:  # --stop-after-steps inside the epoch
                break
            _end_epoch(run, epoch, stats, seconds)
            if run.stopped_early:
                break
    finally:
        run.tb.close()
    return _finish(run)


def _setup(model: nn.Module, data: DataBundle, options: FinetuneOptions, out_dir: str | Path | None,
           checkpoint_extra: dict[str, Any] | None, pretrained: bool, meta: ModelMeta | None) -> _Run:
    """Device, precision, output folder, optimizer, schedule, EMA: everything before the first step."""
    if options.arch is None:
        raise XrayError("FinetuneOptions.arch must name the model's architecture for its checkpoints")
    if data.train is None:
        raise XrayError("fit needs a training loader (DataBundle.train is None)")
    ctx = D.DistContext(*_dist_env()) if data.info.get("world_size", 1) > 1 else D.DistContext()
    device = resolve_device(options.device, ctx)
    precision = resolve_precision(options.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # few input sizes: let cuDNN pick the fastest kernels once each
    out = _prepare_out(out_dir, ctx.is_main)
    steps = steps_per_epoch(data.train)
    if steps == 0:
        raise XrayError("the training split is empty after sharding; add images or use fewer processes")
    sizes = resize_plan(options.progressive, data.preprocessing.crop, options.epochs)
    # The checkpoints carry the model's whole change list (pruned widths included), checked
    # here so a run never trains for an hour and then writes files that cannot be loaded.
    changes = list(meta.changes) if meta is not None and meta.changes else (changes_of(_bare(model), options.arch) if out is not None else [])
    # run.meta holds the starting weights' provenance; each save adds this run's training to it (_trained_meta)
    start = meta.provenance if meta is not None and meta.provenance is not None else (
        Provenance(None, "fit() was given no record of the starting weights") if pretrained else Provenance.random_init(str(options.weights)))
    meta = ModelMeta(options.arch, f"fine-tuned from {options.weights}", list(data.class_names), data.preprocessing, True, changes=changes,
                     provenance=start)
    if out is not None:
        check_changes_rebuild(_bare(model), meta)
    extra = {"options": options.to_dict(), **(checkpoint_extra or {})}
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    # A step never sees more images than one pass holds, whatever --batch-size asks for.
    effective_batch = min(options.batch_size, len(data.train.sampler)) * ctx.world_size
    lr = options.lr or default_lr(options, effective_batch, pretrained)
    optimizer = make_optimizer(model, options, lr)
    schedule = WarmupCosine(round(options.warmup_epochs * steps), options.epochs * steps)
    return _Run(
        model, data, options, ctx, device, precision, out, meta, extra, steps, effective_batch, lr, sizes, optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.use_scaler),
        ema=WeightEMA(model, options.ema) if options.ema else None,
        tb=TensorBoardLog(out / "tensorboard" if (out is not None and ctx.is_main) else None),
    )


def _prepare_out(out_dir: str | Path | None, main: bool) -> Path | None:
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XrayError(f"--out {out}: cannot create ({e.strerror})") from None
        remove_stale_temporaries(out)
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict``, keeping this build's ``fused``/``foreach`` choice.

    torch restores every group option from the checkpoint, so a run saved before the steps were
    fused would resume on the slower foreach path; how to step is not training state.
    """
    how = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, how):
        group.update(keep)


def _restore(run: _Run) -> None:
    """Continue from ``last.pt``: weights, optimizer, schedule, EMA, RNGs and position."""
    last = run.out / "last.pt" if run.out is not None else None
    if last is None or not last.exists():
        _say(f"--resume: no checkpoint in {run.out} yet; starting from the beginning", run.main)
        return
    heads = run.model.heads_spec if isinstance(run.model, MultiTaskResNet) else None
    ck = load_training_state(last, arch=run.options.arch, class_names=run.data.class_names, heads=heads)
    _check_same_run(ck.get("options") or {}, run.options, last)
    run.model.load_state_dict(ck["state_dict"])
    load_optimizer_state(run.optimizer, ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    if ck.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ck["scaler"])
    if run.ema is not None and ck.get("ema"):
        run.ema.load_state_dict(ck["ema"])
    set_rng_state(ck["rng"])
    run.epoch, run.step_in_epoch, run.global_step = int(ck["epoch"]), int(ck["step_in_epoch"]), int(ck["global_step"])
    run.first_step = run.global_step
    run.history = list(ck["history"])
    best = dict(ck["best"])
    run.best = best if (best.get("accuracy") or -1) >= 0 else {"accuracy": None, "epoch": None}  # -1: older files
    # Said even without progress output: a resumed run should never look like a fresh one.
    _say(f"resuming from {last}: epoch {run.epoch + 1}, step {run.step_in_epoch}/{run.steps}", run.main)


def _check_same_run(saved: dict[str, Any], now: FinetuneOptions, path: Path) -> None:
    """Refuse to resume under another schedule: the old one would silently go on."""
    for key in RESUME_KEYS:
        if key in saved and saved[key] != getattr(now, key):
            flag = "--" + key.replace("_", "-")
            raise XrayError(f"--resume: {path} was started with {flag} {saved[key]}, this run has {getattr(now, key)}; "
                            f"resume with the same value, or train into a new --out")


def _announce(run: _Run) -> None:
    o, n_train = run.options, run.data.info.get("train_images")
    asked = o.batch_size * run.ctx.world_size
    capped = f" (--batch-size {o.batch_size} is more than the {n_train} training images)" if asked > run.effective_batch else ""
    pieces = [f"sizes {'/'.join(str(s) for s in sorted(set(run.sizes)))}" if len(set(run.sizes)) > 1 else "",
              f"EMA {o.ema:g}" if o.ema else "", "channels-last" if o.channels_last else "",
              "zero-init residuals" if o.zero_init_residual and o.weights == "random" else "",
              "whitened stem" if o.stem_init == "whiten" and o.weights == "random" else "", "test-time flip" if o.tta_flip else "", "compiled" if o.compile else ""]
    _say(f"training {o.arch} on {n_train} images ({len(run.data.class_names)} classes) x {o.epochs} epochs: "
         f"{run.steps} steps/epoch of {run.effective_batch}{capped}, {_optimizer_text(o, run.lr)}, {run.precision.name}, "
         f"{run.device}{f', {run.ctx.world_size} processes' if run.ctx.enabled else ''}; recipe {o.recipe}"
         + "".join(f", {p}" for p in pieces if p), run.main and run.out is not None)


def _prepare_forward(run: _Run, frozen: list[str]) -> None:
    """The module a step calls: DDP fixes its synchronised parameters at construction, so rewrap when freezing changes."""
    if run.forward is not None and run.wrapped_for == tuple(frozen):
        return
    forward: nn.Module = run.model
    if run.ctx.enabled:
        forward = nn.parallel.DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.options.compile:
        forward = torch.compile(forward, dynamic=False)  # one static graph per training size
    run.forward, run.wrapped_for = forward, tuple(frozen)



class _LogBar:
    """The bits of tqdm the epoch loop uses, printing a plain line at most every ``every`` seconds."""

    def __init__(self, total: int, done: int, desc: str, *, quiet: bool, every: float = 10.0) -> None:
        self.total, self.n, self.desc, self.quiet, self.every = total, done, desc, quiet, every
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""

    def set_postfix(self, refresh: bool = False, **kv: str) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kv.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            print(f"{self.desc}: step {self.n}/{self.total} ({now - self.t0:.0f} s), {self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _train_epoch(run: _Run, epoch: int) -> tuple[_StepStats | None, float]:
    """One pass over the training split (or its rest, after a resume); None when stopped early inside it."""
    o = run.options
    frozen = frozen_stages(o.freeze, epoch)
    run.model.train()
    apply_freeze(run.model, frozen)
    _prepare_forward(run, frozen)
    skip = run.step_in_epoch if epoch == run.epoch else 0
    run.data.train.sampler.set_epoch(epoch, skip=skip * o.batch_size)
    stats = _StepStats()
    # A terminal gets a live bar; a log file gets one plain line every few seconds instead of \r updates.
    bar = tqdm(total=run.steps, initial=skip, desc=f"epoch {epoch + 1}/{o.epochs}", unit="step", disable=not run.talk,
               leave=False, file=sys.stderr) if sys.stderr.isatty() else _LogBar(run.steps, skip, f"epoch {epoch + 1}/{o.epochs}",
                                                                                  quiet=not run.talk)
    t_epoch = t_wait = time.perf_counter()
    run.step_in_epoch = skip
    try:
        for batch in run.data.train:
            x, y, box = _unpack(batch, run.device, o.channels_last, size=run.sizes[epoch])
            stats.wait_s += time.perf_counter() - t_wait
            _train_step(run, x, y, box, stats, epoch)
            run.global_step += 1
            run.step_in_epoch += 1
            if run.t_first is None:
                run.t_first = time.perf_counter()
            if run.talk:
                el = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{stats.loss / max(1, stats.seen):.3f}", acc=f"{stats.correct / max(1, stats.seen):.1%}",
                                ips=f"{stats.seen * run.ctx.world_size / max(el, 1e-9):.1f}", refresh=False)
                bar.update(1)
            at_stop = o.stop_after_steps is not None and run.global_step >= o.stop_after_steps
            if at_stop:
                _check_trained(run, stats, epoch)
            if at_stop or (o.checkpoint_every and run.updates and run.global_step % o.checkpoint_every == 0 and run.step_in_epoch < run.steps):
                _save_last(run, epoch, run.step_in_epoch)
            if at_stop:
                run.stopped_early = True
                if run.step_in_epoch < run.steps:
                    return None, 0.0
                break
            t_wait = time.perf_counter()
    finally:
        bar.close()
    return stats, time.perf_counter() - t_epoch


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, box: torch.Tensor | None, stats: _StepStats, epoch: int) -> None:
    """Forward, loss, and an update unless the loss is non-finite on any rank (then skipped everywhere)."""
    o, optimizer = run.options, run.optimizer
    with run.precision.autocast(run.device):
        out = _forward(run, x)
    loss, parts = _loss(out, y, box, o)
    if not D.all_true(bool(torch.isfinite(loss)), run.ctx, run.device):
        # Skip the update on every rank together: one NaN step must not poison the weights.
        optimizer.zero_grad(set_to_none=True)
        run.nonfinite_run += 1
        stats.nonfinite += 1
        _say(f"non-finite loss at epoch {epoch + 1} step {run.step_in_epoch + 1}: step skipped", run.main)
        if run.nonfinite_run >= o.max_nonfinite:
            raise TrainingFailed(
                f"training stopped: {run.nonfinite_run} non-finite losses in a row (epoch {epoch + 1}, step {run.step_in_epoch + 1}); "
                f"no NaN weights were saved; lower --lr or run without --amp")
    else:
        run.nonfinite_run = 0
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        run.updates += 1
        if run.ema is not None:
            run.ema.update(run.model)
        stats.loss += float(loss.detach()) * len(y)
        stats.correct += int((class_logits(out).argmax(1) == y).sum())
        stats.seen += len(y)
        if "box" in parts:
            stats.box_loss += float(parts["box"].detach()) * len(y)
    with warnings.catch_warnings():
        # After a skipped step the scheduler still advances, so the schedule stays aligned.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()


def _forward(run: _Run, x: torch.Tensor):
    """``run.forward(x)``; a compiled forward that fails to build falls back to eager, once, with a warning."""
    size = x.shape[-1]
    if not run.options.compile or size in run.compiled_sizes:
        return run.forward(x)
    try:
        out = run.forward(x)
    except Exception as e:  # noqa: BLE001 - any compiler failure: the eager model still trains
        print(f"resnet-xray: warning: --compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
              f"training eagerly", file=sys.stderr)
        run.options = replace(run.options, compile=False)
        run.forward = None
        _prepare_forward(run, list(run.wrapped_for or ()))
        return run.forward(x)
    run.compiled_sizes.add(size)
    return out


def _end_epoch(run: _Run, epoch: int, stats: _StepStats, seconds: float) -> None:
    """Validate (the weights, and their EMA late in the run), log a row, keep the best, checkpoint."""
    o, ctx = run.options, run.ctx
    tr_loss, tr_correct, tr_seen, tr_box, wait = D.all_reduce_sum(
        [stats.loss, stats.correct, stats.seen, stats.box_loss, stats.wait_s], ctx, run.device)
    if tr_seen == 0 and stats.nonfinite == 0:
        first = f" (first: {run.data.skipped[0].path}: {run.data.skipped[0].reason})" if run.data.skipped else ""
        raise XrayError(f"no readable training images: every file of the train split was skipped{first}; nothing was saved")
    _check_trained(run, stats, epoch)
    D.average_buffers(run.model, ctx)
    val = _validate(run, run.model)
    run.last_val = (run.global_step, val)
    ema_val = _validate(run, run.ema.module) if run.ema is not None and _ema_due(run, epoch) else None
    row = {
        "epoch": epoch + 1,
        "train_loss": tr_loss / max(1, tr_seen),
        "train_accuracy": tr_correct / max(1, tr_seen),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        **({"ema_val_accuracy": ema_val["accuracy"]} if ema_val is not None else {}),
        **({"val_box_iou": val["box_iou"], "val_box_l1": val["box_l1"], "train_box_loss": tr_box / max(1, tr_seen)} if "box_iou" in val else {}),
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_s": tr_seen / max(seconds, 1e-9),
        "data_wait_fraction": (wait / ctx.world_size) / max(seconds, 1e-9),
        "seconds": seconds,
        "nonfinite_steps": stats.nonfinite,
        "skipped_files": len(run.data.skipped),
        "frozen": "+".join(frozen_stages(o.freeze, epoch)) or "-",
        "train_size": run.sizes[epoch],
    }
    run.history.append(row)
    candidates = [("model", run.model, val)] + ([("ema", run.ema.module, ema_val)] if ema_val is not None else [])
    which, weights, score = max(candidates, key=lambda c: c[2]["accuracy"])  # ties: the live weights
    improved = run.best["accuracy"] is None or score["accuracy"] > run.best["accuracy"]
    if improved:
        run.best = {"accuracy": score["accuracy"], "epoch": epoch + 1, "loss": score["loss"], "weights": which}
    _say(f"epoch {epoch + 1}/{o.epochs}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.1%} "
         f"({row['train_size']} px) | val loss {val['loss']:.3f} acc {val['accuracy']:.1%}"
         + (f", EMA {ema_val['accuracy']:.1%}" if ema_val is not None else "")
         + (f" box IoU {val['box_iou']:.3f}" if "box_iou" in val else "")
         + f" | {row['images_per_s']:.1f} img/s, data wait {row['data_wait_fraction']:.0%}, {seconds:.0f}s",
         run.main and (o.progress or run.out is not None))  # a run that writes files also logs its epochs
    if run.out is not None and run.main:
        write_history_csv(run.out / "metrics.csv", run.history)
        run.tb.epoch(row)
        if improved:
            save_checkpoint(run.out / "best.pt", weights, _trained_meta(run, epoch + 1, score["accuracy"]),
                            metrics={"val_accuracy": score["accuracy"], "epoch": epoch + 1, "weights": which}, **run.extra)
    _save_last(run, epoch + 1, 0)


def _check_trained(run: _Run, stats: _StepStats, epoch: int) -> None:
    """Fail before anything is published when no optimiser step was taken: by this call, or in this epoch.

    Every step skipped as non-finite (fewer than ``max_nonfinite`` per epoch) would otherwise
    validate and publish the untrained weights as best.pt, and exit 0.
    """
    if run.updates and stats.seen:
        return
    if stats.nonfinite:  # the same on every rank: the skip decision is all-reduced
        what = ("so no optimiser step was taken; no best.pt or last.pt was written" if not run.updates
                else f"in epoch {epoch + 1}; its weights were not saved")
        raise TrainingFailed(f"training failed: every loss was non-finite ({stats.nonfinite} steps skipped) {what}. "
                             f"Check --class-weight and --box-weight, lower --lr, or run without --amp")


def _validate(run: _Run, model: nn.Module) -> dict[str, Any]:
    return evaluate(model, run.data.val, device=run.device, channels_last=run.options.channels_last, ctx=run.ctx,
                    flip=run.options.tta_flip)


def _ema_due(run: _Run, epoch: int) -> bool:
    """The EMA is validated in the last third of the epochs only: it lags early on, and each look costs a pass."""
    return epoch + 1 > run.options.epochs - max(1, math.ceil(run.options.epochs / 3))


def _trained_meta(run: _Run, epochs: int, accuracy: float | None) -> ModelMeta:
    """The metadata a checkpoint of this run is saved with: the starting weights' provenance plus this run's training."""
    stage = TrainingStage("finetune", run.data.info.get("folder"), tuple(run.data.class_names), epochs, run.global_step,
                          accuracy, str(run.options.weights))
    return replace(run.meta, provenance=run.meta.provenance.after(stage))


def _save_last(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """``last.pt`` names the next batch to train on: ``epoch``/``step_in_epoch``."""
    if run.out is not None and run.main:
        save_training_state(run.out / "last.pt", run.model, _trained_meta(run, epoch, run.best["accuracy"]),
                            optimizer=run.optimizer, scheduler=run.scheduler,
                            scaler=run.scaler, epoch=epoch, step_in_epoch=step_in_epoch, global_step=run.global_step,
                            history=run.history, best=run.best,
                            **({"ema": run.ema.state_dict()} if run.ema is not None else {}), **run.extra)
    D.barrier(run.ctx)


def _finish(run: _Run) -> dict[str, Any]:
    """Final evaluation, confusion matrix, and the result dictionary."""
    t_loop_end = time.perf_counter()
    # The last epoch's evaluation when no step came after it: the same weights, a pass saved.
    seen = run.last_val
    final = seen[1] if seen is not None and seen[0] == run.global_step else _validate(run, run.model)
    weight_diff = D.max_weight_difference(run.model, run.ctx, run.device)
    if run.out is not None and run.main:
        save_confusion_png(final["confusion"], run.data.class_names, run.out / "confusion.png",
                           f"validation: {final['accuracy']:.1%} of {final['images']} images")
    run.model.eval()
    return {
        "history": run.history,
        "final": final,
        "best": run.best,
        "skipped": list(run.data.skipped),
        "stopped_early": run.stopped_early,
        "global_step": run.global_step,
        "seconds": time.perf_counter() - run.t_start,
        # Steady-state rate of this call: steps after the first, per second (includes epoch-end evaluation).
        "steps_after_first": run.global_step - run.first_step - 1,
        "seconds_after_first": (t_loop_end - run.t_first) if run.t_first is not None else 0.0,
        "precision": run.precision.name,
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "rank_weight_max_diff": weight_diff,
        "lr": run.lr,
        "effective_batch": run.effective_batch,
        "options": run.options.to_dict(),
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
    if options.zero_init_residual and options.weights == "random":
        zero_init_residual(model)
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


def whiten_stem_from(model: nn.Module, data: DataBundle, images: int = 256) -> None:
    """``--stem-init whiten``: conv1 from the patch statistics of up to ``images`` training crops, spread over the set."""
    from .data import BadSample
    from .stem import whiten_stem

    ds = data.train.dataset
    k = min(images, len(ds))
    picks = sorted({round(i * (len(ds) - 1) / max(1, k - 1)) for i in range(k)})
    xs = [item[0] for item in (ds[(i, 0)] for i in picks) if not isinstance(item, BadSample)]
    if xs:  # no readable image: fit() reports that with its own one-line error
        whiten_stem(_backbone(model).conv1, torch.stack(xs))


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm of every residual branch; returns how many."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    n = 0
    for m in model.modules():
        bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
        if bn is not None:
            nn.init.zeros_(bn.weight)
            n += 1
    return n


# What a finished (or interrupted) run leaves in its folder; a new run must not mix with them.
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "summary.json", "confusion.png")


def claim_run_folder(out_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one unless asked; with ``overwrite``, clear it.

    Call it while holding the folder's lock, so no live run's files are touched.
    """
    out = Path(out_dir)
    found = [n for n in RUN_FILES if (out / n).exists()]
    if not found or resume:
        return
    if not overwrite:
        raise XrayError(f"--out {out}: holds an earlier run ({', '.join(found)}); "
                        f"pass --resume to continue it or --overwrite to replace it")
    for n in found:
        (out / n).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def finetune(data_dir: str | Path, options: FinetuneOptions, out_dir: str | Path, *, resume: bool = False,
             overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune on an image folder and write checkpoints, metrics and a confusion matrix to ``out_dir``.

    Under ``torchrun`` each process runs this; DDP, sharding and rank-0 writing are automatic.
    Rank 0 holds ``out_dir``'s lock for the whole run (:func:`resnet_xray.locks.output_lock`):
    a second run on the same folder stops with one line. A folder holding an earlier run
    needs ``resume`` or ``overwrite``.

    Returns:
        :func:`fit`'s result plus ``out_dir`` and ``data`` (counts).
    """
    options = options.resolved()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    want_cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    ctx = D.init_from_env("cuda" if want_cuda else "cpu")
    with ExitStack() as held:
        if ctx.is_main:
            try:
                from ..atomic import refuse_inputs

                # --weights ft/best.pt --out ft --overwrite would delete the weights it starts from (a resume ignores --weights)
                refuse_inputs(out_dir, {"--data": data_dir, "--weights": None if resume else options.weights}, "--out")
                held.enter_context(output_lock(out_dir, "--out"))
                claim_run_folder(out_dir, resume=resume, overwrite=overwrite)
            except XrayError:
                D.shutdown(ctx)
                raise
        return _finetune_locked(data_dir, options, out_dir, ctx, resume=resume)


def _finetune_locked(data_dir: str | Path, options: FinetuneOptions, out_dir: str | Path, ctx: D.DistContext, *,
                     resume: bool) -> dict[str, Any]:
    try:
        data = make_loaders(data_dir, image_size=options.image_size, batch_size=options.batch_size, workers=options.workers,
                            seed=options.seed, distributed=ctx.enabled, multitask=options.multitask,
                            min_crop_scale=options.min_crop_scale, skip_unreadable=options.skip_unreadable,
                            skip_flag="--skip-unreadable")
        model, meta = build_for_finetune(options, data.class_names)
        if options.stem_init == "whiten" and options.weights == "random":
            # Also under --resume: a run killed before its first checkpoint starts over from this init.
            whiten_stem_from(model, data)
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
