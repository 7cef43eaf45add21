"""INT8 that repairs itself: the settings, then the fewest float layers, that reach an agreement target.

In order, each step measured on control images (a folder of their own, or a split of the
calibration folder; never calibrated on, and never the held-out images the final agreement
is reported on):

1. the calibration method and per-channel weights, every combination measured;
2. range handling: cross-layer equalisation of the FP32 model (:mod:`~.equalize`) under step 1's
   best settings; then NNCF's quantizer placement with bias correction (:mod:`~.nncf_onnx`), which
   corrects the mean shift INT8 rounding puts into each layer, with NNCF's default activation
   ranges and with ranges from per-image quantiles that ignore outliers;
3. the most sensitive layers kept in float (ONNX Runtime ``nodes_to_exclude``), one more at a
   time in the order :func:`~.sensitivity.rank_sensitivity` measured, until the target is met.
   The ranking re-quantises once per layer, so it uses step 1's settings, whose saved ranges
   make each variant cheap.

Every candidate tried is kept, with its latency here, so a miss can be shown as a Pareto
front of agreement against speed. SmoothQuant-style scaling is not among the steps: NNCF
applies it to transformers' MatMuls, not to convolutions.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .nncf_onnx import NNCF_METHODS
from .onnx import ort_session
from .qdq import METHODS, QdqSettings
from .sensitivity import SensitivityReport, Variants, rank_sensitivity
from .timing import time_callable


@dataclass
class Candidate:
    method: str
    per_channel: bool
    kept_float: list[str]  # PyTorch layers left in float
    agreement: float  # top-1 agreement with FP32 on the control images
    kl: float  # mean KL(FP32 || INT8) on them
    latency_ms: float  # batch 1, median, on this machine
    equalized: bool = False  # quantised from the cross-layer equalised FP32 model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Repair:
    target: float
    chosen: Candidate
    reached: bool  # the chosen candidate meets the target on the control images
    control_images: int
    calibration_images: int
    candidates: list[Candidate] = field(default_factory=list)  # in the order tried
    sensitivity: SensitivityReport | None = None  # the ranking step 3 followed, when it ran
    path: Path | None = None  # the chosen INT8 model (in the work folder)
    failed: dict[str, str] = field(default_factory=dict)  # method -> why it could not be tried

    def pareto(self) -> list[Candidate]:
        """The candidates no other beats on both agreement and latency, fastest first."""
        front = [c for c in self.candidates if not any(
            o.agreement >= c.agreement and o.latency_ms <= c.latency_ms and (o.agreement, -o.latency_ms) != (c.agreement, -c.latency_ms)
            for o in self.candidates)]
        return sorted(front, key=lambda c: c.latency_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "reached": self.reached, "chosen": self.chosen.to_dict(),
                "kept_float": list(self.chosen.kept_float), "control_images": self.control_images,
                "calibration_images": self.calibration_images, "candidates": [c.to_dict() for c in self.candidates],
                "pareto": [c.to_dict() for c in self.pareto()],
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None, "failed": dict(self.failed)}


def _measure(v: Variants, settings: QdqSettings, kept: list[str], threads: int | None) -> Candidate:
    path = v.make(settings, kept)
    try:
        agree, kl = v.score(path)
        sess = ort_session(path, threads)
        name, x = sess.get_inputs()[0].name, v.xs[0]
        latency = time_callable(lambda: sess.run(None, {name: x}), warmup=2, repeats=10).median_ms
    finally:
        path.unlink(missing_ok=True)
    return Candidate(settings.method, settings.per_channel, list(kept), agree, kl, latency, settings.equalize)


def repair_int8(fp32: str | os.PathLike, calib: list[Path], control: list[Path], target: float, base: QdqSettings, work: Path,
                *, unit: str = "layer", max_float: int = 8, threads: int | None = None, progress: bool = False) -> Repair:
    """The INT8 model of ``fp32`` that reaches ``target`` agreement on ``control`` with the fewest layers in float.

    ``calib`` calibrates every candidate; ``control`` scores them (the two must not share images).
    Past ``max_float`` layers (or blocks) in float it stops and keeps the best candidate found.
    """
    v = Variants(fp32, calib, control, work, threads)

    def say(text: str) -> None:
        if progress:
            print(f"repair: {text}", file=sys.stderr)

    tried, failed = [], {}
    for method in METHODS:
        for per_channel in (False, True):
            tried.append(_measure(v, replace(base, method=method, per_channel=per_channel), [], threads))
            say(f"{method}, {'per-channel' if per_channel else 'per-tensor'}: agreement {tried[-1].agreement:.1%}")
    best = max(tried, key=lambda c: (c.agreement, -c.kl))
    settings = replace(base, method=best.method, per_channel=best.per_channel)
    if best.agreement < target:
        tried.append(_measure(v, replace(settings, equalize=True), [], threads))
        say(f"{settings.describe()}, cross-layer equalised: agreement {tried[-1].agreement:.1%}")
        if (tried[-1].agreement, -tried[-1].kl) > (best.agreement, -best.kl):  # step 3 ranks layers under the better one
            best, settings = tried[-1], replace(settings, equalize=True)
    if best.agreement < target:
        for method in NNCF_METHODS:
            try:
                tried.append(_measure(v, replace(settings, method=method, per_channel=True), [], threads))
            except Exception as e:  # noqa: BLE001 - a third-party quantizer failing on a graph leaves the other steps
                failed[method] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                say(f"{method}: failed ({failed[method]})")
                continue
            say(f"{method}: agreement {tried[-1].agreement:.1%}")
            if tried[-1].agreement >= target:
                break
    ranking = None
    if max(c.agreement for c in tried) < target:
        ranking = rank_sensitivity(v, calib, control, settings, work, unit=unit, threads=threads, progress=progress)
        kept: list[str] = []
        for u in ranking.ranking[:max_float]:
            kept = kept + u.layers
            tried.append(_measure(v, settings, kept, threads))
            say(f"{len(kept)} layer(s) in float ({u.name} added): agreement {tried[-1].agreement:.1%}")
            if tried[-1].agreement >= target:
                break
    meeting = [c for c in tried if c.agreement >= target]
    # the fewest float layers, then the closest to FP32 (latencies of one kernel mix differ only by noise)
    chosen = min(meeting, key=lambda c: (len(c.kept_float), -c.agreement, c.kl)) if meeting else max(
        tried, key=lambda c: (c.agreement, -c.kl))
    path = v.make(replace(base, method=chosen.method, per_channel=chosen.per_channel, equalize=chosen.equalized),
                  chosen.kept_float, work / "repaired.onnx")
    return Repair(target, chosen, bool(meeting), len(v.xs), v.calibration_images, tried, ranking, path, failed)
