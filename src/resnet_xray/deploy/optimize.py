"""``optimize``: the fastest model on this machine within an accuracy budget, in one command.

Stages: (optional) prune with fine-tuning -> fuse -> export (ONNX + OpenVINO IR) -> INT8
on every engine (ONNX Runtime QDQ, NNCF, OpenVINO on the QDQ file, PyTorch FX) ->
accuracy on the val split -> latency, every candidate timed round-robin in this process
after warm-up -> the fastest candidate within ``max_drop`` points of the FP32
checkpoint. When plain INT8 loses more than that, NNCF's accuracy control keeps the
most sensitive layers in FP32 (mixed precision) and the report names them. INT8 must also
agree with its own FP32 model on control images (``--min-agreement``, 99.5%): the would-be
winner, where it falls short, is repaired (:mod:`.winner_repair`) and timed again with the
rest, and the report names each layer it returned to float and why.

Every artefact is written atomically and recorded in ``optimize_state.json``, so a
killed run resumes where it stopped (``--resume``); timings are never reused, because
they only compare within one process.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..atomic import StagedFiles, check_writable, earlier_output, refuse_inputs, write_json
from ..compare import Tolerance, agreement, as_logits, compare, top1
from ..errors import XrayError
from ..locks import output_lock
from ..model import load_model
from ..provenance import WeightsInfo
from ..units import pct
from .artefact import sidecar_path
from .bench import machine_info
from .candidates import Candidate, pick, to_repair
from .charts import pareto_front, save_optimize_chart
from .data import image_batches, list_images, spread
from .fuse import fuse_model
from .onnx import ExportOptions, export_onnx, inspect_onnx
from .openvino import bf16_path, native_bf16, qdq_to_ir, quantize_nncf, with_precision
from .optimize_spec import ENGINES, OBJECTIVES, OptimizeOptions, OptimizeResult
from .quantize import CONTROL_IMAGES, quantize_from_files
from .runtime import (THROUGHPUT_BATCH, THROUGHPUT_METHOD, deployed_throughput, images_per_second, labelled_batches,
                      load_deployed, runner_at_size)
from .search import Step, search_depth
from .timing import time_models, torch_threads
from .torch_int8 import quantize_torch_fx
from .winner_repair import Inputs, repair_candidate

STATE_FILE = "optimize_state.json"
REPORT_FILE = "optimize.json"
CHART_FILE = "latency_accuracy.png"
# The winner, as classify --model takes it: one of these sets, never pieces of two.
PUBLISHED = ("model.onnx", "model.onnx.json", "model.xml", "model.bin", "model.xml.json")


class _Run:
    """The state one optimize run shares between its stages."""

    def __init__(self, opts: OptimizeOptions, log: Callable[[str], None]):
        self.opts, self.log = opts, log
        self.out = Path(opts.out)
        self.work = self.out / "work"
        self.state_path = self.out / STATE_FILE
        self.state: dict[str, Any] = {"done": {}, "options": _result_options(opts)}
        self.stage_no = 0
        self.t0 = time.perf_counter()
        self.control: _Control | None = None  # --min-agreement's images, once measured

    def stage(self, what: str) -> None:
        self.stage_no += 1
        m, sec = divmod(int(time.perf_counter() - self.t0), 60)
        self.log(f"optimize [{self.stage_no}, {m}:{sec:02d} in] {what}")

    def done(self, key: str) -> Any:
        return self.state["done"].get(key)

    def mark(self, key: str, value: Any = True) -> None:
        self.state["done"][key] = value
        write_json(self.state_path, self.state)


def _result_options(o: OptimizeOptions) -> dict[str, Any]:
    # engines: a run started without OpenVINO has no FP32 IR for a resumed one to quantise
    keep = ("data", "target_macs", "prune_steps", "finetune_epochs", "importance", "distill", "calib_images", "input_size", "seed")
    return {**{k: getattr(o, k) for k in keep}, "engines": list(o.engines), "search": list(o.search) if o.search else None}


# What optimize writes in OUT: all that --overwrite may remove (anything else there is left alone).
OWN_ENTRIES = (STATE_FILE, REPORT_FILE, CHART_FILE, "work", "prune", *PUBLISHED)


def prepare_out(opts: OptimizeOptions) -> dict[str, Any] | None:
    """Refuse to mix runs: a non-empty OUT must be an earlier optimize run, and then needs --resume (same options) or --overwrite."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise XrayError(f"-o {out}: exists and is not a folder")
    state = None
    if earlier_output(out, "-o", command="optimize", marker=STATE_FILE, resume=opts.resume, overwrite=opts.overwrite):
        if opts.overwrite:
            for name in OWN_ENTRIES:
                p = out / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        else:
            sp = out / STATE_FILE
            try:
                state = json.loads(sp.read_text())
                saved = state["options"]
                state["done"].keys()
            except (ValueError, KeyError, TypeError, AttributeError):
                raise XrayError(f"{sp}: unreadable; rerun with --overwrite") from None
            now = _result_options(opts)
            # a key an older state file lacks is not held against it
            changed = [k for k in now if k in saved and saved[k] != now[k]]
            if changed:
                was = ", ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in changed)
                raise XrayError(f"-o {out}: was started with {was}; resume with the same options or pass --overwrite")
    check_writable(out, "-o", kind="dir")  # creates it, or one line saying why not
    return state


