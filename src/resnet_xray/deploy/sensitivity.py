"""Which layers INT8 hurts: the agreement gained by keeping each layer (or block) in float, measured and ranked.

The FP32 model is calibrated once (the ranges saved), then quantised again with one layer's
nodes left in float (ONNX Runtime ``nodes_to_exclude``) for each layer in turn. Each variant
runs on the same scoring images as the FP32 model; its top-1 agreement with FP32 (and the
mean KL of the softmax, which breaks ties on a few images) against the all-INT8 model's is
the layer's sensitivity. Calibration and scoring images are kept apart.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import Tolerance, compare
from ..errors import XrayError
from ..image import Skipped
from ..quiet import stdout_silenced
from .data import image_batches
from .equalize import equalize_onnx
from .graphmap import LayerGroups, group_nodes, onnx_nodes
from .nncf_onnx import NNCF_METHODS, quantize_nncf_onnx
from .onnx import OnnxInfo, inspect_onnx, ort_session
from .qdq import QdqSettings, calibration_ranges, calibration_reader, pre_process, quantize_qdq

UNITS = ("layer", "block")
_BLOCK = re.compile(r"^(layer\d+(?:\.\d+)?)\.")  # layer3.2 (torchvision), layer1 (a one-block stage)


@dataclass
class Sensitivity:
    name: str  # the layer (or block) kept in float
    layers: list[str]  # the PyTorch layers that covers
    agreement: float  # top-1 agreement with FP32 with them in float, everything else INT8
    gain: float  # agreement minus the all-INT8 model's
    kl: float  # mean KL(FP32 || variant) of the softmax

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SensitivityReport:
    unit: str  # layer | block
    images: int  # scoring images
    calibration_images: int
    int8_agreement: float  # every layer INT8
    int8_kl: float
    ranking: list[Sensitivity] = field(default_factory=list)  # most sensitive first
    settings: dict[str, Any] = field(default_factory=dict)  # method, per-channel, reduce_range of every variant

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ranking": [s.to_dict() for s in self.ranking]}


def block_of(row: str) -> str:
    """The residual block (``layer3.2``) a row lies in; the stem (``conv1``, ``maxpool``) and head (``avgpool``, ``fc``) apart."""
    m = _BLOCK.match(row)
    if m:
        return m.group(1)
    return "stem" if row in ("conv1", "maxpool") or row.startswith("bn1") else "head"


def units_of(groups: LayerGroups, unit: str) -> dict[str, list[str]]:
    """Unit name -> the rows it keeps in float: each conv/fc row alone, or every row of a block."""
    rows = [r for r in groups.order if groups.kind[r] in ("conv", "fc")]
    if unit == "layer":
        return {r: [r] for r in rows}
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(block_of(r), []).append(r)
    return out


class Variants:
    """One FP32 model with its calibration and scoring images: INT8 variants of it, made and scored on demand.

    The model is pre-processed once and calibrated once per method (the ranges saved), so each
    variant costs one ``quantize_static`` over saved ranges and one pass over the scoring images.
    """

    def __init__(self, fp32: str | os.PathLike, calib: list[Path], score: list[Path], work: Path, threads: int | None = None):
        shared = {Path(f).resolve() for f in calib} & {Path(f).resolve() for f in score}
        if shared:
            raise XrayError(f"{len(shared)} image(s) (e.g. {sorted(shared)[0]}) are both calibration and scoring images; "
                            "a choice scored on its own calibration images peeks: give separate folders")
        import onnx

        self.info, self.calib, self.work, self.threads = inspect_onnx(fp32), calib, work, threads
        with stdout_silenced():  # ORT's calibrators print their settings on stdout
            self.prep = pre_process(self.info.path, work / "preprocessed.onnx")
        self.groups = group_nodes(onnx_nodes(onnx.load(str(self.prep), load_external_data=False)))
        self.xs = load_arrays(score, self.info, "scoring")
        self.reference = logits_of(self.info.path, self.xs, threads)
        self._ranges: dict[tuple[str, str, bool], Path] = {}
        self._equalized: Path | None = None
        self.calibration_images = 0
        self._made = 0

    def source(self, settings: QdqSettings) -> Path:
        """The pre-processed FP32 graph these settings quantise: as it is, or cross-layer equalised (made once)."""
        if not settings.equalize:
            return self.prep
        if self._equalized is None:
            self._equalized = equalize_onnx(self.prep, self.work / "equalized.onnx")[0]
        return self._equalized

    def ranges(self, settings: QdqSettings) -> Path:
        key = (settings.method, settings.activation_type, settings.equalize)  # what the ranges depend on
        if key not in self._ranges:
            folder = self.work / f"ranges-{settings.method}-{settings.activation_type}{'-equalized' if settings.equalize else ''}"
            folder.mkdir(exist_ok=True)
            reader = calibration_reader(self.calib, self.info, settings, self.info.fixed_batch or 1)
            with stdout_silenced():
                self._ranges[key] = calibration_ranges(self.source(settings), folder, reader, settings)
            self.calibration_images = reader.used
        return self._ranges[key]

    def nodes(self, rows: list[str]) -> list[str]:
        """The pre-processed graph's nodes of these rows: what ``nodes_to_exclude`` leaves in float."""
        return [n for r in rows for n in self.groups.nodes(r)]

    def make(self, settings: QdqSettings, float_rows: list[str], out: Path | None = None) -> Path:
        self._made += 1
        out = out or self.work / f"variant-{self._made}.onnx"
        if settings.method in NNCF_METHODS:  # NNCF calibrates anew: its bias correction needs the images, not saved ranges
            self.calibration_images = self.calibration_images or len(self.calib)
            return quantize_nncf_onnx(self.source(settings), out, self.calib, self.info, settings.method, settings.reduce_range,
                                      self.nodes(float_rows))
        ranges = self.ranges(settings)
        with stdout_silenced():
            return quantize_qdq(self.source(settings), out, None, ranges, settings, self.nodes(float_rows))

    def score(self, path: Path) -> tuple[float, float]:
        """(top-1 agreement, mean KL) with the FP32 model on the scoring images."""
        eq = compare(self.reference, logits_of(path, self.xs, self.threads), tolerance=Tolerance.reduced_precision(0.0),
                     names=("fp32", path.name))
        return eq.top1_agreement, eq.kl

    def trial(self, settings: QdqSettings, float_rows: list[str]) -> tuple[float, float]:
        """Make, score and remove one variant."""
        path = self.make(settings, float_rows)
        try:
            return self.score(path)
        finally:
            path.unlink(missing_ok=True)


