"""``optimize --min-agreement``: INT8 judged against its own FP32 model, and the would-be winner repaired.

Every INT8 candidate is scored for top-1 agreement with the FP32 model it was quantised from
(the pruned one, for a pruned candidate) on the control images: never calibrated on, and never
the val images the result is reported on. Only the candidate that would win is repaired, and
only where no candidate that meets the target is as fast (:func:`~.candidates.to_repair`), so a
searched run pays for one repair at most, not one per engine and depth:

- an OpenVINO INT8 file (NNCF's, or NNCF's accuracy control) is quantised again with NNCF's
  other settings (full bias correction, the mixed preset), and where none reaches the target,
  with NNCF's accuracy control on that agreement: NNCF ranks the quantised layers and returns
  them to float in that order until the target holds (:func:`~.openvino.repair_nncf`);
- an ONNX Runtime INT8 file (or OpenVINO's reading of it) goes through
  :func:`~.quantize.quantize_from_files`: settings first, then the fewest float layers.

The repaired file is a candidate of its own, timed with all the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .openvino import qdq_to_ir, repair_nncf
from .onnx import inspect_onnx
from .quantize import quantize_from_files


@dataclass
class Repaired:
    name: str  # the repaired candidate, e.g. "pruned openvino int8 (nncf, repaired)"
    engine: str
    path: Path
    kept_float: list[str]  # PyTorch layers left in float
    detail: dict[str, Any] = field(default_factory=dict)  # method, and why each layer was kept where it was measured


@dataclass
class Inputs:
    """What a repair works from: the FP32 export of the would-be winner's model, and the images."""

    fp32_onnx: Path  # its OpenVINO IR lies beside it, with the suffix .xml
    calib: list[Path]  # calibration images (files), as the plain INT8 used
    calib_x: list[np.ndarray]  # the same, preprocessed, one image a batch
    held: list[Path]  # the val images the result is reported on
    control: list[Path]  # the images the repair chooses on
    control_x: list[np.ndarray]  # the same, preprocessed, in batches
    parent_top1: np.ndarray  # the FP32 model's top-1 on them


def repair_candidate(name: str, engine: str, prefix: str, src: Inputs, target: float, work: Path) -> Repaired:
    """A repaired INT8 file for candidate ``name`` (of ``engine``), written in ``work``."""
    tag = prefix.strip().replace(" ", "_") or "base"
    if engine == "openvino" and "(qdq)" not in name:
        fix = repair_nncf(src.fp32_onnx.with_suffix(".xml"), src.calib_x, src.control_x, src.parent_top1, target, work, tag)
        return Repaired(f"{prefix}openvino int8 (nncf, repaired)", engine, fix.path, fix.kept_float, fix.detail)
    onnx_out = work / f"{tag}.int8_repaired.onnx"
    rep = quantize_from_files(src.fp32_onnx, src.calib, src.held, onnx_out, target, control=src.control)
    detail = {"method": "calibration settings, then the fewest float layers (ONNX Runtime nodes_to_exclude)",
              "why": [{"layers": s["layers"], "gain": s["gain"]} for s in rep["sensitivity"]], "tried": rep["tried"]}
    if engine == "onnxruntime":
        return Repaired(f"{prefix}ort int8 (repaired)", engine, onnx_out, list(rep["kept_float"]), detail)
    xml = work / f"{tag}.int8_qdq_repaired.xml"
    qdq_to_ir(onnx_out, xml, inspect_onnx(onnx_out).sidecar)
    return Repaired(f"{prefix}openvino int8 (qdq, repaired)", engine, xml, list(rep["kept_float"]), detail)


__all__ = ["Inputs", "Repaired", "repair_candidate"]
