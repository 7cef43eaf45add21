"""OpenVINO as an engine of its own: IR export, NNCF post-training INT8, and a runner.

Two INT8 routes exist and both are kept, because which is faster depends on the CPU:
NNCF's post-training quantisation of the FP32 IR (``quantize_nncf``), and OpenVINO
reading ONNX Runtime's QDQ file (``qdq_to_ir``). ``optimize`` times both and keeps
the faster one that holds accuracy. Every IR carries the model's description in
``rt_info`` (see :mod:`.artefact`), so an ``.xml`` alone is a usable model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import temp_path, write_json
from ..compare import agreement, top1
from ..errors import XrayError, XrayWarning
from ..options import check_declared_side
from .artefact import PRECISION_KEY, merge_meta, openvino_embedded, read_sidecar, set_openvino_embedded, sidecar_path
from .graphmap import group_nodes, openvino_nodes
from .timing import time_models


def require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise XrayError("openvino is not installed; reinstall resnet-xray (pip install -e .), which pins it") from None
    return ov


def save_ir(model: Any, xml_path: Path, side: dict[str, Any]) -> Path:
    """Write ``model`` as ``.xml`` + ``.bin`` (and its sidecar) atomically, description embedded."""
    ov = require_openvino()
    set_openvino_embedded(model, side)
    tmp = temp_path(xml_path)
    tmp_bin, out_bin = tmp.with_suffix(".bin"), xml_path.with_suffix(".bin")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        # the .bin first: an .xml that is in place always has its weights beside it
        os.replace(tmp_bin, out_bin)
        os.replace(tmp, xml_path)
    except (OSError, RuntimeError) as e:
        raise XrayError(f"{xml_path}: cannot write OpenVINO IR ({str(e).splitlines()[0][:150]})") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_bin.unlink(missing_ok=True)
    write_json(sidecar_path(xml_path), side)
    return xml_path


def write_ir(onnx_path: Path, xml_path: Path, side: dict[str, Any]) -> Path:
    """Convert an ONNX file (FP32, or a QDQ INT8 one) to OpenVINO IR beside it."""
    ov = require_openvino()
    try:
        # convert_model takes a path with a comma for a list of paths: such a file goes in as bytes (the same model)
        model = ov.convert_model(io.BytesIO(Path(onnx_path).read_bytes()) if "," in str(onnx_path) else str(onnx_path))
    except Exception as e:  # noqa: BLE001 - the converter's message names the unsupported op
        raise XrayError(f"{onnx_path}: OpenVINO cannot convert it ({str(e).splitlines()[0][:150]})") from None
    return save_ir(model, xml_path, {**side, "format": "resnet-xray openvino sidecar", "openvino": ov.__version__})


@dataclass
class IrInfo:
    path: Path
    input_shape: list[int | str]
    num_classes: int | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.input_shape[2])


def inspect_ir(path: str | os.PathLike, flag: str = "") -> tuple[Any, IrInfo]:
    """Read an OpenVINO IR classifier and its validated description; one-line errors otherwise."""
    ov = require_openvino()
    p = Path(path)
    where = f"{flag} {p}".strip()
    if not p.is_file():
        raise XrayError(f"{where}: no such file")
    if not p.with_suffix(".bin").is_file():
        raise XrayError(f"{where}: its weights {p.with_suffix('.bin').name} are missing beside it")
    try:
        model = ov.Core().read_model(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an IR"
        raise XrayError(f"{where}: not an OpenVINO IR model ({str(e).splitlines()[0][:120]})") from None
    if len(model.inputs) != 1:
        raise XrayError(f"{where}: expected one image input, found {len(model.inputs)}")
    ps = model.inputs[0].get_partial_shape()
    dims: list[int | str] = [d.get_length() if d.is_static else "batch" for d in ps]
    if len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, int) and d >= 8 for d in dims[2:]) or dims[2] != dims[3]:
        raise XrayError(f"{where}: input has shape {dims}, expected a square NCHW image [N, 3, S, S]")
    check_declared_side(where, int(dims[2]))
    out_ps = model.outputs[0].get_partial_shape()
    num_classes = out_ps[-1].get_length() if out_ps.rank.is_static and out_ps[-1].is_static else None
    sidecar, side_p = read_sidecar(p)
    meta = merge_meta(openvino_embedded(model), sidecar, p, side_p, image_size=int(dims[2]), num_classes=num_classes)
    return model, IrInfo(p, dims, num_classes, meta)


# oneDNN ISA caps below AVX512_CORE_BF16: under one, OpenVINO still lists BF16 (it reads cpuid) but its bf16 kernels
# refuse to compile ("Supported primitive descriptors list is empty", measured on a Zen 5 EPYC with OpenVINO 2026.4)
BELOW_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _isa_cap() -> str:
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()


def native_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively here (avx512_bf16 or AMX, and no oneDNN ISA cap below it)."""
    if _isa_cap() in BELOW_BF16_ISAS:
        return False
    return "BF16" in require_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def no_bf16_reason() -> str:
    """Why OpenVINO does not compute bf16 here, for messages."""
    cap = _isa_cap()
    if cap in BELOW_BF16_ISAS:
        return f"ONEDNN_MAX_CPU_ISA={cap} holds the kernels below bf16"
    return "this CPU has no native bf16 (avx512_bf16 or AMX)"


