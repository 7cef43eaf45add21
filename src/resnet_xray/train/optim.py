"""The optimiser, its learning rates and schedule, frozen stages and the weight average of a fine-tuning run."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .heads import MultiTaskResNet
from .muon import Muon, fused_step_supported
from .recipe import STAGES, FinetuneOptions, parse_stages


def backbone_of(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, MultiTaskResNet) else model


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    b = backbone_of(model)
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
    for name, mods in stage_modules(model).items():
        for m in mods:
            m.requires_grad_(name not in frozen)
            if name in frozen:
                m.eval()


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
        for m in stage_modules(model)[name]:
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
    fused = fused_step_supported(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, fused=fused)
    if name == "muon":
        return Muon(groups, lr=lr, ns_steps=options.ns_steps)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def optimizer_text(o: FinetuneOptions, lr: float) -> str:
    if o.optimizer == "muon":
        return f"muon lr {o.muon_lr:.3g} on the {o.muon_stages} convs ({o.ns_steps} Newton-Schulz steps) + adamw lr {lr:.3g}"
    return f"{o.optimizer} lr {lr:.3g}"


def muon_params(model: nn.Module, stages: str) -> list[nn.Parameter]:
    """The conv kernels ``--optimizer muon`` hands to Muon: every conv in the named backbone stages."""
    b = backbone_of(model)
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
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(unwrap_ddp(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_t, live_t = [], []
        for (_, e), (_, m) in zip(self.module.state_dict().items(), unwrap_ddp(model).state_dict().items()):
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


def unwrap_ddp(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