def optimize(checkpoint: str, options: OptimizeOptions, *, log: Callable[[str], None] | None = None) -> OptimizeResult:
    """Prune (optionally), fuse, export, quantise on every engine, measure, and keep the fastest within budget.

    One writer per OUT: a second run on the same folder gets one line and exit 2 (see
    :mod:`resnet_xray.locks`). Arguments and result as :func:`_optimize`.
    """
    refuse_inputs(options.out, {"--data": options.data, "checkpoint": checkpoint})
    with output_lock(options.out, "-o", beside=True):  # beside: OUT itself stays empty until the run writes
        return _optimize(checkpoint, options, log=log)


def _optimize(checkpoint: str, options: OptimizeOptions, *, log: Callable[[str], None] | None = None) -> OptimizeResult:
    """Prune (optionally), fuse, export, quantise on every engine, measure, and keep the fastest within budget.

    Args:
        checkpoint: a model file ``load_model`` reads (a fine-tuned ``best.pt``).
        options: budget, pruning target, engines, where to write.
        log: where progress lines go (default: stderr).

    Returns:
        Every candidate with accuracy, agreement, latency and why it was kept or dropped; the
        winner's artefact is copied to ``OUT/model.onnx`` or ``OUT/model.xml`` for ``classify --model``.
    """
    opts = options  # checked by optimize()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    model, meta = _checkpoint(checkpoint, opts.input_size)
    run = _start(opts, log)
    size = meta.preprocessing.crop
    with torch_threads(opts.threads):
        variants: list[tuple[str, Any, float]] = [("", model, 1.0)]
        steps: list[Step] = []
        if opts.target_macs is not None or opts.search:
            steps, deepest = search_depth(run, model, meta, size)
            if deepest is not None:
                _forget_other_pruned(run, next(s.checkpoint for s in reversed(steps) if s.within_budget))
                variants.append(("pruned ", *deepest))
            else:
                log(f"optimize: no pruned model within {opts.max_drop} points; only the unpruned model goes on to INT8")
        val = _val_split(run, model, meta)
        cands, runners = _candidates(run, variants, meta, val)
        tsize = opts.timing_size or size
        run.stage(f"timing {len(runners)} candidates round-robin (batch 1, {tsize} px, {opts.rounds} rounds after warm-up)")
        if tsize != size:
            _runners_at(run, cands, runners, tsize)
        _time(run, cands, runners, tsize)
        if opts.objective == "throughput":
            _throughput(run, cands, runners, size)
        if opts.min_agreement:
            _repair_winner(run, cands, runners, val, size, tsize)
    return _finish(run, cands, val.base_acc, meta, tsize, time.perf_counter() - t_start, steps)


def _forget_other_pruned(run: _Run, checkpoint: str) -> None:
    """A resumed run whose search picks another depth than before exports and quantises that model anew."""
    if run.done("pruned_from") != checkpoint:
        for key in [k for k in run.state["done"] if k.startswith(_tag("pruned ") + ".")]:
            del run.state["done"][key]
        run.mark("pruned_from", checkpoint)


