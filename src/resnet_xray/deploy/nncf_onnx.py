"""NNCF's post-training INT8 of an ONNX model, written as a QDQ file that ONNX Runtime runs.

The INT8 repair's range step: NNCF places the quantizers as its OpenVINO route does and then
corrects each layer's bias for the shift INT8 rounding puts into its mean output (fast bias
correction), which ONNX Runtime's own ``quantize_static`` cannot; optionally with activation
ranges from the mean of each image's quantiles, so a few outlying activations do not stretch them.
NNCF's full (per-layer) bias correction fails on these graphs ("Duplicate definition-site"),
so it is not offered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data import image_batches
from .onnx import OnnxInfo
from .openvino import quiet_nncf

# repair method -> NNCF's activation range estimator (None: its default, min/max)
NNCF_METHODS = {"nncf-bias-correction": None, "nncf-bias-correction-quantile": "MEAN_QUANTILE"}


class _Images:
    """The calibration images as NNCF iterates them (more than once: statistics, then bias correction)."""

    def __init__(self, files: list[Path], info: OnnxInfo):
        self.files, self.info = files, info

    def __iter__(self) -> Iterator[np.ndarray]:
        batch = self.info.fixed_batch or 1
        return (x for _, x in image_batches(self.files, self.info.preprocessing, batch, [], "calibrate", False))


def quantize_nncf_onnx(prep: Path, out: Path, calib: list[Path], info: OnnxInfo, method: str, reduce_range: bool,
                       exclude: list[str] | None = None) -> Path:
    """``prep`` (an ORT pre-processed FP32 ONNX file) quantised by NNCF with bias correction and ``method``'s ranges, to ``out``.

    Activations asymmetric (uint8) and weights symmetric per channel (int8), ONNX Runtime's fast
    x86 pairing; ``reduce_range`` keeps weights to 7 bits (NNCF's overflow fix) on CPUs without
    VNNI; ``exclude`` names nodes of ``prep`` left in float (NNCF ``ignored_scope``).
    """
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.load(str(prep))
    name = model.graph.input[0].name
    images = _Images(calib, info)
    ranges = NNCF_METHODS[method]
    extra = {"activations_range_estimator_params": getattr(RangeEstimatorParametersSet, ranges)} if ranges else {}
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE, **extra)
    with quiet_nncf():
        q = nncf.quantize(model, nncf.Dataset(images, lambda x: {name: x}), preset=nncf.QuantizationPreset.MIXED,
                          target_device=nncf.TargetDevice.CPU, subset_size=len(calib), fast_bias_correction=True,
                          ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None,
                          advanced_parameters=advanced)
    onnx.save(q, str(out))
    return out
