"""Two models on the same input, layer by layer: how far apart each operation's outputs are, and where they part.

One function for everything that sets a model against its transformed self (fused, pruned,
another checkpoint): :func:`compare_maps` on two traces' kept maps, :func:`compare_layers`
when it should run the traces too. Layers are matched by name, in the reference's order.
A fused model has no BatchNorm ops (each became an ``nn.Identity``, and its conv now
produces what conv + BN produced), so a BatchNorm missing from the candidate is matched
with the candidate's conv before it, and that conv is not compared with the unfused one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..compare import output_error
from .capture import Trace, TraceOptions, layer_names, trace_model

# Relative error (max |a - b| / max |a|) past which two outputs count as different: FP32
# rewrites (fusion, another engine) stay near 1e-6; INT8 and pruning move well past it.
DIVERGENCE_RTOL = 1e-3


@dataclass
class LayerDiff:
    """One operation's output in both models."""

    name: str  # the reference's layer
    type: str
    candidate: str  # the candidate's layer it is set against (the conv, where a fused model lost its BN)
    shape: list[int]  # the reference's output shape, batch first
    candidate_shape: list[int]
    max_abs: float | None  # None where the shapes differ (pruned channels)
    rel: float | None  # max_abs / max |reference|
    cosine: float | None  # of the two outputs, flattened
    diverged: bool  # rel past the tolerance, a shape change, or a non-finite value

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class LayerComparison:
    reference: str
    candidate: str
    rtol: float
    layers: list[LayerDiff] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # reference layers the candidate has no counterpart for

    @property
    def first_divergence(self) -> str | None:
        """The first layer, in execution order, whose outputs differ by more than ``rtol``."""
        return next((d.name for d in self.layers if d.diverged), None)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "candidate": self.candidate, "rtol": self.rtol,
                "first_divergence": self.first_divergence, "layers": [d.to_dict() for d in self.layers],
                "missing": list(self.missing)}


def align(reference: list[tuple[str, str]], candidate: set[str]) -> list[tuple[str, str]]:
    """(reference layer, candidate layer) pairs from the reference's (name, type) list in execution order."""
    pairs = []
    for i, (name, ltype) in enumerate(reference):
        nxt = reference[i + 1] if i + 1 < len(reference) else None
        if ltype == "conv" and nxt and nxt[1] == "bn" and nxt[0] not in candidate and name in candidate:
            continue  # fused: this conv's output is compared at its BatchNorm instead
        if name in candidate:
            pairs.append((name, name))
        elif ltype == "bn" and i > 0 and reference[i - 1][1] == "conv" and reference[i - 1][0] in candidate:
            pairs.append((name, reference[i - 1][0]))
    return pairs


def layer_diff(name: str, ltype: str, other: str, a: torch.Tensor, b: torch.Tensor, rtol: float = DIVERGENCE_RTOL) -> LayerDiff:
    """How far ``b`` (the candidate's output) lies from ``a`` (the reference's)."""
    shape, cshape = list(a.shape), list(b.shape)
    if shape != cshape:
        return LayerDiff(name, ltype, other, shape, cshape, None, None, None, True)
    e = output_error(a.detach().float().numpy(), b.detach().float().numpy())
    max_abs, rel, cosine = e["max_abs"], e["max_rel"], e["cosine"]
    diverged = not (math.isfinite(rel) and rel <= rtol)  # NaN fails too
    return LayerDiff(name, ltype, other, shape, cshape, max_abs, rel, cosine, diverged)


def compare_maps(reference: Trace, candidate: Trace, *, names: tuple[str, str] = ("reference", "candidate"),
                 rtol: float = DIVERGENCE_RTOL) -> LayerComparison:
    """Compare two traces of the same input whose maps were kept (``TraceOptions(keep_maps=...)``)."""
    order = [(r.name, r.type) for r in reference.layers if r.name in reference.maps]
    have = set(candidate.maps)
    pairs = align(order, have)
    types = dict(order)
    out = LayerComparison(names[0], names[1], rtol)
    out.layers = [layer_diff(a, types[a], b, reference.maps[a], candidate.maps[b], rtol) for a, b in pairs]
    paired = {a for a, _ in pairs} | {b for _, b in pairs}
    out.missing = [n for n, _ in order if n not in paired]
    return out


def compare_layers(reference: nn.Module, candidate: nn.Module, x: torch.Tensor, *,
                   names: tuple[str, str] = ("reference", "candidate"), rtol: float = DIVERGENCE_RTOL) -> LayerComparison:
    """Trace both models on ``x`` keeping every output, and compare them layer by layer."""
    ta = trace_model(reference, x, TraceOptions(keep_maps=set(layer_names(reference))))
    tb = trace_model(candidate, x, TraceOptions(keep_maps=set(layer_names(candidate))))
    return compare_maps(ta, tb, names=names, rtol=rtol)


__all__ = ["DIVERGENCE_RTOL", "LayerComparison", "LayerDiff", "align", "compare_layers", "compare_maps", "layer_diff"]
