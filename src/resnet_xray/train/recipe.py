"""What a fine-tuning run is asked to do: its options, the two recipes that fill them, and the resize plan.

:class:`FinetuneOptions` is the one source of ``finetune``'s flags, defaults and checks;
``resolved()`` fills what the user left at None from the fast (from scratch) or classic recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..errors import XrayError
from ..model import check_arch
from ..options import MAX_IMAGE_SIDE, OptionError, at_least, batch_fits, image_side, learning_rate, one_of, option, seed_in_range, thread_count, within

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
    arch: str | None = option("resnet50", "None: the --weights checkpoint's arch, else resnet50")
    weights: str = option("imagenet", "starting point: imagenet, random, or a checkpoint path")
    epochs: int = 10
    batch_size: int = option(32, "per process")
    lr: float | None = option(None, "peak learning rate (default: the recipe's, scaled by the batch a step really sees)")
    recipe: str = option("auto", "defaults for the pieces below: fast (from scratch: muon, whitened stem, warm-up 0.5, channels-last, min-crop-scale 0.8) or classic (sgd, warm-up 1, crop 0.35); auto: fast for --weights random")
    optimizer: str | None = option(None, "sgd (momentum, nesterov), adamw, or muon (Muon on the convs of --muon-stages, AdamW at --lr on the stem, fc, norms and biases); default: the recipe's")
    muon_lr: float = option(0.02, "--optimizer muon: peak rate of the Muon group, scheduled like --lr")
    muon_stages: str = option("layer1,layer2,layer3", "--optimizer muon: stages whose convs Muon trains, e.g. layer1,layer2,layer3, or all")
    ns_steps: int = option(3, "--optimizer muon: Newton-Schulz iterations per step (each costs a few GEMMs per conv)")
    weight_decay: float | None = option(None, "None: 1e-4 for sgd, 0.05 for adamw and muon; never on norms and biases")
    warmup_epochs: float | None = option(None, "linear warm-up before the cosine decay; None: the recipe's (0.5 fast, 1 classic)")
    freeze: str = option("none", "none, backbone (train the head only) or gradual (one more stage per epoch)")
    layer_lr_decay: float = option(1.0, "discriminative learning rates: layer4 trains at lr*D, layer3 at lr*D^2, ...")
    label_smoothing: float = 0.1
    amp: bool = option(False, "fp16 + GradScaler on CUDA, bf16 autocast on CPUs with native bf16 (else fp32, with a warning)")
    channels_last: bool | None = option(None, "NHWC memory layout (oneDNN, tensor cores); None: the recipe's")
    progressive: str | None = option(None, "progressive resizing: train sides per phase, e.g. 64,80,96 (last = input size), auto, or off (default: off; auto = 2/3, 5/6, 1 of the input size)")
    ema: float | None = option(None, "average the weights with this decay, validate the average late in the run, keep the better as best.pt; 0: off (default: off; 0.99 suits ~60 steps/epoch)")
    # Random weights only: each block's last BatchNorm scale starts at 0, so every block starts as the
    # identity and the network as a shallow one (Goyal et al. 2017; timm's zero_init_last). None: the recipe's
    zero_init_residual: bool | None = option(None, "--weights random: start each residual block as the identity (its last BatchNorm scale at 0); default: the recipe's")
    # Random weights only: "whiten" starts conv1 as the whitening filters of the training images' patches
    # (airbench's first layer; train/stem.py), "default" keeps torchvision's init. None: the recipe's
    stem_init: str | None = option(None, "--weights random: whiten starts conv1 as the whitening filters of the training images' 7x7 patches (and their negatives); default keeps torchvision's init. Default: the recipe's")
    tta_flip: bool = option(False, "validate on the mean of the image's and its mirror's logits (2x evaluation cost)")
    compile: bool = option(False, "torch.compile the model for training steps (eager fallback if it fails)")
    workers: int | None = option(None, "DataLoader processes per training process; None: 2, or 0 on a machine with 2 CPUs or fewer")
    seed: int = option(0, "init, shuffling and augmentation")
    image_size: int | None = option(None, "None: the dataset's native size, else 224")
    min_crop_scale: float | None = option(None, "RandomResizedCrop's smallest area; None: the recipe's (0.8 fast, 0.35 classic)")
    multitask: bool = option(False, "classification + box heads on one backbone (needs boxes.csv)")
    # Multi-task loss = sum of weight * loss per head: each finite and 0 or more (0 leaves a head untrained),
    # not all 0. NaN skipped every step; a negative weight trained that head to be worse.
    loss_weights: dict[str, float] = field(default_factory=lambda: {"class": 1.0, "box": 1.0})
    skip_unreadable: bool = option(False, "train without dataset folders that cannot be read (they are listed with the skipped files); default: refuse the dataset, naming the folder")
    checkpoint_every: int = option(0, "also write last.pt every N optimizer steps (0: at epoch ends only)")
    stop_after_steps: int | None = option(None, "end early (after checkpointing) at this global step: time-boxed runs")
    max_nonfinite: int = option(3, "consecutive non-finite losses tolerated (steps skipped) before giving up")
    device: str = option("auto", "auto, cpu, cuda")
    progress: bool = option(True, "progress bars and per-epoch lines on stderr")

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
