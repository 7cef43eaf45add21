"""What ``trace`` returns: one image through one forward pass, with the prediction and the weights' provenance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..image import load_image
from ..model import LoadedModel
from ..provenance import WeightsInfo
from .capture import Trace, TraceOptions, trace_model
from .walkthrough import Walkthrough, walkthrough


@dataclass
class TraceResult:
    """One forward pass: every operation's statistics, each block's residual numbers, the top-1."""

    image: str
    arch: str
    input_shape: list[int]
    top1: dict[str, Any]  # {"index", "label", "prob"}
    trace: Trace
    weights: WeightsInfo
    walkthrough: Walkthrough | None = None

    @property
    def layers(self):
        return self.trace.layers

    @property
    def blocks(self):
        return self.trace.blocks

    def to_dict(self) -> dict[str, Any]:
        doc = {"image": self.image, "arch": self.arch, "weights": self.weights.to_dict(), "input_shape": self.input_shape,
               "top1": self.top1, **self.trace.to_dict()}
        if self.walkthrough is not None:
            doc["walkthrough"] = self.walkthrough.to_dict()
        return doc


def follow(model: LoadedModel, image: str | os.PathLike, options: TraceOptions, *, picture: Image.Image | None = None,
           with_walkthrough: bool = False) -> TraceResult:
    """Trace ``model`` on ``image`` (``picture``: the image already loaded); the walkthrough reuses the same pass."""
    x = model.meta.preprocessing(picture or load_image(image)).unsqueeze(0)
    tr = trace_model(model.module, x, options)
    probs = torch.softmax(tr.logits[0].float(), 0)
    p, idx = probs.max(0)
    top = {"index": int(idx), "label": model.class_names[int(idx)], "prob": float(p)}
    wt = walkthrough(model.module, x, trace=tr) if with_walkthrough else None
    return TraceResult(str(image), model.arch, list(x.shape), top, tr, model.weights, wt)
