"""The measured anatomy of a ResNet: layers, receptive fields, MACs, parameter shares, Table 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .layers import LayerRow, layer_table, stage_of
from .summary import Breakdown, StageRow, Totals, breakdown, stage_table, totals
from ..options import MAX_IMAGE_SIDE, OptionError, option
from ..provenance import WeightsInfo

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
    input_size: int | None = option(None, "side of the square input (shapes, MACs and RFs depend on it); None: the model's crop")

    def __post_init__(self) -> None:
        if self.input_size is not None and not 32 <= self.input_size <= MAX_IMAGE_SIDE:  # 32: five stride-2 steps
            raise OptionError("input_size", self.input_size, f"must lie in [32, {MAX_IMAGE_SIDE}] (32: five stride-2 steps)")


@dataclass
class Anatomy:
    arch: str
    input_size: int
    layers: list[LayerRow]
    stages: list[StageRow]
    totals: Totals
    breakdown: Breakdown
    # Where input_size came from, said beside the figures: MACs at 224 px and at 96 px differ 5x.
    input_size_from: str = "given"  # "given" | "the model's crop" | "default"
    weights: WeightsInfo | None = None  # the weights' provenance, set by the verb that ran

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_size": self.input_size,
            "input_size_from": self.input_size_from,
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
            "weights": self.weights.to_dict() if self.weights else None,
        }


# The side torchvision's ImageNet weights are evaluated at; used when neither a size nor a model's crop is known.
DEFAULT_INPUT_SIZE = 224


def analyze(model: nn.Module, arch: str = "resnet", options: AnatomyOptions | None = None, *,
            crop: int | None = None) -> Anatomy:
    """Measure ``model`` on a 1x3xSxS input: nothing in the result is typed in.

    S is ``options.input_size``, else ``crop`` (the model's preprocessing), else 224.
    """
    opts = options or AnatomyOptions()
    size, source = ((opts.input_size, "given") if opts.input_size else
                    (crop, "the model's crop") if crop else (DEFAULT_INPUT_SIZE, "default"))
    rows = layer_table(model, size)
    return Anatomy(
        arch=arch,
        input_size=size,
        layers=rows,
        stages=stage_table(model, rows),
        totals=totals(model, rows),
        breakdown=breakdown(model, rows),
        input_size_from=source,
    )
