"""What a batch job is asked to do (:class:`BatchOptions`) and what it did (:class:`BatchResult`).

Kept apart from the job itself so that ``classify --help`` builds its flags without loading the engines.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import at_least, batch_fits, option, thread_count
from ..provenance import WeightsInfo


@dataclass
class BatchOptions:
    topk: int = option(5, "how many labels to record per image")
    batch_size: int = option(32, "images per engine call and per write to --out")
    workers: int = option(0, "worker processes that read and preprocess images (0: in the main process)")
    threads: int | None = option(None, "intra-op threads for the engine (None: its own choice)")
    overwrite: bool = option(False, "start again: remove the records and settings an earlier run left at --out")
    progress: bool = option(True, "a progress bar with images/s and ETA, on a terminal only")

    def __post_init__(self) -> None:
        at_least("topk", self.topk, 1)
        batch_fits("batch_size", self.batch_size, None)
        thread_count("workers", self.workers, low=0, allow_none=False)
        thread_count("threads", self.threads)

    def shows_bar(self) -> bool:
        """Whether a progress bar is drawn: asked for, and stderr is a terminal (a log gets nothing)."""
        try:
            return self.progress and sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False


@dataclass
class BatchResult:
    out: Path
    written: int  # records this run added (classified images and unreadable files)
    errors: int  # of those, files that could not be read
    already: int  # inputs skipped because the output held them already
    seconds: float  # classifying: from the engine (or the Ray pipeline) being ready to the last record
    engine: str  # the engine and its mode, e.g. "openvino throughput (4 async requests)"
    model: str  # the model's identity, as every record names it
    weights: WeightsInfo
    ray: str | None = None  # the Ray cluster the job ran on (None: this machine)
    setup_s: float = 0.0  # before that: loading the model, reading the output's records, starting the engine or Ray
    # records/s after the first batch was written: what a long job runs at once its pipeline is full
    # (Ray's includes starting the actors in the first batch; None: a single batch)
    steady_img_s: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "written": self.written, "errors": self.errors, "already": self.already,
                "seconds": round(self.seconds, 3), "setup_s": round(self.setup_s, 3), "images_per_s": round(self.images_per_s, 2),
                "steady_img_s": None if self.steady_img_s is None else round(self.steady_img_s, 2), "engine": self.engine,
                "model": self.model, "ray": self.ray, "weights": self.weights.to_dict()}