def load_arrays(files: list[Path], info: OnnxInfo, what: str) -> list[np.ndarray]:
    """One preprocessed 1xCxHxW array per readable file."""
    skipped: list[Skipped] = []
    xs = [x for _, x in image_batches(files, info.preprocessing, 1, skipped, what, False)]
    if not xs:
        raise XrayError(f"none of the {len(files)} {what} images could be read")
    return xs


def logits_of(path: Path, xs: list[np.ndarray], threads: int | None = None) -> np.ndarray:
    sess = ort_session(path, threads, spin=False)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in xs])


def rank_sensitivity(fp32: str | os.PathLike | Variants, calib: list[Path], score: list[Path], settings: QdqSettings,
                     work: Path, *, unit: str = "layer", threads: int | None = None, progress: bool = False) -> SensitivityReport:
    """Quantise ``fp32`` once per layer (or block) with that one kept in float; rank by agreement on ``score``.

    ``calib`` and ``score`` must be different images: a ranking scored on its calibration images would peek.
    ``fp32`` may be a :class:`Variants` already made (``calib`` and ``score`` are then its own).
    """
    if unit not in UNITS:
        raise XrayError(f"--sensitivity {unit}: choose one of: {', '.join(UNITS)}")
    v = fp32 if isinstance(fp32, Variants) else Variants(fp32, calib, score, work, threads)
    base_agree, base_kl = v.trial(settings, [])
    report = SensitivityReport(unit, len(v.xs), v.calibration_images, base_agree, base_kl,
                               settings={"method": settings.method, "per_channel": settings.per_channel,
                                         "reduce_range": settings.reduce_range})
    units = units_of(v.groups, unit)
    for i, (name, rows) in enumerate(units.items()):
        if progress:
            print(f"sensitivity: {i + 1}/{len(units)} {name} in float", file=sys.stderr)
        agree, kl = v.trial(settings, rows)
        report.ranking.append(Sensitivity(name, rows, agree, agree - base_agree, kl))
    report.ranking.sort(key=lambda s: (-s.agreement, s.kl))
    return report
