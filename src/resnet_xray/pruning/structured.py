"""Structured channel pruning with Torch-Pruning's DepGraph, sized by MACs.

DepGraph groups every channel that a residual add or a projection shortcut ties
together, so removing channel ``i`` of a block's output also removes it from the
shortcut and from the next block's input: the network stays consistent and the
layers really shrink. Torch-Pruning takes a channel ratio; the user asks for MACs,
so :func:`prune_to_macs` searches the ratio that lands on the requested MACs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..dissect import layer_table
from ..dissect.summary import totals
from ..interface import get_classifier
from .importance import copy_gradients, make_importance

# DepGraph only needs the graph's structure, which does not depend on the input's side.
TRACE_INPUT_SIZE = 64
# No group loses more than this share of its channels in one pruning step, so no layer vanishes.
MAX_CHANNEL_RATIO = 0.9


def count_macs(model: nn.Module, input_size: int) -> int:
    """Conv + fc multiply-accumulates at a 1x3xSxS input, from :mod:`resnet_xray.dissect`."""
    return totals(model, layer_table(model, input_size)).macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CachedImportance(tp.importance.Importance):
    """Scores each group once, whatever copy of the same weights asks again.

    The ratio search prunes several deep copies of one model; the scores depend on the
    weights (and gradients), not on the ratio, so the copies share them by layer name.
    """

    def __init__(self, inner: tp.importance.Importance, names: dict[nn.Module, str], cache: dict[Any, torch.Tensor]):
        self.inner, self.names, self.cache = inner, names, cache

    def __call__(self, group) -> torch.Tensor:
        dep = group[0].dep
        key = (self.names.get(dep.target.module), getattr(dep.handler, "__name__", str(dep.handler)), len(group[0].idxs))
        if key[0] is None:
            return self.inner(group)
        if key not in self.cache:
            self.cache[key] = self.inner(group)
        return self.cache[key]


def make_pruner(
    model: nn.Module,
    criterion: str,
    channel_ratio: float,
    *,
    global_pruning: bool,
    round_to: int | None,
    cache: dict[Any, torch.Tensor] | None = None,
) -> tp.pruner.BasePruner:
    """A one-step Torch-Pruning pruner over ``model`` that leaves the classifier's outputs alone."""
    importance = make_importance(criterion)
    if cache is not None:
        importance = CachedImportance(importance, {m: n for n, m in model.named_modules()}, cache)
    return tp.pruner.BasePruner(
        model,
        torch.randn(1, 3, TRACE_INPUT_SIZE, TRACE_INPUT_SIZE),
        importance,
        global_pruning=global_pruning,
        pruning_ratio=channel_ratio,
        max_pruning_ratio=MAX_CHANNEL_RATIO,
        ignored_layers=[get_classifier(model)],  # the class logits are never pruned
        round_to=round_to if round_to and round_to > 1 else None,
    )


def prune_channels(model: nn.Module, criterion: str, channel_ratio: float, **how: Any) -> nn.Module:
    """A pruned deep copy of ``model`` (``model`` itself is untouched; gradients come along for taylor).

    ``how``: :func:`make_pruner`'s keywords (``global_pruning``, ``round_to``, ``cache``).
    """
    pruned = copy.deepcopy(model)
    copy_gradients(model, pruned)
    was_training = pruned.training
    pruned.eval()
    make_pruner(pruned, criterion, channel_ratio, **how).step()
    pruned.train(was_training)
    for p in pruned.parameters():
        p.grad = None
    return pruned


@dataclass
class Trial:
    channel_ratio: float
    macs: int


@dataclass
class ShrinkResult:
    model: nn.Module
    channel_ratio: float  # the ratio handed to Torch-Pruning for this step
    macs: int
    target_macs: int
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_ratio": self.channel_ratio,
            "macs": self.macs,
            "target_macs": self.target_macs,
            "trials": [vars(t) for t in self.trials],
        }