def compiled_precision(compiled: Any) -> str:
    """The precision OpenVINO compiled for, read back (``bf16``, ``f32``): what a row is labelled with, never what was asked."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())


def compile_cpu(model: Any, threads: int | None = None, batch: int | None = None, *, perf_count: bool = False,
                precision: str = "f32", hint: str = "LATENCY"):
    """A compiled CPU model: the ``hint`` (LATENCY or THROUGHPUT), float layers in ``precision``.

    ``f32`` is asked for explicitly, so a CPU with AVX-512 BF16 does not silently run bf16.
    ``perf_count``: keep per-node counters (``request.get_profiling_info()``), for ``layers``.
    """
    ov = require_openvino()
    if batch is not None:
        shape = list(model.inputs[0].get_partial_shape())
        model.reshape({model.inputs[0].get_any_name(): [batch, *[d.get_length() for d in shape[1:]]]})
    if precision == "bf16" and not native_bf16():  # f32 is what would run; under an ISA cap, a bf16 hint fails to compile
        precision = "f32"
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if perf_count:
        config["PERF_COUNT"] = True
    return ov.Core().compile_model(model, "CPU", config)


class PrecisionWarning(XrayWarning):
    """A file asked for bf16 and this CPU runs it in f32."""


def asked_precision(meta: dict[str, Any]) -> str:
    """The float arithmetic an IR's description asks for (``f32`` unless it says ``bf16``)."""
    return str(meta.get(PRECISION_KEY) or "f32")


def check_granted(compiled: Any, asked: str, where: str) -> str:
    """The precision OpenVINO compiled in; a warning naming the file when it is not what the file asked for."""
    ran = compiled_precision(compiled)
    if ran != asked:
        warnings.warn(f"{where}: asks for {asked} arithmetic; {no_bf16_reason()}, so OpenVINO runs it in {ran}",
                      PrecisionWarning, stacklevel=3)
    return ran


def open_ir(path: str | os.PathLike, threads: int | None = None, batch: int | None = 1) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A function NCHW float32 -> logits over an IR file, and the precision it runs in (what OpenVINO granted).

    Batches of any size go through one image at a time when the batch is fixed.
    """
    model, info = inspect_ir(path)
    asked = asked_precision(info.meta)
    compiled = compile_cpu(model, threads, batch, precision=asked)
    ran = check_granted(compiled, asked, str(path))
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if batch is None or x.shape[0] == batch:
            return np.array(request.infer({0: x})[0])
        return np.concatenate([np.array(request.infer({0: x[i : i + 1]})[0]) for i in range(x.shape[0])])

    return run, ran


def openvino_runner(path: str | os.PathLike, threads: int | None = None, batch: int | None = 1) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`open_ir`'s runner alone."""
    return open_ir(path, threads, batch)[0]


def bf16_path(xml: Path) -> Path:
    """Where the copy of an IR that asks for bf16 lies: beside it, ``model.bf16.xml``."""
    return xml.with_name(xml.name.replace(".xml", ".bf16.xml"))


def with_precision(xml: Path, out_xml: Path, precision: str) -> Path:
    """A copy of an IR whose description asks OpenVINO for ``precision`` in its float layers."""
    model, info = inspect_ir(xml)
    return save_ir(model, out_xml, {**info.meta, PRECISION_KEY: precision})


