"""Static INT8 post-training quantisation with ONNX Runtime (QDQ), calibrated on real images.

The known traps are handled here rather than left to the user:
ORT's ``quant_pre_process`` (shape inference + graph optimisation) runs first;
the format is QDQ, which every modern runtime (ORT, OpenVINO, TensorRT) reads;
and on x86 CPUs without VNNI, U8S8 matrix products go through ``vpmaddubsw``,
whose 16-bit intermediate sums can saturate, so weights are then quantised to
7 bits (``reduce_range``). Calibration images are streamed one batch at a time
through the model's own preprocessing (from the export sidecar).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import StagedFiles, remove_stale_dirs, write_json
from ..compare import Tolerance, compare, top1
from ..errors import XrayError
from ..image import Skipped
from ..locks import file_lock
from ..quiet import stdout_silenced
from ..options import at_least, batch_fits, one_of, option, within
from ..provenance import WeightsInfo
from .artefact import FLOAT_PRECISIONS, PRECISION_KEY, artefact_bytes, set_onnx_embedded
from .data import folder_labels, image_batches, list_images, split_holdout, spread
from .onnx import OnnxInfo, check_writable, inspect_onnx, ort_runner, sidecar_path
from .openvino import float_layers_in, openvino_runner, quantize_nncf, repair_nncf, write_ir
from .qdq import METHODS, QdqSettings, calibration_ranges, calibration_reader, pre_process, quantize_qdq
from .repair import Repair, repair_int8
from .timing import time_models
from .torch_int8 import quantize_torch_fx

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


# Control images the repair chooses on, at most: enough to see a 0.5% flip rate a few times over.
CONTROL_IMAGES = 512


@dataclass
class QuantizeOptions:
    # Percentile clips activation outliers that minmax spends its range on, without entropy's
    # over-clipping: reference ResNet-50 top-1 agreement 99.2%, minmax 99.0%, entropy 96.0%.
    method: str = option("percentile", "calibration: minmax | entropy | percentile (ORT CalibrationMethod)")
    per_channel: bool = option(False, "one scale per output channel of each weight; usually more faithful")
    reduce_range: bool | None = option(None, "7-bit weights against U8S8 saturation; auto: on exactly when the CPU lacks VNNI")
    activation_type: str = option("uint8", "U8S8 (uint8 activations, int8 weights): ORT's fast x86 pairing")
    # ORT's histogram calibrators hold every image's activations: all 1,600 reference images at 224 px ran a
    # 24 GiB machine out of memory, and a few hundred images calibrate as well
    max_calib_images: int | None = option(256, "use at most this many calibration images, spread over the folder")
    holdout_every: int = option(5, "every k-th image of --calib is held out for the agreement check; 0: none held out")
    eval_dir: str | None = option(None, "separate held-out folder for the agreement check (default: every 5th --calib image)")
    # the repair ranks settings and layers by the images they flip: a few dozen calibration images of a decent
    # model flip none, so nothing gets ranked; a folder drawn like the held-out one gives it flips to work on
    control_dir: str | None = option(None, "images the INT8 repair chooses on, drawn like the held-out ones, e.g. make-dataset "
                                     "--seed 1's val/ (default: every 4th calibration image)")
    batch_size: int = option(8, "images per calibration/evaluation forward (only with a dynamic batch)")
    progress: bool = option(True, "progress bars on stderr")
    # INT8 moves logits by design; what must hold is the decision. Below this top-1 agreement with
    # FP32 on the held-out images INT8 repairs itself towards it; still below, the INT8 model is not
    # written and the command exits 1.
    min_agreement: float = option(0.995, "top-1 agreement with FP32 to reach on the held-out images: below it INT8 repairs "
                                         "itself (ort: settings, then the most sensitive layers in float; openvino: NNCF "
                                         "accuracy control on that agreement); still below, nothing is written and exit 1")
    engine: str = option("ort", "ort: ONNX Runtime QDQ .onnx; openvino: NNCF post-training INT8 .xml (often faster on CPUs)")
    # on CPUs with native bf16 the layers a repair returns to float can run in bf16 at about twice f32's speed
    float_layers: str = option("auto", "arithmetic of the layers the openvino repair keeps in float: auto (bf16 where this CPU "
                                       "has it natively, the target still holds on the control images and it is faster; "
                                       "else f32) | f32 | bf16")
    time_check: bool = option(True, "time FP32 against INT8 on this CPU")
    # optimize judges every INT8 model by its own val accuracy against --max-drop, so it keeps a repair that fell
    # short of min_agreement (and records it as such); only a non-finite model is never written
    keep_below_target: bool = False

    def __post_init__(self) -> None:
        one_of("method", self.method, METHODS)
        one_of("activation_type", self.activation_type, ("uint8", "int8"))
        one_of("engine", self.engine, ("ort", "openvino"))
        one_of("float_layers", self.float_layers, ("auto",) + FLOAT_PRECISIONS)
        at_least("max_calib_images", self.max_calib_images, 1, allow_none=True)
        within("min_agreement", self.min_agreement, 0.0, 1.0)
        if self.holdout_every != 0:  # 0 is "hold none out" (optimize scores on its own val split)
            at_least("holdout_every", self.holdout_every, 2)
        batch_fits("batch_size", self.batch_size, None)


@dataclass
class CpuInt8Support:
    vnni: bool  # VNNI (or AMX-INT8) present: U8S8 products are exact, no reduce_range needed
    flags: list[str]  # the VNNI-related flags found
    source: str  # where this came from

    def note(self) -> str:
        if self.vnni:
            return f"CPU has VNNI ({', '.join(self.flags)}): U8S8 products cannot saturate, full 8-bit weights"
        return (
            f"CPU lacks VNNI ({self.source}): U8S8 products can saturate in 16 bits, so weights are "
            "quantised with reduce_range (7 bits)"
        )


def detect_cpu_int8() -> CpuInt8Support:
    """Read VNNI support from /proc/cpuinfo (Linux); elsewhere assume none, the safe choice."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInt8Support(False, [], f"no /proc/cpuinfo on {platform.system()}; assumed absent")
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    found = [f for f in VNNI_FLAGS if f in flags]
    return CpuInt8Support(bool(found), found, "/proc/cpuinfo flags")


