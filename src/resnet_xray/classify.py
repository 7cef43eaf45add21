"""Classify images in batches, streaming from files and folders, and skipping bad files."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .image import ImageStream, Skipped
from .interface import split_outputs
from .model import ModelMeta


@dataclass
class ClassifyOptions:
    topk: int = 5  # how many labels to report per image
    batch_size: int = 16  # images per forward pass; bounds memory for large folders
    progress: bool = True  # progress bar on stderr when there is more than one batch


@dataclass
class Prediction:
    image: str
    topk: list[dict[str, Any]]  # {"label", "index", "prob"}, most probable first
    heads: dict[str, list[float]] = field(default_factory=dict)  # extra outputs of multi-task models


@dataclass
class ClassifyResult:
    predictions: list[Prediction]
    skipped: list[Skipped]
    weights: str
    transforms: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [{"image": p.image, "topk": p.topk, **({"heads": p.heads} if p.heads else {})} for p in self.predictions],
            "skipped": [{"image": s.path, "reason": s.reason} for s in self.skipped],
            "weights": self.weights,
            "transforms": self.transforms,
        }


def _batches(stream: ImageStream, preprocess, size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    for path, img in stream:
        names.append(str(path))
        tensors.append(preprocess(img))
        if len(tensors) == size:
            yield names, torch.stack(tensors)
            names, tensors = [], []
    if tensors:
        yield names, torch.stack(tensors)


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
    k = max(1, min(opts.topk, len(meta.class_names)))
    model.eval()
    preds: list[Prediction] = []
    bar = tqdm(total=len(stream), unit="img", desc="classify", disable=not opts.progress or len(stream) <= opts.batch_size)
    for names, x in _batches(stream, transform, opts.batch_size):
        logits, extra = split_outputs(model(x))
        probs = logits.float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for i, name in enumerate(names):
            topk = [
                {"label": meta.class_names[j], "index": int(j), "prob": float(p)}
                for p, j in zip(top.values[i].tolist(), top.indices[i].tolist())
            ]
            heads = {h: [float(v) for v in t[i].flatten().tolist()] for h, t in extra.items()}
            preds.append(Prediction(name, topk, heads))
        bar.update(len(names))
    bar.update(len(stream) - bar.n)
    bar.close()
    return ClassifyResult(preds, stream.skipped, meta.weights, meta.preprocessing.source)