@contextlib.contextmanager
def quiet_nncf() -> Any:
    """NNCF logs its progress on stdout through ``logging`` and rich bars; keep stdout for results."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(_Stderr()):
            yield
    finally:
        logger.setLevel(level)


class _Stderr:
    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


@dataclass
class NncfResult:
    path: Path
    fp32_layers: list[str]  # PyTorch layers left in FP32 (accuracy control, or ignored by choice)
    method: str


def quantize_nncf(
    fp32_xml: Path,
    calib: list[np.ndarray],
    out_xml: Path,
    *,
    val: tuple[list[np.ndarray], np.ndarray] | None = None,
    max_drop: float | None = None,
    fast_bias_correction: bool = True,
    preset: str = "performance",
    metric: str = "top-1 accuracy",
    max_float_layers: int | None = None,
) -> NncfResult:
    """NNCF post-training INT8 of an FP32 IR; with ``val``+``max_drop``, accuracy-aware (mixed precision).

    Args:
        fp32_xml: the FP32 IR (from export).
        calib: preprocessed NCHW calibration batches.
        out_xml: the INT8 IR to write (sidecar copied from the FP32 one, plus the method).
        val: (batches, labels) for accuracy control. With the FP32 model's own top-1 as the
            labels, the metric is top-1 agreement with it (``optimize --min-agreement``).
        max_drop: absolute drop of the metric allowed (a fraction, 0.01 = 1 point): NNCF then
            returns the most sensitive layers to FP32 one by one until the drop is within it.
        fast_bias_correction, preset: NNCF's PTQ settings (``performance`` or ``mixed`` preset).
        metric: what the labels make of the metric, for the method recorded in the sidecar.
        max_float_layers: stop accuracy control after returning this many layers to FP32.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    model, info = inspect_ir(fp32_xml)
    calib_ds = nncf.Dataset(list(calib))
    ptq = {"preset": {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[preset],
           "subset_size": min(300, sum(len(c) for c in calib)), "fast_bias_correction": fast_bias_correction}
    settings = f"{preset} preset, {'fast' if fast_bias_correction else 'full'} bias correction"
    with quiet_nncf():
        if val is None or max_drop is None:
            q = nncf.quantize(model, calib_ds, **ptq)
            method = f"nncf.quantize (PTQ, {settings})"
        else:
            xs, ys = val
            # one image per item: exported IRs have a fixed batch of 1
            val_items = [(x[i : i + 1], y[i : i + 1]) for x, y in zip(xs, _split_labels(xs, ys)) for i in range(len(x))]

            val_ds = nncf.Dataset(val_items, lambda item: item[0])
            restorer = AdvancedAccuracyRestorerParameters(**({"max_num_iterations": max_float_layers} if max_float_layers else {}))
            q = nncf.quantize_with_accuracy_control(
                model, calib_ds, val_ds, _top1_hits, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=restorer, **ptq)
            method = f"nncf.quantize_with_accuracy_control ({metric}, max drop {max_drop:.3f}, {settings})"
    fp32 = fp32_layers(q)
    side = {**info.meta, "quantization": {"engine": "openvino", "method": method, "fp32_layers": fp32}}
    save_ir(q, out_xml, side)
    return NncfResult(out_xml, fp32, method)


# NNCF's own settings, tried before any layer goes back to float: settings first, then layers.
NNCF_SETTINGS = (("full bias correction", {"fast_bias_correction": False}), ("mixed preset", {"preset": "mixed"}))
# At most this many layers back to float: past it INT8 has little speed left over FP32, and on near-tie flips
# NNCF's accuracy control returned 33 of 53 convolutions to reach 99.5% (docs/deploy.md).
MAX_FLOAT_LAYERS = 8


@dataclass
class NncfRepair:
    path: Path
    kept_float: list[str]  # PyTorch layers left in float
    agreement: float  # top-1 agreement with the FP32 model on the control images
    detail: dict[str, Any]  # method, each setting tried with its agreement, and why


def repair_nncf(fp32_xml: Path, calib: list[np.ndarray], control: list[np.ndarray], parent_top1: np.ndarray, target: float,
                work: Path, tag: str) -> NncfRepair:
    """NNCF INT8 of ``fp32_xml`` that agrees with it on ``target`` of the control images' top-1, or the closest tried.

    NNCF's other settings first (:data:`NNCF_SETTINGS`); then its accuracy control with that
    agreement as the metric, returning at most :data:`MAX_FLOAT_LAYERS` layers to float.
    """
    def agrees(path: Path) -> float:
        return agreement(top1(openvino_runner(path), control), parent_top1)

    tried = []
    for label, kw in NNCF_SETTINGS:
        res = quantize_nncf(fp32_xml, calib, work / f"{tag}.int8_nncf_{label.replace(' ', '_')}.xml", **kw)
        got = agrees(res.path)
        tried.append({"setting": label, "control_agreement": got})
        if got >= target:
            return NncfRepair(res.path, [], got, {"method": res.method, "tried": tried,
                                                  "why": f"{label} reached the target with every layer in INT8"})
    res = quantize_nncf(fp32_xml, calib, work / f"{tag}.int8_repaired.xml", val=(control, parent_top1), max_drop=1.0 - target,
                        metric="top-1 agreement with the FP32 model", max_float_layers=MAX_FLOAT_LAYERS)
    why = ("no NNCF setting reached the target; NNCF accuracy control ranked every quantised layer by the agreement on "
           f"the control images with it in float, and returned them to float in that order (at most {MAX_FLOAT_LAYERS})")
    return NncfRepair(res.path, res.fp32_layers, agrees(res.path), {"method": res.method, "tried": tried, "why": why})


def float_layers_in(path: Path, asked: str, control: list[np.ndarray], parent_top1: np.ndarray, target: float) -> tuple[Path, dict[str, Any]]:
    """The repaired IR at ``path`` with its float layers in the arithmetic ``asked`` for (auto | f32 | bf16).

    ``auto`` takes bf16 only where this CPU computes it natively, the copy still agrees with the FP32
    model on ``target`` of the control images, and it runs faster than f32 float layers here.
    Returns the file and what was measured.
    """
    if asked == "f32" or (asked == "auto" and not native_bf16()):
        why = "asked for f32" if asked == "f32" else no_bf16_reason()
        return path, {"precision": "f32", "why": why}
    bf16 = with_precision(path, bf16_path(path), "bf16")
    if asked == "bf16":
        return bf16, {"precision": "bf16", "why": "asked for bf16"}
    runs = {p: open_ir(f)[0] for p, f in (("f32", path), ("bf16", bf16))}
    got = agreement(top1(runs["bf16"], control), parent_top1)
    x = control[0][:1]
    ms = {p: s.median_ms for p, s in time_models({p: (lambda r=r: r(x)) for p, r in runs.items()}, warmup=3, repeats=20,
                                                  rounds=4).items()}
    keep = got >= target and ms["bf16"] < ms["f32"]
    why = (f"bf16 float layers agree on {got:.1%} of the control images and run {ms['f32'] / ms['bf16']:.2f}x f32's speed"
           + ("" if keep else (": under the target, so f32" if got < target else ": no faster, so f32")))
    return (bf16 if keep else path), {"precision": "bf16" if keep else "f32", "why": why, "bf16_control_agreement": got,
                                      "latency_ms": ms}


def _top1_hits(compiled: Any, items: Iterable[Any]) -> float:
    """Accuracy control's metric: the share of items whose top-1 is their label."""
    hits = total = 0
    for x, y in items:
        z = np.array(compiled(x)[0])
        hits += int((z.argmax(1) == y).sum())
        total += len(y)
    return hits / max(1, total)


def _split_labels(xs: list[np.ndarray], ys: np.ndarray) -> list[np.ndarray]:
    out, i = [], 0
    for x in xs:
        out.append(ys[i : i + len(x)])
        i += len(x)
    return out


def fp32_layers(model: Any) -> list[str]:
    """Convolutions and MatMuls whose weights are not quantised, as the PyTorch layers they compute, in network order."""
    ov = require_openvino()
    low = (ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4)
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "MatMul", "GroupConvolution"):
            continue
        w = op.input_value(1).get_node()
        seen, quantised = 0, False
        while w is not None and seen < 6:  # walk back over Convert/Multiply/Subtract to a FakeQuantize or int8 constant
            t = w.get_type_name()
            if t == "FakeQuantize" or (t == "Constant" and w.get_element_type() in low):
                quantised = True
                break
            if w.get_input_size() == 0:
                break
            w = w.input_value(0).get_node()
            seen += 1
        if not quantised:
            names.append(op.get_friendly_name())
    if not names:
        return []
    row = group_nodes(openvino_nodes(model)).row  # OpenVINO's op names -> the PyTorch layer each computes
    return list(dict.fromkeys(row.get(n, n) for n in names))


def qdq_to_ir(qdq_onnx: Path, out_xml: Path, side: dict[str, Any]) -> Path:
    """OpenVINO reading ONNX Runtime's QDQ file: the second INT8 route."""
    return write_ir(qdq_onnx, out_xml, {**side, "quantization": {**side.get("quantization", {}), "engine": "openvino",
                                                                   "method": "OpenVINO on the ORT QDQ model"}})