def agreement(
    runners: dict[str, Any], files: list[Path], info: OnnxInfo, batch: int, progress: bool, labels: dict[Path, int] | None = None,
    min_agreement: float = 0.0,
) -> dict[str, Any]:
    """Run the FP32 reference (first runner) and each other runner on the same images.

    Each runner maps an NCHW float32 array to logits. Returns per-runner top-1 agreement,
    top-5 overlap and mean KL(FP32 || runner) of the softmax, plus accuracy when labelled.
    """
    names = list(runners)
    logits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    seen: list[Path] = []
    skipped: list[Skipped] = []
    for paths, x in image_batches(files, info.preprocessing, batch, skipped, "evaluate", progress):
        seen.extend(paths)
        for n in names:
            logits[n].append(np.asarray(runners[n](x), dtype=np.float32))
    if not seen:
        raise XrayError("no readable images left for the agreement check")
    cat = {n: np.concatenate(v) for n, v in logits.items()}
    ref_name = names[0]
    ref = cat[ref_name]
    out: dict[str, Any] = {"images": len(seen), "reference": ref_name, "skipped": [asdict(s) for s in skipped], "paths": {}}
    y = np.array([labels[p] for p in seen]) if labels is not None else None
    for n in names:
        z = cat[n]
        check = compare(ref, z, tolerance=Tolerance.reduced_precision(min_agreement), names=(ref_name, n)).to_dict()
        # kl from the check's dict: null, not NaN, when an output is not finite
        row = {"top1_agreement": check["top1_agreement"], "top5_overlap": check["top5_overlap"], "mean_kl": check["kl"]}
        if y is not None:
            row["accuracy"] = float((z.argmax(1) == y).mean())
        if n != ref_name:
            row["check"] = check
        out["paths"][n] = row
    out["passed"] = all(r.get("check", {}).get("passed", True) for r in out["paths"].values())
    return out


