"""What ``finetune`` and ``bench-data`` return: typed, with the weights' provenance, each with its ``to_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..image import Skipped
from ..provenance import WeightsInfo


@dataclass
class FinetuneResult:
    """The training run: final and best validation metrics, per-epoch history, what it cost, skipped files."""

    final: dict[str, Any]  # accuracy, loss, images, per-class accuracy, the confusion matrix (a tensor), box IoU/L1
    best: dict[str, Any]  # the epoch best.pt holds, and its accuracy
    history: list[dict[str, Any]]  # one row per epoch, as metrics.csv
    out_dir: Path
    class_names: list[str]
    skipped: list[Skipped]
    weights: WeightsInfo  # the weights training started from
    stopped_early: bool = False
    global_step: int = 0
    seconds: float = 0.0
    steps_after_first: int = 0  # the steady-state rate: steps after the first, in seconds_after_first
    seconds_after_first: float = 0.0
    precision: str = "fp32"
    device: str = "cpu"
    world_size: int = 1
    rank_weight_max_diff: float = 0.0  # across DDP ranks; 0 when they stayed in step
    lr: float | None = None
    effective_batch: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # the loaders: sizes, workers, image side
    is_main: bool = True  # the rank that prints and writes (always, without torchrun)

    @classmethod
    def from_run(cls, run: dict[str, Any], weights: WeightsInfo) -> FinetuneResult:
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in run.items() if k in known}
        return cls(**{**given, "out_dir": Path(run["out_dir"]), "skipped": list(run["skipped"])}, weights=weights)

    @property
    def final_accuracy(self) -> float:
        return self.final["accuracy"]

    def to_dict(self) -> dict[str, Any]:
        return {"final_accuracy": self.final_accuracy, "best": self.best, "history": self.history,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped], "out_dir": str(self.out_dir),
                "weights": self.weights.to_dict()}


@dataclass
class DataBenchResult:
    """Loader images/s against model-step images/s, and the share of the loop spent waiting for data."""

    arch: str
    batch_size: int
    workers: int
    image_size: int
    precision: str
    device: str
    loader_images_per_s: float
    step_images_per_s: float
    loop_images_per_s: float
    data_wait_fraction: float
    skipped_files: int
    weights: WeightsInfo  # the step runs on a fresh initialisation: only the model's shape matters

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights"}, "weights": self.weights.to_dict()}
