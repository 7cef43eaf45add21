"""``evaluate --out``: accuracy on a labelled collection through the batch pipeline, so it resumes like ``classify --out``.

The labels are the class folders (ImageFolder): an image's label is the name of the folder it
lies in. The job classifies into the output file first, then reads the records back, streamed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import XrayError
from ..provenance import WeightsInfo
from .job import classify_to
from .options import BatchOptions, BatchResult
from .records import read_records


@dataclass
class BatchEvalResult:
    """Top-1 and top-5 accuracy of one model over every labelled record in its results file."""

    data: Path  # the folder that was classified (DATA/val when DATA holds one)
    scored: int  # records of images inside a class folder
    unlabelled: int  # records of images outside every class folder (nothing to score them against)
    errors: int  # unreadable files, recorded and not scored
    top1: float | None  # None when nothing could be scored
    top5: float | None
    job: BatchResult  # the classification run that filled the results file
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {"data": str(self.data), "scored": self.scored, "unlabelled": self.unlabelled, "errors": self.errors,
                "top1_accuracy": self.top1, "top5_accuracy": self.top5, "job": self.job.to_dict(),
                "weights": self.weights.to_dict()}


def evaluate_to(model: Any, data: str | os.PathLike, out: str | os.PathLike, options: BatchOptions, *,
                ray: str | None = None) -> BatchEvalResult:
    """Classify the labelled folder ``data`` (its ``val/`` when it has one) into ``out``, then score the records."""
    root = Path(data)
    if not root.is_dir():
        raise XrayError(f"{root}: no such dataset folder (expected class folders, or a dataset with val/)")
    if (root / "val").is_dir():
        root = root / "val"
    job = classify_to(model, [root], out, options, ray=ray)
    return _score(root, job, out)


def _score(root: Path, job: BatchResult, out: str | os.PathLike) -> BatchEvalResult:
    classes = {p.name for p in root.iterdir() if p.is_dir()}
    scored = unlabelled = errors = hit1 = hit5 = 0
    for rec in read_records(out):
        if rec.get("error"):
            errors += 1
            continue
        label = Path(rec["path"]).parent.name
        if label not in classes:
            unlabelled += 1
            continue
        names = [t["label"] for t in rec["topk"]]
        scored += 1
        hit1 += bool(names) and names[0] == label
        hit5 += label in names[:5]
    acc = (lambda hits: hits / scored if scored else None)
    return BatchEvalResult(root, scored, unlabelled, errors, acc(hit1), acc(hit5), job, job.weights)