def _checkpoint(checkpoint: str, input_size: int | None) -> tuple[Any, Any]:
    """The FP32 model and its metadata, the preprocessing scaled to ``input_size`` (None: the checkpoint's crop)."""
    model, meta = load_model(None, checkpoint)
    if meta.find("heads"):
        raise XrayError(f"{checkpoint}: multi-task checkpoints are not supported by optimize; use a single-head classifier")
    return model, dataclasses.replace(meta, preprocessing=meta.preprocessing.scaled_to(input_size or meta.preprocessing.crop))


def _start(opts: OptimizeOptions, log: Callable[[str], None]) -> _Run:
    """Claim OUT (refusing to mix runs) and start its state file, or take up an earlier run's to resume it."""
    state = prepare_out(opts)
    run = _Run(opts, log)
    if state:
        run.state = state
        log(f"optimize: resuming in {run.out} ({', '.join(state['done']) or 'nothing'} done)")
    else:
        write_json(run.state_path, run.state)  # now, so a run killed in its first stage can be resumed
    run.work.mkdir(exist_ok=True)
    return run


@dataclass
class _Val:
    """The val split every candidate is scored on, with the FP32 checkpoint's own outputs on it."""

    x: list[torch.Tensor]  # preprocessed batches
    y: np.ndarray  # labels from the class folders
    names: list[str]  # the images, relative to --data
    ref_logits: np.ndarray  # the FP32 checkpoint's
    base_acc: float  # the FP32 checkpoint's top-1: the budget is counted from it
    parent_top1: dict[bool, np.ndarray] = field(default_factory=dict)  # pruned or not -> that eager FP32 model's top-1


def _val_split(run: _Run, model: Any, meta: Any) -> _Val:
    """The labelled val images of --data, and how the FP32 checkpoint scores on them."""
    opts = run.opts
    run.stage("evaluation images")
    x, y, how, _, files = labelled_batches(opts.data, meta.preprocessing, meta.class_names, batch=16, limit=opts.eval_images,
                                           limit_flag="--eval-images")
    names = [str(f.relative_to(opts.data)) for f in files]  # found under DATA/val, so always relative
    if y is None:
        raise XrayError(f"--data {opts.data}: needs labelled val images (val/<class>/<image>): {how}")
    ref_logits = _logits(model, x)
    base_acc = float((ref_logits.argmax(1) == y).mean())
    run.log(f"optimize: FP32 checkpoint accuracy {pct(base_acc)} on {len(y)} val images; budget {opts.max_drop} points")
    return _Val(x, y, names, ref_logits, base_acc)


def _candidates(run: _Run, variants: list[tuple[str, Any, float]], meta: Any, val: _Val
                ) -> tuple[list[Candidate], dict[str, Callable[[np.ndarray], Any]]]:
    """Every candidate of every variant, scored on the val split, and a runner for each."""
    images = _images(run.opts, val.names)
    cands: list[Candidate] = []
    runners: dict[str, Callable[[np.ndarray], Any]] = {}
    for prefix, m, macs_rel in variants:
        _variant(run, prefix, m, meta, macs_rel, images, cands, runners)
    _score(cands, runners, val)
    if run.opts.mixed_precision and "openvino" in run.opts.engines:
        _mixed(run, variants, cands, runners, val)
    if run.opts.min_agreement and images.control:
        run.control = _control(run, variants, images, meta.preprocessing)
        for c in cands:
            _judge(run.control, c, runners[c.name])
    return cands, runners


@dataclass
class _Control:
    """--min-agreement's images: what INT8 is judged and repaired on, and each FP32 model's top-1 there."""

    images: _Images
    x: list[np.ndarray]  # the control images, preprocessed, in batches
    parent_top1: dict[bool, np.ndarray]  # pruned or not -> that FP32 model's top-1 on them


def _control(run: _Run, variants: list[tuple[str, Any, float]], images: _Images, pre: Any) -> _Control:
    run.stage(f"INT8 against its own FP32 model on {len(images.control)} control images "
              f"(target {pct(run.opts.min_agreement)} top-1 agreement)")
    x = [b for _, b in image_batches(images.control, pre, 16, [], "control", False)]
    with torch.inference_mode():
        parents = {bool(prefix): top1(lambda b, m=m: m(torch.from_numpy(b)), x) for prefix, m, _ in variants}
    return _Control(images, x, parents)