@dataclass
class _Plan:
    """What one quantisation run works from, settled before any work: files, splits and choices."""

    info: OnnxInfo  # the FP32 model
    out: Path
    calib_root: Path
    calib: list[Path]  # images to calibrate on
    eval_root: Path
    held: list[Path]  # held-out images for the agreement check (empty: too few to hold any out)
    cpu: CpuInt8Support
    reduce_range: bool
    batch: int  # images per forward
    control: list[Path] = field(default_factory=list)  # what the repair chooses on, from control_dir (empty: split calib)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    calib_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    options: QuantizeOptions | None = None,
    *,
    torch_model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Quantise an FP32 ONNX classifier to INT8 (QDQ) and measure how faithful it is.

    Args:
        fp32_path: the FP32 ONNX model (its ``.json`` sidecar supplies the preprocessing).
        calib_dir: folder of calibration images (ImageFolder-labelled folders also give accuracy).
        out_path: where the INT8 model goes; written atomically, with a ``.json`` sidecar
            recording every choice made and this report.
        options: method, per-channel, reduce_range, held-out share.
        torch_model: when given, the PyTorch FX INT8 route is built from the same calibration
            images and reported beside ORT's, for comparison.

    Returns:
        The report: sizes, choices (with the CPU's VNNI support), calibration images used and
        skipped, agreement with FP32 on held-out images, accuracy when labelled.
    """
    opts = options or QuantizeOptions()
    with file_lock(out_path, "-o"):  # one writer per output
        return _quantize_locked(fp32_path, calib_dir, out_path, opts, torch_model)


WORKDIR_PREFIX = ".quantize-"  # beside -o: .quantize-<pid>-<random>, so a later run can tell a killed run's folder


def _quantize_locked(fp32_path: str | os.PathLike, calib_dir: str | os.PathLike, out_path: str | os.PathLike,
                     opts: QuantizeOptions, torch_model: torch.nn.Module | None) -> dict[str, Any]:
    remove_stale_dirs(Path(out_path).parent, WORKDIR_PREFIX)  # left by runs killed outright (SIGKILL, power loss)
    plan = _plan(fp32_path, calib_dir, out_path, opts)
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=plan.out.parent))
    try:
        if opts.engine == "openvino":
            tmp_out, calib_used, calib_skipped, fp32_ir = _quantize_openvino(plan.info, plan.calib, workdir, opts, plan.calib_root)
        else:
            tmp_out, calib_used, calib_skipped = _quantize_ort(plan, workdir, opts)
            fp32_ir = None
        runners, torch_report = _runners(plan, tmp_out, fp32_ir, opts, torch_model)
        eval_files = plan.held or plan.calib
        labels_list, label_note = folder_labels(eval_files, plan.eval_root, plan.info.class_names, _num_classes(plan.info))
        labels = dict(zip(eval_files, labels_list)) if labels_list else None
        agree = agreement(runners, eval_files, plan.info, plan.batch, opts.progress, labels, opts.min_agreement)
        fixed = None if agree["passed"] else _repaired(plan, opts, workdir, fp32_ir)
        if fixed is not None:  # below the target: the repaired model, scored afresh on the held-out images
            tmp_out = fixed.path
            runners, torch_report = _runners(plan, tmp_out, fp32_ir, opts, torch_model)
            agree = agreement(runners, eval_files, plan.info, plan.batch, opts.progress, labels, opts.min_agreement)
        speed = _time_fp32_int8(runners, plan.info, plan.batch) if opts.time_check else None
        report = _report(plan, opts, tmp_out, calib_used, calib_skipped, agree, speed,
                         label_note if labels is None else f"ImageFolder: {label_note}")
        report["kept_float"] = list(fixed.kept_float) if fixed is not None else []  # PyTorch layer names
        if fixed is not None:
            report["choices"].update(fixed.choices)
        if torch_report:
            report["torch_int8"] = torch_report
        finite = all(r.get("check", {}).get("finite", True) for r in agree["paths"].values())
        if not agree["passed"] and not (opts.keep_below_target and finite):
            report["int8_model"] = None  # a model that fails its check is not written
            return report
        _publish(tmp_out, plan, opts.engine, report)
    except OSError as e:
        raise XrayError(f"cannot write {plan.out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def quantize_from_files(fp32: Path, calib: list[Path], held: list[Path], out: Path, target: float,
                        control: list[Path] | None = None) -> dict[str, Any]:
    """ORT QDQ INT8 of ``fp32`` from lists of images, repaired towards ``target`` top-1 agreement with it (optimize's route).

    The repair chooses on ``control`` (default: a split of ``calib``) and is scored on ``held`` (the val images), so
    no choice sees the images it is judged on. Returns what it kept in float, and each kept layer's measured gain.
    """
    remove_stale_dirs(out.parent, ".calib-")  # a killed run's links
    with tempfile.TemporaryDirectory(prefix=f".calib-{os.getpid()}-", dir=out.parent) as tmp:
        for sub, files in (("calib", calib), ("held", held), ("control", control or [])):
            (Path(tmp) / sub).mkdir()
            for i, f in enumerate(files):
                os.symlink(f.resolve(), Path(tmp) / sub / f"{i:05d}{f.suffix}")
        rep = quantize_onnx(fp32, Path(tmp) / "calib", out, QuantizeOptions(
            per_channel=True, eval_dir=str(Path(tmp) / "held") if held and target else None, holdout_every=0, progress=False,
            time_check=False, min_agreement=target, keep_below_target=True,
            control_dir=str(Path(tmp) / "control") if control and target else None))
    if rep["int8_model"] is None:
        raise XrayError(f"{fp32}: ONNX Runtime INT8 gave non-finite outputs")
    repair, kept = rep["choices"].get("repair") or {}, rep["kept_float"]
    gains = [s for s in (repair.get("sensitivity") or {}).get("ranking", []) if set(s["layers"]) <= set(kept)]
    return {"target": target, "reached": rep["passed"], "kept_float": kept, "sensitivity": gains,
            "agreement": next(r["top1_agreement"] for r in rep["agreement"]["paths"].values() if "check" in r),
            "chosen_on_images": repair.get("control_images"), "tried": len(repair.get("candidates", []))}


@dataclass
class _Fixed:
    """A repaired INT8 model: its file, the layers it keeps in float, and what the report's choices gain."""

    path: Path
    kept_float: list[str]
    choices: dict[str, Any]


def _repaired(plan: _Plan, opts: QuantizeOptions, workdir: Path, fp32_ir: Path | None) -> _Fixed | None:
    if opts.engine == "openvino":
        return _repair_nncf(plan, opts, workdir, fp32_ir)
    r = _repair(plan, opts, workdir)
    if r is None:
        return None
    return _Fixed(r.path, list(r.chosen.kept_float), {"method": r.chosen.method, "per_channel": r.chosen.per_channel,
                                                      "equalized": r.chosen.equalized,
                                                      "kept_float": r.chosen.kept_float, "repair": r.to_dict()})


def _repair_nncf(plan: _Plan, opts: QuantizeOptions, workdir: Path, fp32_ir: Path | None) -> _Fixed | None:
    """NNCF's other settings, then its accuracy control on top-1 agreement with FP32, chosen on the control images."""
    calib, control = (plan.calib, plan.control) if plan.control else split_holdout(plan.calib, 4)
    if not plan.held or not control or fp32_ir is None:
        return None
    info = plan.info
    cx = [x for _, x in image_batches(calib, info.preprocessing, 1, [], "calibrate", False)]
    kx = [x for _, x in image_batches(control, info.preprocessing, 1, [], "control", opts.progress)]
    parent = top1(openvino_runner(fp32_ir), kx)
    fix = repair_nncf(fp32_ir, cx, kx, parent, opts.min_agreement, workdir, "repair")
    repair = {"target": opts.min_agreement, **fix.detail, "kept_float": fix.kept_float, "control_images": len(parent),
              "calibration_images": len(calib), "agreement": fix.agreement, "reached": fix.agreement >= opts.min_agreement}
    path, chosen = fix.path, "f32"
    if fix.kept_float:
        path, repair["float_layers"] = float_layers_in(fix.path, opts.float_layers, kx, parent, opts.min_agreement)
        chosen = repair["float_layers"]["precision"]
    return _Fixed(path, list(fix.kept_float), {"kept_float": fix.kept_float, "float_layers": chosen, "repair": repair})


def _repair(plan: _Plan, opts: QuantizeOptions, workdir: Path) -> Repair | None:
    """Settings and float layers that reach ``min_agreement``, chosen on the control images (or a split of the calibration ones).

    None where no image is held out: the final agreement would then be scored on images the choice saw.
    """
    calib, control = (plan.calib, plan.control) if plan.control else split_holdout(plan.calib, 4)
    if not plan.held or not control:
        return None
    work = workdir / "repair"
    work.mkdir()
    return repair_int8(plan.info.path, calib, control, opts.min_agreement, QdqSettings.of(opts, plan.reduce_range), work,
                       progress=opts.progress)


def _plan(fp32_path: str | os.PathLike, calib_dir: str | os.PathLike, out_path: str | os.PathLike, opts: QuantizeOptions) -> _Plan:
    """Read the FP32 model, list and split the images, and settle reduce_range and the batch (no work yet)."""
    info = inspect_onnx(fp32_path)
    calib_root = Path(calib_dir)
    files = list_images(calib_root, "--calib")
    out = check_writable(out_path)
    if out.resolve() == info.path.resolve():
        raise XrayError(f"-o {out}: would overwrite the FP32 input; choose another name")
    if opts.eval_dir:
        eval_root = Path(opts.eval_dir)
        held = list_images(eval_root, "--eval")
        calib = files
    else:
        eval_root = calib_root
        calib, held = split_holdout(files, opts.holdout_every)
    calib = spread(calib, opts.max_calib_images)
    control = spread(list_images(Path(opts.control_dir), "--control"), CONTROL_IMAGES) if opts.control_dir else []
    cpu = detect_cpu_int8()
    reduce_range = (not cpu.vnni) if opts.reduce_range is None else bool(opts.reduce_range)
    batch = opts.batch_size if info.fixed_batch is None else info.fixed_batch
    return _Plan(info, out, calib_root, calib, eval_root, held, cpu, reduce_range, batch, control)


def _quantize_ort(plan: _Plan, workdir: Path, opts: QuantizeOptions) -> tuple[Path, int, list[Skipped]]:
    """ONNX Runtime's static QDQ quantisation into ``workdir``: (INT8 model, images used, images skipped)."""
    info, calib = plan.info, plan.calib
    settings = QdqSettings.of(opts, plan.reduce_range)
    reader = calibration_reader(calib, info, settings, plan.batch, opts.progress)
    unreadable = f"--calib {plan.calib_root}: none of the {len(calib)} calibration images could be read"
    # ORT's calibrators print their settings ("Number of histogram bins", "Percentile : ...") on
    # stdout; they tell a user nothing, so they are dropped (--verbose shows them on stderr)
    with stdout_silenced():
        prep = pre_process(info.path, workdir / "preprocessed.onnx")
        tmp_out = workdir / "int8.onnx"
        try:
            quantize_qdq(prep, tmp_out, None, calibration_ranges(prep, workdir, reader, settings), settings)
        except Exception:  # noqa: BLE001 - re-raised unless it was our empty reader
            if reader.used == 0:
                raise XrayError(unreadable) from None
            raise
    if reader.used == 0:
        raise XrayError(unreadable)
    return tmp_out, reader.used, list(reader.skipped)


def _runners(plan: _Plan, tmp_out: Path, fp32_ir: Path | None, opts: QuantizeOptions,
             torch_model: torch.nn.Module | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Each path to compare, FP32 reference first, as a numpy-in numpy-out function; and the FX INT8 description."""
    info = plan.info
    if opts.engine == "openvino":
        fixed = info.fixed_batch
        runners: dict[str, Any] = {"openvino_fp32": openvino_runner(fp32_ir, batch=fixed), "openvino_int8": openvino_runner(tmp_out, batch=fixed)}
    else:
        int8_info = OnnxInfo(tmp_out, info.input_name, info.input_shape, info.output_name, info.sidecar)
        runners = {"ort_fp32": ort_runner(info.path, info), "ort_int8": ort_runner(tmp_out, int8_info)}
    if torch_model is None:
        return runners, None
    tq = quantize_torch_fx(torch_model, plan.calib, info.preprocessing, progress=opts.progress)
    runners["torch_int8_fx"] = lambda x: tq.model(torch.from_numpy(x)).numpy()
    return runners, tq.describe()


def _report(plan: _Plan, opts: QuantizeOptions, tmp_out: Path, calib_used: int, calib_skipped: list[Skipped],
            agree: dict[str, Any], speed: dict[str, Any] | None, labels: str) -> dict[str, Any]:
    """The report written into the INT8 model's sidecar: sizes, every choice, the images, the agreement."""
    info, ort = plan.info, opts.engine == "ort"
    size_fp32, size_int8 = artefact_bytes(info.path), artefact_bytes(tmp_out)  # .xml + .bin, .onnx + external data
    return {
        "fp32_model": str(info.path),
        "int8_model": str(plan.out),
        "size_fp32_bytes": size_fp32,
        "size_int8_bytes": size_int8,
        "compression": size_fp32 / size_int8,
        "engine": opts.engine,
        "passed": agree["passed"],
        "speed": speed,
        "choices": {
            "runtime": "onnxruntime " + _ort_version() if ort else "openvino " + _ov_version() + ", nncf " + _nncf_version(),
            "format": "QDQ" if ort else "OpenVINO IR (FakeQuantize), NNCF post-training quantisation",
            "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
            "method": opts.method,
            "per_channel": opts.per_channel,
            "reduce_range": plan.reduce_range,
            "reduce_range_reason": "set by the user" if opts.reduce_range is not None else plan.cpu.note(),
            "activation_type": opts.activation_type,
            "weight_type": "int8",
            "cpu_vnni": plan.cpu.vnni,
            "cpu_vnni_flags": plan.cpu.flags,
        },
        "options": asdict(opts),
        "preprocessing": info.preprocessing.to_dict(),
        "calibration": {"folder": str(plan.calib_root), "images_used": calib_used, "skipped": [asdict(s) for s in calib_skipped]},
        "held_out": {"folder": str(plan.eval_root), "separate_from_calibration": bool(plan.held), "labels": labels},
        "agreement": agree,
    }


def _publish(tmp_out: Path, plan: _Plan, engine: str, report: dict[str, Any]) -> None:
    """Swap the checked INT8 model and its sidecar (and .bin) in for any earlier ones, as one set."""
    out, info = plan.out, plan.info
    side = {**info.sidecar, "quantization": report}
    if report["choices"].get("float_layers") == "bf16":  # as the IR's own description asks
        side[PRECISION_KEY] = "bf16"
    side.setdefault("preprocessing", info.preprocessing.to_dict())
    targets = [out, sidecar_path(out)] + ([out.with_suffix(".bin")] if engine == "openvino" else [])
    with StagedFiles(targets) as stage:
        if engine == "openvino":
            os.replace(tmp_out.with_suffix(".bin"), stage.path(out.with_suffix(".bin")))
        else:
            _embed(tmp_out, side)
        os.replace(tmp_out, stage.path(out))
        write_json(stage.path(sidecar_path(out)), side)
        stage.commit()


def _embed(path: Path, side: dict[str, Any]) -> None:
    """ORT's quantiser drops metadata_props; put the model's description back inside the INT8 file."""
    import onnx

    proto = onnx.load(str(path))
    set_onnx_embedded(proto, side)
    onnx.save(proto, str(path))


def _quantize_openvino(info: OnnxInfo, calib: list[Path], workdir: Path, opts: QuantizeOptions, calib_root: Path):
    """NNCF post-training INT8 of the FP32 model converted to IR: (int8 xml, used, skipped, fp32 xml)."""
    fp32_ir = write_ir(info.path, workdir / "fp32.xml", info.sidecar)
    skipped: list[Skipped] = []
    bs = 1 if info.fixed_batch else opts.batch_size
    batches = [x for _, x in image_batches(calib, info.preprocessing, bs, skipped, "calibrate", opts.progress)]
    if not batches:
        raise XrayError(f"--calib {calib_root}: none of the {len(calib)} calibration images could be read")
    res = quantize_nncf(fp32_ir, batches, workdir / "int8.xml")
    return res.path, sum(len(b) for b in batches), skipped, fp32_ir


def _time_fp32_int8(runners: dict[str, Any], info: OnnxInfo, batch: int) -> dict[str, Any]:
    """FP32 and INT8 batch-1 latency, round-robin after warm-up; says when INT8 is the slower one here."""
    names = list(runners)[:2]
    x = np.random.default_rng(0).standard_normal((1, 3, info.image_size, info.image_size)).astype(np.float32)
    stats = time_models({n: (lambda n=n: runners[n](x)) for n in names}, warmup=3, repeats=20, rounds=4)
    fp32, int8 = (stats[n].median * 1e3 for n in names)
    out = {"fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8, "method": "batch 1, round-robin, 4 rounds after 3 warm-up calls"}
    if int8 >= fp32:
        out["note"] = (f"{names[1]} is SLOWER than {names[0]} on this CPU ({int8:.1f} vs {fp32:.1f} ms): do not deploy it here; "
                       + ("use OpenVINO INT8 (--engine openvino) or ORT FP32" if names[1].startswith("ort") else "use the FP32 model"))
    return out


def _ov_version() -> str:
    import openvino

    return openvino.__version__


def _nncf_version() -> str:
    import nncf

    return nncf.__version__


def _num_classes(info: OnnxInfo) -> int:
    n = info.sidecar.get("num_classes")
    if n:
        return int(n)
    import onnx

    proto = onnx.load(str(info.path), load_external_data=False)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].dim_value else 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


__all__ = [
    "METHODS",
    "CpuInt8Support",
    "QuantizeOptions",
    "agreement",
    "detect_cpu_int8",
    "quantize_onnx",
]


@dataclass
class QuantizeResult:
    """INT8 model written, with sizes, every choice and the agreement with FP32: the report its sidecar records."""

    fp32_model: str
    int8_model: Path | None  # None when the INT8 model failed its check against FP32 and nothing was written
    passed: bool
    engine: str
    size_fp32_bytes: int
    size_int8_bytes: int
    compression: float
    speed: dict[str, Any] | None  # FP32 vs INT8 latency on this CPU (None: --no-time-check)
    choices: dict[str, Any]  # runtime, format, method, per-channel, reduce_range and why, the CPU's VNNI
    options: dict[str, Any]
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]  # folder, images_used, skipped
    held_out: dict[str, Any]  # folder, separate_from_calibration, labels
    agreement: dict[str, Any]  # top-1/top-5 agreement, KL, accuracy when labelled, passed, skipped
    weights: WeightsInfo
    kept_float: list[str] = field(default_factory=list)  # layers the repair kept in float to reach --min-agreement
    torch_int8: dict[str, Any] | None = None  # PyTorch's FX INT8 beside it, when asked for

    @classmethod
    def from_report(cls, report: dict[str, Any], weights: WeightsInfo) -> QuantizeResult:
        written = report["int8_model"]
        return cls(**{**report, "int8_model": None if written is None else Path(written), "weights": weights})

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return self.calibration["skipped"] + self.agreement["skipped"]

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "torch_int8" or self.torch_int8 is not None}
        return {**doc, "int8_model": None if self.int8_model is None else str(self.int8_model), "weights": self.weights.to_dict()}
