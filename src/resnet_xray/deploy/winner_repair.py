"""``optimize --min-agreement``: INT8 judged against its own FP32 model, and the would-be winner repaired.

Every INT8 candidate is scored for top-1 agreement with the FP32 model it was quantised from
(the pruned one, for a pruned candidate) on the control images: never calibrated on, and never
the val images the result is reported on. Only the candidate that would win is repaired, so a
searched run pays for one repair, not one per engine and depth:

- an OpenVINO INT8 file (NNCF's, or NNCF's accuracy control) is quantised again with NNCF's
  accuracy control, its metric being that agreement: NNCF ranks the quantised layers by how far
  each moves the outputs and returns them to float, most sensitive first, until the target holds;
- an ONNX Runtime INT8 file (or OpenVINO's reading of it) goes through
  :func:`~.quantize.quantize_from_files`: settings first, then the fewest float layers.

The repaired file is a candidate of its own, timed with all the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import as_logits
from .graphmap import group_nodes, openvino_nodes
from .openvino import inspect_ir, qdq_to_ir, quantize_nncf
from .onnx import inspect_onnx
from .quantize import quantize_from_files


def top1(run: Callable[[np.ndarray], Any], xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([as_logits(run(x)).argmax(1) for x in xs])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


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
        out = work / f"{tag}.int8_repaired.xml"
        res = quantize_nncf(src.fp32_onnx.with_suffix(".xml"), src.calib_x, out, val=(src.control_x, src.parent_top1),
                            max_drop=1.0 - target, metric="top-1 agreement with the FP32 model")
        kept = pytorch_layers(out, res.fp32_layers)
        why = ("NNCF accuracy control ranked every quantised layer by how far its INT8 moved the outputs on the "
               "control images, and returned them to float most sensitive first until the target held")
        return Repaired(f"{prefix}openvino int8 (nncf, repaired)", engine, out, kept,
                        {"method": res.method, "why": why if kept else "the target held without a float layer"})
    onnx_out = work / f"{tag}.int8_repaired.onnx"
    rep = quantize_from_files(src.fp32_onnx, src.calib, src.held, onnx_out, target, control=src.control)
    detail = {"method": "calibration settings, then the fewest float layers (ONNX Runtime nodes_to_exclude)",
              "why": [{"layers": s["layers"], "gain": s["gain"]} for s in rep["sensitivity"]], "tried": rep["tried"]}
    if engine == "onnxruntime":
        return Repaired(f"{prefix}ort int8 (repaired)", engine, onnx_out, list(rep["kept_float"]), detail)
    xml = work / f"{tag}.int8_qdq_repaired.xml"
    qdq_to_ir(onnx_out, xml, inspect_onnx(onnx_out).sidecar)
    return Repaired(f"{prefix}openvino int8 (qdq, repaired)", engine, xml, list(rep["kept_float"]), detail)


def pytorch_layers(xml: Path, engine_names: list[str]) -> list[str]:
    """OpenVINO op names (NNCF's float layers) as the PyTorch layers they compute, in network order."""
    model, _ = inspect_ir(xml)
    groups = group_nodes(openvino_nodes(model))
    wanted = {groups.row.get(n, n) for n in engine_names}
    return [r for r in groups.order if r in wanted] + sorted(wanted - set(groups.order))


__all__ = ["Inputs", "Repaired", "agreement", "repair_candidate", "top1"]
