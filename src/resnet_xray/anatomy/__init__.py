"""The measured anatomy of a ResNet: layers, receptive fields, MACs, parameter shares, Table 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .layers import LayerRow, layer_table, stage_of
from .summary import Breakdown, StageRow, Totals, breakdown, stage_table, totals

__all__ = [
    "Anatomy",
    "AnatomyOptions",
    "LayerRow",
    "StageRow",
    "Totals",
    "Breakdown",
    "analyze",
    "layer_table",
    "stage_of",
]


@dataclass
class AnatomyOptions:
    input_size: int = 224  # side of the square input; shapes, MACs and RFs depend on it

    def __post_init__(self) -> None:
        from ..options import MAX_IMAGE_SIDE, OptionError

        if not 32 <= self.input_size <= MAX_IMAGE_SIDE:  # 32: five stride-2 steps
            raise OptionError("input_size", self.input_size, f"must lie in [32, {MAX_IMAGE_SIDE}] (32: five stride-2 steps)")


@dataclass
class Anatomy:
    arch: str
    input_size: int
    layers: list[LayerRow]
    stages: list[StageRow]
    totals: Totals
    breakdown: Breakdown

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_size": self.input_size,
            "conventions": {
                "macs": "multiply-accumulates for conv and fc rows; element operations for bn, relu, add and pooling rows",
                "flops": "2 x macs (a multiply-add counted as two floating-point operations)",
                "macs_share": "share of all counted operations (MACs plus element operations)",
                "receptive_field": "side in input pixels of the region one output unit depends on (theoretical, padding included)",
                "jump": "input pixels between neighbouring output units (effective stride)",
            },
            "layers": [r.to_dict() for r in self.layers],
            "stages": [s.to_dict() for s in self.stages],
            "totals": self.totals.to_dict(),
            "breakdown": self.breakdown.to_dict(),
        }


def analyze(model: nn.Module, arch: str = "resnet", options: AnatomyOptions | None = None) -> Anatomy:
    """Measure ``model`` on a 1x3xSxS input: nothing in the result is typed in."""
    opts = options or AnatomyOptions()
    rows = layer_table(model, opts.input_size)
    return Anatomy(
        arch=arch,
        input_size=opts.input_size,
        layers=rows,
        stages=stage_table(model, rows),
        totals=totals(model, rows),
        breakdown=breakdown(model, rows),
    )