def prune_to_macs(
    model: nn.Module,
    target_macs: int,
    *,
    criterion: str,
    input_size: int,
    global_pruning: bool = False,
    round_to: int | None = 8,
    tolerance: float = 0.01,
    max_trials: int = 6,
) -> ShrinkResult:
    """Prune a copy of ``model`` until its MACs come as close to ``target_macs`` as the search allows.

    MACs fall monotonically as the channel ratio grows, so the search keeps a bracket
    and interpolates on log-MACs (the ratio acts roughly quadratically on a conv's
    MACs, since both its inputs and outputs shrink). It stops within ``tolerance`` of
    the current MACs or after ``max_trials`` prunings and returns the closest trial.

    Args:
        model: the model to prune (left untouched; for taylor, its ``.grad`` must be filled).
        target_macs: MACs the pruned model should have at ``input_size``.
        criterion: one of :data:`resnet_xray.pruning.importance.CRITERIA`.
        input_size: side of the square input MACs are counted at.
        global_pruning: rank channels across all groups instead of within each group.
        round_to: keep every pruned width a multiple of this (8 suits SIMD kernels).
        tolerance: acceptable |MACs - target| as a share of the current MACs.
        max_trials: prunings tried at most.

    Returns:
        the pruned copy and how it was found.
    """
    current = count_macs(model, input_size)
    if target_macs >= current:
        return ShrinkResult(copy.deepcopy(model), 0.0, current, target_macs, [])
    # MACs behave like current * (1 - r)^a (a is about 2: a conv loses inputs and outputs),
    # so the search interpolates log-MACs against log(1 - r) between bracketing trials.
    bracket = _Bracket(lo=(0.0, current))
    best: tuple[int, nn.Module, float] | None = None
    trials: list[Trial] = []
    cache: dict[Any, torch.Tensor] = {}
    r = 1.0 - math.sqrt(target_macs / current)
    for _ in range(max_trials):
        r = min(max(r, 1e-3), MAX_CHANNEL_RATIO)
        cand = prune_channels(model, criterion, r, global_pruning=global_pruning, round_to=round_to, cache=cache)
        m = count_macs(cand, input_size)
        trials.append(Trial(round(r, 5), m))
        if best is None or abs(m - target_macs) < abs(best[0] - target_macs):
            best = (m, cand, r)
        if abs(m - target_macs) <= tolerance * current:
            break
        bracket.narrow(r, m, target_macs)
        nxt = bracket.next_ratio(current, target_macs)
        if nxt is None:
            break
        r = nxt
    assert best is not None
    return ShrinkResult(best[1], round(best[2], 5), best[0], target_macs, trials)


@dataclass
class _Bracket:
    """The ratios :func:`prune_to_macs` has tried on either side of the target MACs."""

    lo: tuple[float, int]  # (ratio, MACs) of the largest ratio tried that is still above target
    hi: tuple[float, int] | None = None  # the smallest ratio tried that reaches target (None: none yet)

    def narrow(self, r: float, macs: int, target: int) -> None:
        if macs > target:
            self.lo = max(self.lo, (r, macs))
        elif self.hi is None or r < self.hi[0]:
            self.hi = (r, macs)

    def next_ratio(self, current: int, target: int) -> float | None:
        """The ratio to try next, or None when no better one can be found."""
        lo, hi = self.lo, self.hi
        if hi is None:
            if lo[0] >= MAX_CHANNEL_RATIO:
                return None  # the target lies beyond what one step may remove
            return max(_power_law_ratio((0.0, current), lo, target), lo[0] + 0.01)
        if hi[0] - lo[0] < 5e-3:  # round_to makes MACs a step function of the ratio
            return None
        nxt = _power_law_ratio(lo, hi, target)
        return nxt if lo[0] + 1e-4 < nxt < hi[0] - 1e-4 else (lo[0] + hi[0]) / 2


def _power_law_ratio(a: tuple[float, int], b: tuple[float, int], target: int) -> float:
    """The ratio where the line through ``a`` and ``b`` in (log(1 - r), log MACs) meets ``target``."""
    ua, va = math.log(1.0 - a[0]), math.log(a[1])
    ub, vb = math.log(1.0 - b[0]), math.log(b[1])
    if abs(vb - va) < 1e-12:
        return (a[0] + b[0]) / 2 if b[0] != a[0] else a[0] + 0.02
    u = ua + (math.log(target) - va) * (ub - ua) / (vb - va)
    return 1.0 - math.exp(u)