def _judge(ctl: _Control, c: Candidate, run_fn: Callable[[np.ndarray], Any]) -> None:
    if c.precision != "fp32":  # INT8 and bf16 alike: arithmetic that can flip a near-tie
        with torch.inference_mode():
            c.control_agreement = agreement(top1(run_fn, ctl.x), ctl.parent_top1[c.pruned])


def _repair_winner(run: _Run, cands: list[Candidate], runners: dict[str, Any], val: _Val, size: int, tsize: int) -> None:
    """The would-be winner, where it is INT8 short of --min-agreement, repaired; then everything is timed again with it."""
    opts, ctl = run.opts, run.control
    would = to_repair(cands, val.base_acc, opts.max_drop, opts.objective, opts.min_agreement) if ctl else None
    if would is None:
        return
    run.stage(f"repairing {would.name}: {pct(would.control_agreement)} top-1 agreement with its FP32 model on "
              f"{len(ctl.images.control)} control images, target {pct(opts.min_agreement)}")
    fixed, detail = _repaired(run, would)
    for c in list(fixed):
        dm = load_deployed(c.path, opts.threads)[0]
        # a bf16 copy that ran f32 is not a candidate (load_deployed labels a file with float layers in f32 plain int8)
        if dm.precision != c.precision.replace("int8+fp32", "int8"):
            run.log(f"  {c.name}: OpenVINO runs it in {dm.precision}, not {c.precision}; left out")
            fixed.remove(c)
            continue
        runners[c.name] = dm.run
        _score([c], runners, val)
        _judge(ctl, c, runners[c.name])
        c.repair = {"target": opts.min_agreement, "repaired": would.name, "control_images": len(ctl.images.control),
                    "control_agreement_before": would.control_agreement, "control_agreement": c.control_agreement,
                    "val_images": len(val.y), "val_agreement_before": would.val_agreement, "val_agreement": c.val_agreement,
                    "kept_float": c.kept_float, **detail}
        run.log(f"  {c.name}: {len(c.kept_float)} layer(s) in float ({', '.join(c.kept_float) or 'none'}); agreement "
                f"{pct(would.control_agreement)} -> {pct(c.control_agreement)} on control, "
                f"{pct(would.val_agreement)} -> {pct(c.val_agreement)} on val")
        cands.append(c)
        if tsize != size:
            runners[c.name] = runner_at_size(c.path, tsize, opts.threads, run.work / "timing")
    run.stage(f"timing {len(cands)} candidates again, the repaired one with them (latencies compare only within one timing)")
    _time(run, cands, runners, tsize)
    if opts.objective == "throughput":
        _throughput(run, fixed, runners, size)


def _repaired(run: _Run, would: Candidate) -> tuple[list[Candidate], dict[str, Any]]:
    """The repaired file as a candidate (once per run), and its float layers in bf16 as another where this CPU has bf16."""
    ctl, prefix = run.control, "pruned " if would.pruned else ""
    key = f"repair:{would.name}"
    done = run.done(key)
    if not done:
        src = Inputs(run.work / f"{_tag(prefix)}.fp32.onnx", ctl.images.calib,
                     [x for _, x in image_batches(ctl.images.calib, fp32_pre(would), 1, [], "calibrate", False)],
                     ctl.images.held, ctl.images.control, ctl.x, ctl.parent_top1[would.pruned])
        r = repair_candidate(would.name, would.engine, prefix, src, run.opts.min_agreement, run.work)
        done = {"name": r.name, "engine": r.engine, "path": str(r.path), "kept_float": r.kept_float, "detail": r.detail}
        run.mark(key, done)
    kept = list(done["kept_float"])
    out = [Candidate(done["name"], done["engine"], "int8+fp32" if kept else "int8", would.pruned, would.macs_rel,
                     done["path"], kept_float=kept)]
    if kept and done["engine"] == "openvino" and native_bf16():  # "float" can mean bf16: timed and judged as its own candidate
        out.append(dataclasses.replace(out[0], name=f"{done['name']} + bf16", precision="int8+bf16",
                                       path=str(_bf16_copy(run, Path(done["path"]))), kept_float=list(kept)))
    return out, done["detail"]


