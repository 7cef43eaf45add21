"""Classify images in batches, streaming from files and folders, and skipping bad files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import XrayError
from .image import ImageStream, Skipped, image_batches
from .interface import split_outputs
from .model import ModelMeta
from .options import at_least, batch_fits, option
from .provenance import WeightsInfo


class OutputError(XrayError):
    """The model ran, but gave no readable class scores (NaN, Inf or none at all): a failed run, exit status 1."""

    exit_code = 1


def check_scores(logits: torch.Tensor | np.ndarray, names: list[str], model: str) -> None:
    """Refuse class scores no label can be read from: argmax over NaN picks a class, softmax prints "nan%"."""
    z = torch.as_tensor(logits)
    if z.dim() != 2 or z.shape[1] == 0:
        raise OutputError(f"{model}: gives no class scores (output shape {list(z.shape)} for {len(names)} image(s))")
    bad = (~torch.isfinite(z)).any(dim=1)
    if bool(bad.any()):
        first = names[int(bad.nonzero()[0, 0])] if len(names) == len(bad) else "?"
        raise OutputError(f"{model}: its outputs hold NaN or Inf for {int(bad.sum())} of {len(bad)} image(s) (first: {first}); "
                          "no prediction can be read from them")


@dataclass
class ClassifyOptions:
    topk: int = option(5, "how many labels to report per image")
    batch_size: int = option(16, "images per forward pass; bounds memory for large folders")
    progress: bool = option(True, "progress bar on stderr when there is more than one batch")

    def __post_init__(self) -> None:
        at_least("topk", self.topk, 1)
        batch_fits("batch_size", self.batch_size, None)


@dataclass
class Prediction:
    image: str
    topk: list[dict[str, Any]]  # {"label", "index", "prob"}, most probable first
    heads: dict[str, list[float]] = field(default_factory=dict)  # extra outputs of multi-task models


@dataclass
class ClassifyResult:
    results: list[Prediction]  # one per readable image, in input order; the JSON's "results"
    skipped: list[Skipped]
    weights: WeightsInfo  # where the weights came from; a warning when the labels are meaningless
    transforms: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [{"image": p.image, "topk": p.topk, **({"heads": p.heads} if p.heads else {})} for p in self.results],
            "skipped": [{"image": s.path, "reason": s.reason} for s in self.skipped],
            "weights": self.weights.to_dict(),
            "transforms": self.transforms,
        }




@torch.inference_mode()
def classify(
    images: Iterable[str | Path],
    model: nn.Module,
    meta: ModelMeta,
    options: ClassifyOptions | None = None,
) -> ClassifyResult:
    """Top-k labels for every readable image in ``images`` (files and folders).

    Unreadable files do not stop the run; they are listed in ``result.skipped``.
    """
    opts = options or ClassifyOptions()
    stream = ImageStream(images)
    transform = meta.preprocessing.transform()
    k = min(opts.topk, len(meta.class_names))  # a 3-class model has 3 labels to rank, however many are asked for
    model.eval()
    preds: list[Prediction] = []
    bar = opts.progress and len(stream) > opts.batch_size
    for paths, x in image_batches(stream, transform, opts.batch_size, progress=bar, desc="classify"):
        names = [str(p) for p in paths]
        logits, extra = split_outputs(model(x))
        check_scores(logits, names, str(meta.weights))
        probs = logits.float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for i, name in enumerate(names):
            topk = [
                {"label": meta.class_names[j], "index": int(j), "prob": float(p)}
                for p, j in zip(top.values[i].tolist(), top.indices[i].tolist())
            ]
            heads = {h: [float(v) for v in t[i].flatten().tolist()] for h, t in extra.items()}
            preds.append(Prediction(name, topk, heads))
    return ClassifyResult(preds, stream.skipped, WeightsInfo.of(meta), meta.preprocessing.source)
