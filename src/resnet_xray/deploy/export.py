"""What ``export`` returns, and the export job: ONNX (and OpenVINO IR) checked against eager, optionally a TensorRT engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import XrayError
from ..locks import file_lock
from ..model import LoadedModel
from ..provenance import WeightsInfo
from .onnx import ExportFailed, ExportOptions, export_checked
from . import tensorrt


@dataclass
class ExportResult:
    output: Path | None  # None when a check failed: nothing that diverges stays on disk
    check: dict[str, Any]  # ONNX Runtime vs eager: max_abs_diff, top1/top5 agreement, tolerance, passed, skipped
    weights: WeightsInfo
    engine: Path | None = None  # a TensorRT engine, when asked for
    openvino: Path | None = None  # the OpenVINO IR written beside the .onnx
    check_openvino: dict[str, Any] | None = None  # OpenVINO vs eager, the same measure
    check_tensorrt: dict[str, Any] | None = None  # TensorRT vs eager, the same measure (a failed engine is removed)

    @property
    def failed(self) -> list[tuple[str, dict[str, Any]]]:
        checks = [("ONNX Runtime", self.check), ("OpenVINO", self.check_openvino), ("TensorRT", self.check_tensorrt)]
        return [(name, r) for name, r in checks if r is not None and not r.get("passed")]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        doc = {"output": str(self.output) if self.output else None, "openvino": str(self.openvino) if self.openvino else None,
               "engine": str(self.engine) if self.engine else None, "check": self.check, "weights": self.weights.to_dict()}
        if self.check_openvino is not None:
            doc["check_openvino"] = self.check_openvino
        if self.check_tensorrt is not None:
            doc["check_tensorrt"] = self.check_tensorrt
        return doc


def export_model(m: LoadedModel, output: str | os.PathLike, opts: ExportOptions, check: list[str | os.PathLike],
                 tensorrt: str | None = None, calib: str | os.PathLike | None = None) -> ExportResult:
    """Export ``m`` to ``output`` under its lock; each file is checked before it replaces an earlier one."""
    if tensorrt and opts.cam_output:  # the engine runner binds one output
        raise XrayError("--cam-output: not with --tensorrt; build the engine from an export without the cam output")
    try:
        with file_lock(output, "-o"):
            path, rep, rep_ov = export_checked(m.module, output, opts, m.meta, check)
            res = ExportResult(path, rep, m.weights, None, path.with_suffix(".xml") if opts.openvino else None, rep_ov)
            if tensorrt:
                res.engine, res.check_tensorrt = tensorrt_engine(path, m.module, tensorrt, calib, check)
    except ExportFailed as e:
        return ExportResult(None, e.check, m.weights, None, None, e.check_openvino)
    return res


def tensorrt_engine(onnx_path: Path, module: Any, precision: str, calib: str | os.PathLike | None,
                    check: list[str | os.PathLike]) -> tuple[Path | None, dict[str, Any]]:
    """Build a TensorRT engine from the checked ONNX file and check it against eager PyTorch.

    An engine that fails its check (or whose check cannot run) is removed: (None, the check).
    """
    engine = tensorrt.build_engine(onnx_path, onnx_path.with_suffix(f".{precision}.engine"), tensorrt.TensorRTOptions(precision, calib))
    try:
        rep = tensorrt.check_engine(engine, onnx_path, module, check)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise
    if not rep["passed"]:
        engine.unlink(missing_ok=True)
        return None, rep
    return engine, rep