def _finish(run: _Run, cands: list[Candidate], base_acc: float, meta: Any, tsize: int, seconds: float, steps: list[Step]) -> OptimizeResult:
    """Pick and publish the winner, draw the chart, and write the report."""
    opts = run.opts
    winner = pick(cands, base_acc, opts.max_drop, opts.objective, opts.min_agreement)
    winner_path = _publish(run, winner)
    chart = save_optimize_chart(cands, run.out / CHART_FILE, base_acc, opts.max_drop)
    res = OptimizeResult(run.out, base_acc, opts.max_drop, cands, winner, winner_path, chart, machine_info(opts.threads), opts,
                         round(seconds, 1), WeightsInfo.of(meta).to_dict(), tsize, [s.to_dict() for s in steps])
    write_json(run.out / REPORT_FILE, res.to_dict())
    run.mark("finished", True)
    return res


class _Images(NamedTuple):
    calib: list[Path]  # training images INT8 calibrates on
    held: list[Path]  # the val images every candidate is scored on
    control: list[Path]  # what the INT8 repair chooses on (empty: no repair asked for)


def _train_files(opts: OptimizeOptions) -> list[Path]:
    root = Path(opts.data)
    return list_images(root / "train" if (root / "train").is_dir() else root, "--data")


def _images(opts: OptimizeOptions, val_names: list[str]) -> _Images:
    train = _train_files(opts)
    calib = spread(train, opts.calib_images)
    taken = set(calib)
    control = list_images(Path(opts.control), "--control") if opts.control else [f for f in train if f not in taken]
    return _Images(calib, [Path(opts.data) / n for n in val_names], spread(control, CONTROL_IMAGES) if opts.min_agreement else [])


