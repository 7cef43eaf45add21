"""Which channels of the unpruned model a pruned one still has, BatchNorm by BatchNorm.

Torch-Pruning keeps the remaining channels in order and copies their parameters exactly,
so right after a pruning step each BatchNorm's (weight, bias, running mean, running var)
rows are an ordered subset of its rows before the step: matching them gives the kept
indices without reaching into the pruner. Each round's indices are composed with the
previous round's, so the record always indexes the unpruned arch. A conv's output
channels are those of the BatchNorm after it, so the record covers the convs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..model import build_model_on_meta

Kept = dict[str, list[int]]  # BatchNorm name -> indices of the unpruned arch's channels it keeps


def _rows(model: nn.Module) -> dict[str, list[tuple[float, ...]]]:
    """Each BatchNorm's channels as (weight, bias, running mean, running var) tuples."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            cols = [t.detach().float().tolist() for t in (m.weight, m.bias, m.running_mean, m.running_var) if t is not None]
            out[name] = list(zip(*cols)) if cols else [()] * m.num_features
    return out


def _leftmost(before: list[Any], after: list[Any]) -> list[int] | None:
    """The earliest positions in ``before`` that ``after`` occupies in order; None if it is no subsequence."""
    out: list[int] = []
    for j, row in enumerate(before):
        if len(out) < len(after) and row == after[len(out)]:
            out.append(j)
    return out if len(out) == len(after) else None


def match(before: list[Any], after: list[Any]) -> list[int] | None:
    """The positions in ``before`` that ``after`` is, in order, when there is exactly one answer.

    Every embedding lies between the leftmost and the rightmost one, so when those two agree
    there is no other; when they differ (channels with identical parameters, as in an untrained
    model) the identities cannot be told, and None says so rather than guess.
    """
    first = _leftmost(before, after)
    if first is None:
        return None
    last = _leftmost(before[::-1], after[::-1])
    return first if last is not None and [len(before) - 1 - j for j in reversed(last)] == first else None


def kept_after(previous: Kept, before: nn.Module, after: nn.Module) -> Kept:
    """The record of ``after``, pruned from ``before`` whose record is ``previous``.

    A layer is left out when ``previous`` lacks it or this step's channels cannot be told apart.
    """
    old = _rows(before)
    out: Kept = {}
    for name, rows in _rows(after).items():
        prev = previous.get(name)
        step = match(old.get(name, []), rows) if prev is not None and len(prev) == len(old.get(name, [])) else None
        if step is not None:
            out[name] = [prev[j] for j in step]
    return out


def recorded_kept(meta: Any, model: nn.Module) -> Kept:
    """The record of ``model`` as its metadata (a ModelMeta) gives it.

    Every channel for a model never pruned; the last pruning's record otherwise, which is
    empty when that pruning predates the record.
    """
    widths = meta.find("pruned_widths")
    if widths is None:
        return {name: list(range(m.num_features)) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return {k: list(v) for k, v in widths.kept.items()}


@dataclass(frozen=True)
class LayerChannels:
    """One BatchNorm of a pruned model against the unpruned arch."""

    name: str
    conv: str | None  # the conv whose output channels these are
    width: int  # channels in the unpruned arch
    kept: int
    removed: list[int] | None  # indices into the unpruned arch's channels; None: not recorded


def pruned_channels(meta: Any) -> tuple[list[LayerChannels], bool] | None:
    """Per BatchNorm of the unpruned arch, what the last pruning kept, and whether identities are recorded at all.

    None for a model never pruned.
    """
    widths = meta.find("pruned_widths")
    if widths is None:
        return None
    out, conv = [], None
    for name, m in build_model_on_meta(meta.arch).named_modules():
        if isinstance(m, nn.Conv2d):
            conv = name
        if not isinstance(m, nn.BatchNorm2d):
            continue
        layer = widths.layers.get(name, {})
        kept = widths.kept.get(name)
        if kept is not None and kept and kept[-1] >= m.num_features:
            kept = None  # indices beyond the arch's width: not a record of this arch
        removed = None if kept is None else sorted(set(range(m.num_features)) - set(kept))
        out.append(LayerChannels(name, conv, m.num_features, int(layer.get("num_features", m.num_features)), removed))
    return out, bool(widths.kept)
