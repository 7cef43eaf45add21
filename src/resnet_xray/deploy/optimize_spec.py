"""What ``optimize`` is asked (:class:`OptimizeOptions`) and what it answers (:class:`OptimizeResult`).

Apart from the run itself, so the command line can read the flags without loading the engines.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..options import OptionError, at_least, batch_fits, image_side, one_of, option, seed_in_range, thread_count, within
from ..pruning.importance import CRITERIA
from ..units import pct, table
from .candidates import Candidate
from .data import list_images
from .runtime import THROUGHPUT_METHOD

ENGINES = ("ort", "openvino", "torch")
OBJECTIVES = ("latency", "throughput")


@dataclass
class OptimizeOptions:
    """How to search; every field maps onto a ``resnet-xray optimize`` flag."""

    data: str = option(help="ImageFolder dataset (train/ for calibration and fine-tuning, val/ for the budget)")
    out: str = option("out/optimize", "output folder (the winner is OUT/model.onnx or OUT/model.xml)")
    max_drop: float = option(1.0, "accuracy points (top-1, val) a candidate may lose against the FP32 checkpoint")
    target_macs: float | None = option(None, "also prune to this share of MACs, e.g. 0.5 (default: no pruning)")
    search: tuple[float, ...] | None = option(None, "prune down these shares of MACs in turn, e.g. 0.5,0.33,0.22,0.15, and keep the "
                                                    "deepest that loses at most --max-drop (instead of --target-macs)")
    prune_steps: int = option(2, "pruning rounds to reach target_macs (or the first share of --search; each later one takes one)")
    # fine-tuning epochs after each pruning round: on a 92.2% reference ResNet-50, 2 rounds x 3 epochs ended 3.2 points
    # down and 2 x 5 ended 0.8 points up (docs/deploy.md); 1 epoch had left another one 11 points down
    finetune_epochs: int = 5
    # taylor, not prune's l1 default: optimize always has data for gradients, and on the reference ResNet-50 a
    # 23% MAC cut kept 45% accuracy before fine-tuning against l1's 22% (docs/deploy.md)
    importance: str = option("taylor", "channel criterion for --target-macs; taylor ranks channels by gradients on --data")
    distill: bool = option(True, "fine-tune pruned models against the unpruned model's softened outputs as well as the labels")
    engines: tuple[str, ...] = option(ENGINES, "comma-separated: ort, openvino, torch")
    calib_images: int = option(128, "training images used to calibrate INT8")
    eval_images: int | None = option(None, "val images to score on (default: all)")
    input_size: int | None = option(None, "square side (None: the checkpoint's crop)")
    # Latency is a property of the architecture, accuracy of the weights: a model trained at 64 px
    # can be scored at 64 px and timed at the 224 px it would be deployed at (None: input_size).
    timing_size: int | None = option(None, "time every candidate at this square side, e.g. 224 (default: the accuracy size)")
    threads: int | None = option(None, "intra-op threads for every engine's timing (None: their defaults)")
    repeats: int = option(30, "timed batch-1 calls per candidate, spread over rounds")
    # latency serves one request at a time; throughput a whole collection (classify --out runs the winner so)
    objective: str = option("latency", "pick the winner by latency (batch 1) or throughput (images/s in its engine's "
                                       "throughput mode)")
    rounds: int = 5
    mixed_precision: bool = option(True, "try NNCF accuracy control when INT8 loses too much")
    min_agreement: float = option(0.995, "top-1 agreement INT8 must reach with its own FP32 model on --control; the would-be "
                                         "winner is repaired towards it (layers back to float), scored on val/ (0: no target)")
    control: str | None = option(None, "images INT8 is judged and repaired on, drawn like val/, e.g. make-dataset --seed 1's val/ "
                                       "(default: train/ images outside calibration)")
    batch_size: int = 32
    workers: int = 0
    resume: bool = option(False, "continue a killed run in OUT (same options)")
    overwrite: bool = option(False, "replace an earlier optimize run in OUT (only what optimize wrote; never an input)")
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        within("max_drop", self.max_drop, 0.0, 100.0)  # accuracy points
        within("min_agreement", self.min_agreement, 0.0, 1.0)
        if self.target_macs is not None:
            within("target_macs", self.target_macs, 0.0, 1.0, open_low=True, open_high=True)  # the share of MACs to keep
        if self.search is not None:
            self.search = tuple(self.search)
            if self.target_macs is not None:
                raise OptionError("search", ",".join(map(str, self.search)), "and --target-macs: choose one")
            for r in self.search:
                within("search", r, 0.0, 1.0, open_low=True, open_high=True)
            if not self.search or any(b >= a for a, b in zip(self.search, self.search[1:])):
                raise OptionError("search", ",".join(map(str, self.search)), "must be shares of MACs that fall, e.g. 0.5,0.4,0.3")
        self.engines = tuple(self.engines)
        if not self.engines:
            raise OptionError("engines", "", f"choose from {','.join(ENGINES)}")
        for e in self.engines:
            one_of("engines", e, ENGINES)
        for name in ("prune_steps", "calib_images", "repeats", "rounds", "batch_size"):
            at_least(name, getattr(self, name), 1)
        at_least("finetune_epochs", self.finetune_epochs, 0)
        one_of("importance", self.importance, CRITERIA)
        one_of("objective", self.objective, OBJECTIVES)
        thread_count("workers", self.workers, low=0, allow_none=False)
        at_least("eval_images", self.eval_images, 1, allow_none=True)
        image_side("input_size", self.input_size, allow_none=True)
        image_side("timing_size", self.timing_size, allow_none=True)
        batch_fits("batch_size", self.batch_size, self.input_size, training=True)
        thread_count("threads", self.threads)
        seed_in_range("seed", self.seed)
        if self.resume and self.overwrite:
            raise OptionError("resume", True, "and overwrite: choose one")
        if not Path(self.data).is_dir():
            raise OptionError("data", self.data, "no such folder")
        if self.control is not None:
            list_images(Path(self.control), "--control")  # now, not after the search


@dataclass
class OptimizeResult:
    out: Path
    baseline_accuracy: float
    max_drop: float
    candidates: list[Candidate]
    winner: Candidate | None
    winner_path: Path | None
    chart: Path | None
    machine: dict[str, Any]
    options: OptimizeOptions
    seconds: float
    weights: dict[str, Any] | None = None  # provenance of the checkpoint the chain started from
    timing_size: int | None = None  # the square side every candidate was timed at
    search: list[dict[str, Any]] = field(default_factory=list)  # the MAC shares pruning tried, in order (search.Step)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "baseline_accuracy": self.baseline_accuracy,
            "max_drop_points": self.max_drop,
            "winner": self.winner.name if self.winner else None,
            "winner_path": str(self.winner_path) if self.winner_path else None,
            "chart": str(self.chart) if self.chart else None,
            "candidates": [_clean(asdict(c)) for c in self.candidates],
            "machine": self.machine,
            "options": asdict(self.options),
            "timing_method": "batch 1, every candidate timed round-robin in one process after warm-up; median"
                             + (f"; {THROUGHPUT_METHOD}" if self.options.objective == "throughput" else ""),
            "objective": self.options.objective,
            "timing_size": self.timing_size,
            "seconds": self.seconds,
            "weights": self.weights,
            "search": self.search,
        }

    def table(self, why_width: int = 48) -> str:
        """One row per candidate, fastest first; a long "why" goes on to further lines, broken between words."""
        rows = []
        for c in sorted(self.candidates, key=lambda c: (c.latency_ms is None, c.latency_ms or 0)):
            why = textwrap.wrap(c.reason, why_width, break_long_words=False) or [""]
            rows.append([c.name, f"{c.macs_rel:.2f}", pct(c.accuracy) if c.accuracy is not None else "",
                         pct(c.agreement) if c.agreement is not None else "",
                         f"{c.latency_ms:.2f}" if c.latency_ms else "", f"{c.speedup:.2f}x" if c.speedup else "",
                         f"{c.throughput_img_s:.1f}" if c.throughput_img_s else "", c.status, why[0]])
            rows += [[""] * 8 + [more] for more in why[1:]]
        return table(["candidate", "MACs", "accuracy", "agree", "ms", "speed-up", "img/s", "status", "why"], rows, "lrrrrrrll")


def _clean(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d