def _logits(m: Any, xs: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([as_logits(m(x)) for x in xs])


def _variant(run: _Run, prefix: str, model: Any, meta: Any, macs_rel: float, images: _Images,
             cands: list[Candidate], runners: dict[str, Any]) -> None:
    """Eager, fused, FP32 exports and every INT8 route of one model (unpruned or pruned)."""
    pruned, m, calib = bool(prefix), model.eval(), images.calib

    def eager(x: np.ndarray, m=m) -> Any:
        return m(torch.from_numpy(x))

    name = f"{prefix}eager fp32"
    cands.append(Candidate(name, "eager", "fp32", pruned, macs_rel, None))
    runners[name] = eager
    onnx_path = _export(run, prefix, m, meta)
    files = {**_fp32_files(run, prefix, onnx_path), **_int8_files(run, prefix, onnx_path, images, meta.preprocessing)}
    for name, (engine, precision, path) in files.items():
        dm, _ = load_deployed(path, run.opts.threads)
        if dm.precision != precision:  # a file that asked for bf16 and ran f32 is not a bf16 candidate
            run.log(f"  {name}: OpenVINO runs it in {dm.precision}, not {precision}; left out")
            continue
        cands.append(Candidate(name, engine, precision, pruned, macs_rel, str(path)))
        runners[name] = dm.run
    if "torch" in run.opts.engines:
        run.stage(f"{prefix or 'unpruned '}INT8: PyTorch FX (x86)")
        q = quantize_torch_fx(m, calib, meta.preprocessing).model
        name = f"{prefix}torch int8 (fx)"
        cands.append(Candidate(name, "torch", "int8", pruned, macs_rel, None))
        runners[name] = lambda x, q=q: q(torch.from_numpy(x))


def _tag(prefix: str) -> str:
    """The variant's name in the work folder's file names and the state file's keys."""
    return prefix.strip().replace(" ", "_") or "base"


def _export(run: _Run, prefix: str, m: Any, meta: Any) -> Path:
    """The fused FP32 model as ONNX (and OpenVINO IR beside it, when that engine is wanted); once per run."""
    run.stage(f"{prefix or 'unpruned '}fuse + export (ONNX, OpenVINO IR)")
    tag = _tag(prefix)
    onnx_path = run.work / f"{tag}.fp32.onnx"
    if not run.done(f"{tag}.export"):
        opts = ExportOptions(exporter="torchscript", openvino="openvino" in run.opts.engines, input_size=meta.preprocessing.crop)
        export_onnx(fuse_model(m), onnx_path, opts, meta)
        run.mark(f"{tag}.export")
    return onnx_path


# A deployable candidate: its name -> (engine, precision, file).
Files = dict[str, tuple[str, str, Path]]


def _fp32_files(run: _Run, prefix: str, onnx_path: Path) -> Files:
    files: Files = {}
    if "ort" in run.opts.engines:
        files[f"{prefix}ort fp32"] = ("onnxruntime", "fp32", onnx_path)
    if "openvino" in run.opts.engines:
        files[f"{prefix}openvino fp32"] = ("openvino", "fp32", onnx_path.with_suffix(".xml"))
        if native_bf16():  # OpenVINO's default precision on such CPUs: a candidate of its own, never labelled fp32
            files[f"{prefix}openvino bf16"] = ("openvino", "bf16", _bf16_copy(run, onnx_path.with_suffix(".xml")))
    return files


def _bf16_copy(run: _Run, xml: Path) -> Path:
    """The IR at ``xml``, its description asking OpenVINO for bf16 float layers; once per run."""
    out = bf16_path(xml)
    if not run.done(out.name):
        with_precision(xml, out, "bf16")
        run.mark(out.name)
    return out


def _int8_files(run: _Run, prefix: str, onnx_path: Path, images: _Images, pre: Any) -> Files:
    """ONNX Runtime's QDQ INT8 of the export, and OpenVINO's two INT8 routes (on that QDQ file, and NNCF's own)."""
    engines, tag = run.opts.engines, _tag(prefix)
    want_ov = "openvino" in engines
    if "ort" not in engines and not want_ov:
        return {}
    run.stage(f"{prefix or 'unpruned '}INT8: ONNX Runtime QDQ" + (", NNCF, OpenVINO on QDQ" if want_ov else ""))
    ort_int8, calib = run.work / f"{tag}.int8.onnx", images.calib
    if not run.done(f"{tag}.ort_int8"):
        quantize_from_files(onnx_path, images.calib, images.held, ort_int8, 0.0)  # plain: only a would-be winner is repaired
        run.mark(f"{tag}.ort_int8")
    files: Files = {}
    if "ort" in engines:
        files[f"{prefix}ort int8"] = ("onnxruntime", "int8", ort_int8)
    if not want_ov:
        return files
    qdq_xml = run.work / f"{tag}.int8_qdq.xml"
    if not run.done(f"{tag}.ov_qdq"):
        qdq_to_ir(ort_int8, qdq_xml, inspect_onnx(ort_int8).sidecar)
        run.mark(f"{tag}.ov_qdq")
    files[f"{prefix}openvino int8 (qdq)"] = ("openvino", "int8", qdq_xml)
    nncf_xml = run.work / f"{tag}.int8_nncf.xml"
    if not run.done(f"{tag}.nncf"):
        quantize_nncf(onnx_path.with_suffix(".xml"), [x for _, x in image_batches(calib, pre, 1, [], "calibrate", False)], nncf_xml)
        run.mark(f"{tag}.nncf")
    files[f"{prefix}openvino int8 (nncf)"] = ("openvino", "int8", nncf_xml)
    return files


def _score(cands: list[Candidate], runners: dict[str, Any], val: _Val) -> None:
    for c in cands:
        if c.accuracy is not None:
            continue
        with torch.inference_mode():
            z = np.concatenate([as_logits(runners[c.name](x.numpy())) for x in val.x])
        c.accuracy = float((z.argmax(1) == val.y).mean())
        tol = Tolerance.float32() if c.precision == "fp32" and not c.pruned else Tolerance.reduced_precision(0.0)
        eq = compare(val.ref_logits, z, tolerance=tol, names=("fp32 checkpoint", c.name))
        c.agreement, c.check = eq.top1_agreement, eq.to_dict()
        c.disagreements = [val.names[i] for i in eq.disagreements[:20]]
        if c.engine == "eager" and c.precision == "fp32":  # scored first of its variant: the parent of the rest
            val.parent_top1[c.pruned] = z.argmax(1)
        c.val_agreement = agreement(z.argmax(1), val.parent_top1[c.pruned])


def _mixed(run: _Run, variants: list, cands: list[Candidate], runners: dict[str, Any], val: _Val) -> None:
    """NNCF accuracy control where plain NNCF INT8 lost more than the budget."""
    opts, base_acc = run.opts, val.base_acc
    for prefix, _, macs_rel in variants:
        tag = _tag(prefix)
        plain = next((c for c in cands if c.name == f"{prefix}openvino int8 (nncf)"), None)
        fp32 = next((c for c in cands if c.name == f"{prefix}openvino fp32"), None)
        if plain is None or fp32 is None or (base_acc - plain.accuracy) * 100 <= opts.max_drop:
            continue
        # the budget is against the checkpoint; what pruning already lost is not INT8's to spend
        budget = opts.max_drop / 100 - (base_acc - fp32.accuracy)
        if budget <= 0:
            continue  # the FP32 model of this variant is already outside the budget: no INT8 of it can win
        run.stage(f"{prefix or 'unpruned '}INT8 lost {(base_acc - plain.accuracy) * 100:.1f} points: NNCF accuracy control (max drop {budget * 100:.2f})")
        out = run.work / f"{tag}.int8_mixed.xml"
        done = run.done(f"{tag}.mixed")
        if not done:
            files = spread(_train_files(opts), opts.calib_images)
            calib = [x for _, x in image_batches(files, fp32_pre(fp32), 1, [], "calibrate", False)]
            res = quantize_nncf(Path(fp32.path), calib, out, val=([x.numpy() for x in val.x], val.y), max_drop=budget)
            done = {"fp32_layers": res.fp32_layers}
            run.mark(f"{tag}.mixed", done)
        dm, _ = load_deployed(out, opts.threads)
        name = f"{prefix}openvino int8+fp32 (mixed)"
        c = Candidate(name, "openvino", "int8+fp32", bool(prefix), macs_rel, str(out), fp32_layers=list(done["fp32_layers"]))
        cands.append(c)
        runners[name] = dm.run
        _score([c], runners, val)


def fp32_pre(c: Candidate) -> Any:
    return load_deployed(c.path)[1].preprocessing


def _runners_at(run: _Run, cands: list[Candidate], runners: dict[str, Any], size: int) -> None:
    """Swap every file candidate's runner for the same file reshaped to ``size`` (eager ones take any size)."""
    for c in cands:
        if c.path:
            runners[c.name] = runner_at_size(c.path, size, run.opts.threads, run.work / "timing")


def _time(run: _Run, cands: list[Candidate], runners: dict[str, Any], size: int) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    stats = time_models({c.name: (lambda fn=runners[c.name]: fn(x)) for c in cands}, repeats=run.opts.repeats,
                        rounds=run.opts.rounds, progress=lambda s: run.log(f"  {s}"))
    base = stats[cands[0].name].median
    for c in cands:
        st = stats[c.name]
        c.latency_ms, c.iqr_ms, c.speedup = st.median * 1e3, st.iqr * 1e3, base / st.median


def _throughput(run: _Run, cands: list[Candidate], runners: dict[str, Any], size: int) -> None:
    """Each candidate's images/s in its engine's throughput mode, at the model's own input size."""
    run.stage(f"throughput of {len(cands)} candidates ({THROUGHPUT_METHOD}; {size} px)")
    x = np.random.default_rng(0).standard_normal((THROUGHPUT_BATCH, 3, size, size)).astype(np.float32)
    for c in cands:
        if c.deployable:
            c.throughput_img_s = deployed_throughput(c.path, run.opts.threads)
        else:
            with torch.inference_mode():
                c.throughput_img_s = images_per_second(lambda x, fn=runners[c.name]: fn(x), x)
        run.log(f"  {c.name}: {c.throughput_img_s:.1f} img/s")


def _publish(run: _Run, win: Candidate | None) -> Path | None:
    """Copy the winner to OUT/model.onnx or OUT/model.xml (+ .bin, sidecar), replacing the earlier winner's set whole.

    An earlier run's winner is removed with it, whatever its engine (and when there is no
    winner now): OUT never holds files of two runs' winners beside the one optimize.json names.
    """
    dest = None
    with StagedFiles([run.out / n for n in PUBLISHED]) as stage:
        if win is not None:
            src = Path(win.path)
            dest = run.out / f"model{src.suffix}"
            pairs = [(src, dest), (sidecar_path(src), sidecar_path(dest))]
            if src.suffix == ".xml":
                pairs.append((src.with_suffix(".bin"), dest.with_suffix(".bin")))
            for s, d in pairs:
                if s.exists():
                    shutil.copyfile(s, stage.path(d))
        stage.commit()
    return dest


__all__ = ["ENGINES", "OBJECTIVES", "Candidate", "OptimizeOptions", "OptimizeResult", "optimize", "pareto_front"]
