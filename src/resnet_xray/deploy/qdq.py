"""ONNX Runtime's static QDQ quantisation in pieces: pre-process, calibrate once, quantise as often as needed.

``quantize`` runs these once; the sensitivity ranking and the INT8 repair run :func:`quantize_qdq`
many times over one set of saved ranges, with other layers left in float each time.
Calibration images are streamed one batch at a time through the model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Skipped
from .data import image_batches
from .onnx import OnnxInfo

METHODS = ("minmax", "entropy", "percentile")
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}  # histogram searched down to 128 levels (TensorRT's split)


@dataclass(frozen=True)
class QdqSettings:
    """What one QDQ quantisation is: calibration method, per-channel weights, activation type, 7-bit weights,
    and whether the FP32 model is cross-layer equalised first (:mod:`.equalize`)."""

    method: str  # minmax | entropy | percentile
    per_channel: bool
    activation_type: str  # uint8 | int8
    reduce_range: bool
    equalize: bool = False

    @classmethod
    def of(cls, opts: Any, reduce_range: bool) -> QdqSettings:
        """From a :class:`~resnet_xray.deploy.quantize.QuantizeOptions` and the reduce_range it settled on."""
        return cls(opts.method, bool(opts.per_channel), opts.activation_type, bool(reduce_range))

    def describe(self) -> str:
        return f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'} weights" + (
            ", cross-layer equalised" if self.equalize else "")


class ImageCalibrationReader:
    """ORT ``CalibrationDataReader`` over a list of image files, streamed, never loaded at once."""

    def __init__(self, files: list[Path], info: OnnxInfo, batch: int, progress: bool):
        self.files, self.info, self.batch, self.progress = files, info, batch, progress
        self.skipped: list[Skipped] = []
        self.used = 0
        self._it: Iterator[tuple[list[Path], np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = image_batches(self.files, self.info.preprocessing, self.batch, self.skipped, "calibrate", self.progress)
        nxt = next(self._it, None)
        if nxt is None:
            return None
        self.used += len(nxt[0])
        return {self.info.input_name: nxt[1]}

    def rewind(self) -> None:
        self._it = None
        self.skipped = []
        self.used = 0


def _calibration_reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    # ORT type-checks the reader, so subclass its ABC at run time (keeps the import lazy).
    return type("ImageCalibrationDataReader", (ImageCalibrationReader, CalibrationDataReader), {})


def calibration_reader(files: list[Path], info: OnnxInfo, settings: QdqSettings, batch: int, progress: bool = False
                       ) -> ImageCalibrationReader:
    """An ORT calibration reader over ``files``, in batches the calibration method can take."""
    # ORT's histogram collectors (entropy, percentile) stack every batch's outputs into one
    # array, so a short last batch breaks them; those methods calibrate one image at a time.
    calib_batch = batch if settings.method == "minmax" or info.fixed_batch is not None else 1
    return _calibration_reader_class()(files, info, calib_batch, progress)


def pre_process(src: Path, dst: Path) -> Path:
    """ORT's ``quant_pre_process`` (shape inference and graph optimisation), the first step of every QDQ quantisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs; ONNX's own still runs
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def quantize_qdq(prep: Path, out: Path, reader: Any, ranges: Path | None, settings: QdqSettings,
                 exclude: list[str] | None = None) -> Path:
    """``quantize_static`` with ``settings``, calibrating with ``reader`` or reading ``ranges``.

    ``exclude``: node names of ``prep`` left in float (ORT ``nodes_to_exclude``).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prep),
        str(out),
        reader,
        calibration_cache_path=str(ranges) if ranges else None,
        quant_format=QuantFormat.QDQ,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=_ort_method(settings.method),
        nodes_to_exclude=list(exclude or []),
        extra_options={"ActivationSymmetric": settings.activation_type == "int8"},
    )
    return out


def _ort_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


CALIB_CHUNK = 16  # calibration batches whose activations ORT holds at once


class _Chunks:
    """A calibration reader that ends after ``size`` batches of ``reader``, then goes on where it stopped."""

    def __init__(self, reader: Any, size: int):
        self.reader, self.size, self.left = reader, size, 0
        self.ahead = reader.get_next()  # one batch read ahead: a chunk is only started when there is data for it

    def more(self) -> bool:
        self.left = self.size
        return self.ahead is not None

    def get_next(self) -> Any:
        if self.left == 0 or self.ahead is None:
            return None
        self.left -= 1
        item, self.ahead = self.ahead, self.reader.get_next()
        return item


def _coarsen(collector: Any) -> None:
    """Keep each histogram within twice its bin count by merging neighbouring bins.

    ORT widens a histogram, at its first chunk's bin width, whenever a later chunk reaches further; an activation
    spike can then grow it to millions of bins, and the entropy search over them runs for hours.
    """
    if collector is None or not getattr(collector, "histogram_dict", None):
        return
    limit = 2 * collector.num_bins
    for name, (hist, edges, *rest) in list(collector.histogram_dict.items()):
        symmetric = len(rest) == 3  # (min, max, threshold): a histogram over [-threshold, threshold]
        while len(hist) > limit and not (symmetric and len(hist) % 2):
            width = edges[1] - edges[0]
            pad = len(hist) % (4 if symmetric else 2)  # halves of two bins; a symmetric one keeps 0 an edge
            if symmetric and pad:
                hist = np.concatenate([[0], hist, [0]])
                edges = np.concatenate([[edges[0] - width], edges, [edges[-1] + width]]).astype(edges.dtype)
                rest[2] = np.asarray(edges[-1], dtype=np.asarray(rest[2]).dtype)
            elif pad:
                hist = np.append(hist, 0)
                edges = np.append(edges, edges[-1] + width).astype(edges.dtype)
            hist, edges = hist.reshape(-1, 2).sum(axis=1), edges[::2]
        collector.histogram_dict[name] = (hist, edges, *rest)


def calibration_ranges(prep: Path, workdir: Path, reader: Any, settings: QdqSettings) -> Path:
    """Calibrate once and save the ranges, so several quantisations (``quantize_qdq(ranges=...)``) share them.

    For entropy, quantize_static would build the histogram with as many bins as quantised bins (128),
    which leaves one candidate threshold: the min/max range, so "entropy" silently equals minmax.
    Calibrating here with TensorRT's histogram split avoids that.
    """
    from onnxruntime.quantization import create_calibrator, save_tensors_data

    extra = {**(ENTROPY_BINS if settings.method == "entropy" else {}), "symmetric": settings.activation_type == "int8"}
    calibrator = create_calibrator(str(prep), augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=_ort_method(settings.method),
                                   extra_options=extra)
    # ORT's calibrators hold every batch's activations of every layer until collect_data returns (256 images of a
    # ResNet-50 at 224 px ran a 24 GiB machine out of memory); fed a chunk at a time, they merge ranges and histograms
    chunk = _Chunks(reader, CALIB_CHUNK)
    while chunk.more():
        calibrator.collect_data(chunk)
        _coarsen(getattr(calibrator, "collector", None))
    ranges = workdir / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges
