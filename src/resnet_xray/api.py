"""The public Python API: one verb per capability, the same verbs as the CLI.

Every verb takes a model (a :class:`LoadedModel` from :func:`load_model`, or a
``(module, meta)`` pair, or a weights path) and returns a typed result whose
``.to_dict()`` is exactly the document the matching command prints with ``--json``.
The CLI is parse -> call one of these -> render, so the two cannot drift apart.

    import resnet_xray as rx
    model = rx.load_model("resnet18", weights="random")
    result = rx.classify(model, ["cat.png"], topk=5)
    result.to_dict()

Heavy libraries load inside each verb, so ``import resnet_xray`` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import XrayError
from .options import OptionError
from .provenance import WeightsInfo

if TYPE_CHECKING:  # imported for annotations only: importing them loads torch
    from torch import nn

    from .dissect import Anatomy
    from .classification import ClassifyResult
    from .deploy.bench import BenchResult
    from .model import ModelMeta
    from .pruning.loop import PruneResult
    from .reporting import ReportResult
    from .tracing import Trace, Walkthrough
    from .tracing.gradflow import GradFlowResult

PathLike = str | os.PathLike


# --- the model ---


@dataclass
class LoadedModel:
    """A model and its metadata, as one object.

    ``module`` is the ``nn.Module`` (eval mode, CPU); ``meta`` says which class names go
    with its outputs, which preprocessing it expects, where its weights came from and
    which structural changes it carries. Calling it runs the module, and it unpacks as
    ``module, meta`` for code written against :func:`resnet_xray.model.load_model`.
    """

    module: nn.Module
    meta: ModelMeta

    def __iter__(self) -> Iterator[Any]:
        return iter((self.module, self.meta))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @property
    def arch(self) -> str:
        return self.meta.arch

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    @property
    def weights(self) -> WeightsInfo:
        return WeightsInfo.of(self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta.to_dict(), "weights": self.weights.to_dict()}


def load_model(
    arch: str | None = None,
    weights: PathLike = "imagenet",
    *,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> LoadedModel:
    """Build ``arch`` and load ``weights``: the one way every command gets a model.

    Args:
        arch: a torchvision ResNet name (``resnet18`` ... ``wide_resnet50_2``); None: the
            checkpoint's arch, else resnet50.
        weights: ``imagenet`` / ``imagenet-v1`` / ``imagenet-v2`` (torchvision, cached),
            ``random`` (seeded init), or a path to a state_dict, checkpoint or safetensors file.
        seed: RNG seed for ``random`` weights.
        progress: show a download progress bar.
        options: further keywords of :func:`resnet_xray.model.load_model`.
    """
    from . import model as _model

    module, meta = _model.load_model(arch, weights, seed=seed, progress=progress, **options)
    return LoadedModel(module, meta)


def weights_info(weights: PathLike | None, arch: str | None = None, *, seed: int = 0) -> WeightsInfo:
    """The provenance of ``weights`` as given to a verb that loaded them itself: read from the weights, never assumed.

    A file or a torchvision alias is loaded again for its own record (whether it was trained, and on
    what); saying ``trained`` without looking is what made a random-init file pass for a trained one.
    """
    if weights is None:
        return WeightsInfo.none("no weights: only the seed pipeline's preprocessing was applied")
    if str(weights) == "random":
        return WeightsInfo.random(f"random (seed {seed})")
    from .model import DEFAULT_ARCH, WEIGHT_ALIASES, torchvision_source, torchvision_weights
    from .provenance import Provenance

    if str(weights) in WEIGHT_ALIASES:  # known without loading (and without the network)
        source = torchvision_source(torchvision_weights(arch or DEFAULT_ARCH, str(weights)))
        return WeightsInfo.from_provenance(source, Provenance.imagenet(source))
    return load_model(arch, weights, progress=False).weights


def as_model(model: LoadedModel | tuple | PathLike, *, arch: str | None = None) -> LoadedModel:
    """Accept what every verb accepts: a LoadedModel, a ``(module, meta)`` pair or a weights path."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return LoadedModel(*model)
    if isinstance(model, (str, os.PathLike)):
        from .model import ARCHS

        if str(model) in ARCHS:  # rx.classify("resnet18", ...) means torchvision's pretrained weights
            return load_model(str(model))
        return load_model(arch, model)
    raise TypeError(
        f"expected rx.load_model(...)'s result, a (module, meta) pair or a weights path, not {type(model).__name__}; "
        "a bare nn.Module has no class names or preprocessing"
    )


# --- results that add the weights' provenance to an existing typed result ---


class _Wraps:
    """Attribute reads fall through to the wrapped result, named by ``_inner``."""

    _inner = ""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == self._inner:
            raise AttributeError(name)
        return getattr(getattr(self, self._inner), name)


@dataclass
class AnatomyResult(_Wraps):  # .layers, .stages, .totals, ... as on Anatomy
    _inner = "anatomy"

    anatomy: Anatomy
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {**self.anatomy.to_dict(), "weights": self.weights.to_dict()}


@dataclass
class TraceResult:
    """One forward pass: every operation's statistics, each block's residual numbers, the top-1."""

    image: str
    arch: str
    input_shape: list[int]
    top1: dict[str, Any]  # {"index", "label", "prob"}
    trace: Trace
    weights: WeightsInfo
    walkthrough: Walkthrough | None = None

    @property
    def layers(self):
        return self.trace.layers

    @property
    def blocks(self):
        return self.trace.blocks

    def to_dict(self) -> dict[str, Any]:
        doc = {"image": self.image, "arch": self.arch, "weights": self.weights.to_dict(), "input_shape": self.input_shape,
               "top1": self.top1, **self.trace.to_dict()}
        if self.walkthrough is not None:
            doc["walkthrough"] = self.walkthrough.to_dict()
        return doc


@dataclass
class GradFlowReport:
    result: GradFlowResult
    weights: WeightsInfo
    plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {**self.result.to_dict(), "weights": self.weights.to_dict()}
        if self.plot:
            doc["plot"] = str(self.plot)
        return doc


@dataclass
class ReportOutput(_Wraps):  # .html, .json, .seconds ... as on ReportResult
    _inner = "result"

    result: ReportResult
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"html": str(r.html), "json": str(r.json), "html_bytes": r.html_bytes, "total_s": r.total_s,
                "seconds": dict(r.seconds), "weights": self.weights.to_dict()}


@dataclass
class FuseResult:
    """BatchNorm folded into the convs before it, and the fused vs unfused check on real images."""

    model: LoadedModel  # the fused model, metadata carried over
    folded: int
    batchnorm_before: int
    batchnorm_after: int
    check: dict[str, Any]  # max_abs_diff, mean_abs_diff, max_abs_logit, top1_agreement, images
    weights: WeightsInfo
    output: Path | None = None  # the saved checkpoint, when one was asked for
    skipped: list[Any] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.check.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.check, "batchnorm_before": self.batchnorm_before, "batchnorm_after": self.batchnorm_after,
                "folded": self.folded, "output": None if self.output is None else str(self.output),
                "weights": self.weights.to_dict()}


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


@dataclass
class QuantizeResult:
    """INT8 model written, with sizes, every choice and the agreement with FP32 (``report``)."""

    report: dict[str, Any]
    weights: WeightsInfo

    @property
    def int8_model(self) -> Path | None:
        """The file written; None when the INT8 model failed its check against FP32 and nothing was written."""
        written = self.report["int8_model"]
        return None if written is None else Path(written)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return self.report["calibration"]["skipped"] + self.report["agreement"]["skipped"]

    def to_dict(self) -> dict[str, Any]:
        return {**self.report, "weights": self.weights.to_dict()}


@dataclass
class BenchReport(_Wraps):  # .rows, .table(), .machine ... as on BenchResult
    _inner = "result"

    result: BenchResult
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "weights": self.weights.to_dict()}


@dataclass
class FinetuneResult:
    """The training run: final and best validation metrics, per-epoch history, skipped files."""

    raw: dict[str, Any]  # everything fit() returned (confusion matrix, timings, world size ...)
    weights: WeightsInfo  # the weights training started from

    @property
    def final(self) -> dict[str, Any]:
        return self.raw["final"]

    @property
    def best(self) -> dict[str, Any]:
        return self.raw["best"]

    @property
    def out_dir(self) -> Path:
        return Path(self.raw["out_dir"])

    @property
    def skipped(self) -> list[Any]:
        return self.raw["skipped"]

    def to_dict(self) -> dict[str, Any]:
        return {"final_accuracy": self.final["accuracy"], "best": self.best, "history": self.raw["history"],
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped], "out_dir": str(self.out_dir),
                "weights": self.weights.to_dict()}


@dataclass
class DataBenchResult:
    rates: dict[str, Any]  # loader/step/loop images per second, data-wait fraction, settings
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {**self.rates, "weights": self.weights.to_dict()}


@dataclass
class PruneReport(_Wraps):  # .final_checkpoint, .rounds ... as on PruneResult
    _inner = "result"

    result: PruneResult
    weights: WeightsInfo  # the weights pruning started from

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"out": str(r.out), "baseline": r.baseline, "rounds": r.rounds, "final_checkpoint": str(r.final_checkpoint),
                "plot": None if r.plot is None else str(r.plot),
                "skipped": [{"path": s.path, "reason": s.reason} for s in r.skipped], "weights": self.weights.to_dict()}


# --- the verbs ---


def classify(model: LoadedModel | tuple | PathLike, images: Iterable[PathLike], *, topk: int = 5, batch_size: int = 16,
             progress: bool = False) -> ClassifyResult:
    """Top-k labels for every readable image in ``images`` (files and folders).

    Unreadable files do not stop the run; they are listed in ``result.skipped``. Raises
    :class:`XrayError` when nothing at all could be classified.
    """
    from .classification import ClassifyOptions
    from .classification import classify as _classify

    opts = ClassifyOptions(topk=topk, batch_size=batch_size, progress=progress)  # refuses bad values first
    m = as_model(model)
    images = list(images)
    result = _classify(images, m.module, m.meta, opts)
    if not result.results and not result.skipped:
        raise XrayError(f"no image files found in: {' '.join(map(str, images))}")
    if not result.results and len(result.skipped) == 1:
        s = result.skipped[0]
        raise XrayError(f"{s.path}: {s.reason}")
    return result


def anatomy(model: LoadedModel | tuple | PathLike, *, input_size: int | None = None) -> AnatomyResult:
    """The measured layer table, Table 1 stages, totals and breakdowns at ``input_size`` (None: the model's crop)."""
    from .dissect import AnatomyOptions, analyze

    opts = AnatomyOptions(input_size=input_size)
    m = as_model(model)
    return AnatomyResult(analyze(m.module, m.arch, opts, crop=m.meta.preprocessing.crop), m.weights)


def trace(model: LoadedModel | tuple | PathLike, image: PathLike, *, walkthrough: bool = False) -> TraceResult:
    """Follow one image through one forward pass: every op's output statistics, each block's residual."""
    import torch

    from .image import load_image
    from .tracing import TraceOptions, trace_model
    from .tracing import walkthrough as _walkthrough

    img = load_image(image)  # a bad image fails here, before the model is built
    m = as_model(model)
    x = m.meta.preprocessing(img).unsqueeze(0)
    tr = trace_model(m.module, x, TraceOptions())
    probs = torch.softmax(tr.logits[0].float(), 0)
    p, idx = probs.max(0)
    top = {"index": int(idx), "label": m.class_names[int(idx)], "prob": float(p)}
    wt = _walkthrough(m.module, x, trace=tr) if walkthrough else None  # the same pass, not a second one
    return TraceResult(str(image), m.arch, list(x.shape), top, tr, m.weights, wt)


def gradflow(model: LoadedModel | tuple | PathLike | None = None, *, output: PathLike | None = None, quiet: bool = False,
             **options: Any) -> GradFlowReport:
    """Gradient flow through ResNet-N and plain-N (shortcuts removed), in both BatchNorm regimes.

    Args:
        model: measure this model; None builds ``options['arch']`` with ``options['weights']``.
        output: also draw the log-scale chart to this PNG.
        quiet: no progress display on stderr.
        options: fields of :class:`resnet_xray.tracing.gradflow.GradFlowOptions`.
    """
    from .tracing.gradflow import GradFlowOptions, measure_gradflow

    m = None if model is None else as_model(model)
    if m is not None:
        options = {"arch": m.arch, "weights": m.meta.weights, **options}
    opts = GradFlowOptions(**options)  # refuses bad values before minutes of measurement
    if output:
        from .atomic import check_writable

        check_writable(output, flag="-o", suffixes=(".png", ""))
    res = measure_gradflow(opts, model=None if m is None else m.module, quiet=quiet)
    if output:
        from .viz.gradflow import plot_gradflow

        plot_gradflow(res, output)
    weights = m.weights if m is not None else weights_info(opts.weights, opts.arch, seed=opts.seed)
    return GradFlowReport(res, weights, Path(output) if output else None)


def report(model: LoadedModel | tuple | PathLike, image: PathLike, out_dir: PathLike = "out/report", **options: Any) -> ReportOutput:
    """One self-contained HTML page (and report.json) that follows ``image`` through the network."""
    from .atomic import check_writable
    from .reporting import ReportOptions, build_report

    out = check_writable(out_dir, flag="-o", kind="dir")
    m = as_model(model)
    return ReportOutput(build_report(image, m.module, m.meta, ReportOptions(out_dir=out, **options)), m.weights)


def _check_batch(images: Sequence[PathLike], meta: ModelMeta):
    """The bundled photo plus ``images``, preprocessed into one batch (names, tensor, skipped)."""
    from .image import bundled_cat, load_batch

    return load_batch([bundled_cat(), *images], meta.preprocessing)


def fuse(model: LoadedModel | tuple | PathLike, output: PathLike | None = None, *, check: Sequence[PathLike] = ()) -> FuseResult:
    """Fold every BatchNorm into the conv before it; compare with the unfused model; save only if the check passes."""
    if output is not None:
        from .atomic import check_writable
        from .locks import file_lock

        with file_lock(output, "-o"):  # one writer per output file
            return _fuse(model, check_writable(output), check)
    return _fuse(model, None, check)


def _fuse(model: LoadedModel | tuple | PathLike, out: Path | None, check: Sequence[PathLike]) -> FuseResult:
    from .deploy.fuse import FusedBatchNorm, fuse_model, fusion_report
    from .model import save_checkpoint

    m = as_model(model)
    fused = fuse_model(m.module)
    _, x, skipped = _check_batch(check, m.meta)
    rep = fusion_report(m.module, fused, x)
    eq = rep.pop("check")
    rep["check"] = eq.to_dict()
    fused_meta = m.meta.with_change(FusedBatchNorm.of(fused))  # the change list says BN was folded
    saved = None
    if out is not None and eq.passed:  # a failed check writes nothing that looks usable
        saved = save_checkpoint(out, fused, fused_meta)
    counts = {k: rep.pop(k) for k in ("folded", "batchnorm_before", "batchnorm_after")}
    return FuseResult(LoadedModel(fused, fused_meta), check=rep, weights=m.weights, output=saved, skipped=skipped, **counts)


def export(model: LoadedModel | tuple | PathLike, output: PathLike, *, opset: int | None = None, dynamic_batch: bool = False,
           exporter: str = "dynamo", openvino: bool = True, check: Sequence[PathLike] = (), tensorrt: str | None = None,
           calib: PathLike | None = None) -> ExportResult:
    """Export to ONNX (and OpenVINO IR), each checked against eager PyTorch; optionally a TensorRT engine.

    The files are written and checked under temporary names and replace an earlier export at
    ``output`` only when every check passes. When one fails, the earlier files are left as they
    were, ``result.output`` is None and ``result.passed`` is False; the CLI exits 1 then.
    ``output`` is locked for the run (:func:`resnet_xray.locks.file_lock`).
    """
    from .atomic import check_suffix
    from .deploy.onnx import ExportFailed, ExportOptions, export_checked
    from .locks import file_lock

    opts = ExportOptions(opset=opset, dynamic_batch=dynamic_batch, exporter=exporter, openvino=openvino)  # refuses a bad opset first
    check_suffix(output, "-o", (".onnx",))
    if tensorrt:
        from .deploy.tensorrt import require_tensorrt

        require_tensorrt()  # fail in one line before the export, not after
    m = as_model(model)
    try:
        with file_lock(output, "-o"):
            path, rep, rep_ov = export_checked(m.module, output, opts, m.meta, list(check))
            res = ExportResult(path, rep, m.weights, None, path.with_suffix(".xml") if openvino else None, rep_ov)
            if tensorrt:
                res.engine, res.check_tensorrt = _tensorrt_engine(path, m.module, tensorrt, calib, list(check))
    except ExportFailed as e:
        return ExportResult(None, e.check, m.weights, None, None, e.check_openvino)
    return res


def _tensorrt_engine(onnx_path: Path, module: Any, precision: str, calib: PathLike | None,
                     check: list[PathLike]) -> tuple[Path | None, dict[str, Any]]:
    """Build a TensorRT engine from the checked ONNX file and check it against eager PyTorch.

    An engine that fails its check (or whose check cannot run) is removed: (None, the check).
    """
    from .deploy.tensorrt import TensorRTOptions, build_engine, check_engine

    engine = build_engine(onnx_path, onnx_path.with_suffix(f".{precision}.engine"), TensorRTOptions(precision, calib))
    try:
        rep = check_engine(engine, onnx_path, module, check)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise
    if not rep["passed"]:
        engine.unlink(missing_ok=True)
        return None, rep
    return engine, rep


def quantize(onnx_model: PathLike, calib: PathLike, output: PathLike, *, compare_torch: LoadedModel | tuple | PathLike | None = None,
             **options: Any) -> QuantizeResult:
    """Static INT8 (ONNX Runtime QDQ) calibrated on an image folder, with its agreement with FP32.

    Args:
        onnx_model: the FP32 ``.onnx`` from :func:`export` (its sidecar gives the preprocessing).
        calib: folder of calibration images (class folders also give accuracy).
        output: the INT8 ``.onnx`` to write.
        compare_torch: also build PyTorch's FX INT8 from this model, for comparison.
        options: fields of :class:`resnet_xray.deploy.quantize.QuantizeOptions`.
    """
    from .deploy.onnx import inspect_onnx
    from .deploy.quantize import QuantizeOptions, quantize_onnx

    opts = QuantizeOptions(**options)
    torch_model = None if compare_torch is None else as_model(compare_torch).module
    rep = quantize_onnx(onnx_model, calib, output, opts, torch_model=torch_model)
    return QuantizeResult(rep, WeightsInfo.from_sidecar(inspect_onnx(onnx_model).sidecar))


def bench(model: LoadedModel | tuple | PathLike, *, output: PathLike | None = None, **options: Any) -> BenchReport:
    """Every inference path side by side, in one process: latency, throughput, GFLOP/s vs measured peak.

    ``options`` are fields of :class:`resnet_xray.deploy.bench.BenchOptions`; ``output`` draws a bar chart.
    """
    from .deploy.bench import BenchOptions, run_bench, save_chart

    opts = BenchOptions(**options)
    if output:
        from .atomic import check_writable

        check_writable(output)
    m = as_model(model)
    res = run_bench(m.module, m.meta, opts)
    if output:
        save_chart(res, output)
    return BenchReport(res, m.weights)


def evaluate(models: PathLike | Sequence[PathLike], data: PathLike, **options: Any):
    """Accuracy of deployed models (``.onnx`` / ``.xml``) on a labelled folder, and each one's agreement with the first.

    Args:
        models: one deployed model, or several to compare; the first is the reference.
        data: an ImageFolder (class folders, or a dataset with ``val/``).
        options: fields of :class:`resnet_xray.deploy.runtime.EvaluateOptions` (``limit``, ``threads``).

    Returns:
        :class:`resnet_xray.deploy.runtime.EvalResult`; its ``to_dict()`` is ``resnet-xray evaluate --json``.
    """
    from .deploy.runtime import EvaluateOptions, evaluate_models

    opts = EvaluateOptions(**options)  # refuses bad values before any model is loaded
    paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    return evaluate_models(paths, data, limit=opts.limit, threads=opts.threads)


def finetune(data: PathLike, out_dir: PathLike, *, resume: bool = False, overwrite: bool = False, **options: Any) -> FinetuneResult:
    """Fine-tune on an image folder; writes best.pt, last.pt, metrics.csv, confusion.png, summary.json.

    ``out_dir`` is locked for the run; a folder holding an earlier run needs ``resume`` or ``overwrite``.

    ``options`` are fields of :class:`resnet_xray.train.recipe.FinetuneOptions` (``arch``,
    ``weights`` (where to start), ``epochs``, ``batch_size``, ``lr``, ``multitask`` ...).
    """
    from .train.finetune import finetune as _finetune
    from .train.recipe import FinetuneOptions

    opts = FinetuneOptions(**options)
    raw = _finetune(data, opts, out_dir, resume=resume, overwrite=overwrite)
    return FinetuneResult(raw, weights_info(opts.weights, opts.arch, seed=opts.seed))


def bench_data(data: PathLike, **options: Any) -> DataBenchResult:
    """Loader images/s against model-step images/s, and the share of a step spent waiting for data."""
    from .train.bench import DataBenchOptions
    from .train.bench import bench_data as _bench_data

    opts = DataBenchOptions(**options)
    # the step is timed on a freshly initialised model: its weights do not matter, only its shape
    return DataBenchResult(_bench_data(data, opts), WeightsInfo.random(f"random (seed {opts.seed})"))


def prune(model: LoadedModel | tuple | PathLike, data: PathLike | None = None, *, log=None, **options: Any) -> PruneReport:
    """Iterative structured channel pruning (importance -> prune -> fine-tune -> evaluate) to a MAC target.

    ``options`` are fields of :class:`resnet_xray.pruning.loop.PruneOptions`; ``data`` is an
    ImageFolder dataset for fine-tuning and accuracy (None: prune without recovery).
    """
    from .pruning.loop import PruneOptions
    from .pruning.loop import prune as _prune

    opts = PruneOptions(**options)
    m = as_model(model)
    loaders = prune_data(data, m.meta, opts)
    res = _prune(m.module, m.meta, opts, loaders, log=log or (lambda s: None))
    return PruneReport(res, m.weights)


def prune_data(data: PathLike | None, meta: ModelMeta, opts: Any, *, skip_flag: str | None = None):
    """Loaders for pruning's fine-tuning and evaluation, sized as ``opts`` says (None without data).

    ``skip_flag``: the option that sets ``opts.skip_unreadable``, named when a folder cannot be read.
    """
    if not data:
        return None
    from .pruning.loop import loader_options
    from .train.data import make_loaders

    return make_loaders(data, image_size=opts.input_size, batch_size=opts.batch_size, workers=opts.workers, seed=opts.seed,
                        skip_unreadable=opts.skip_unreadable, skip_flag=skip_flag, **loader_options(meta))


def preprocess(image: PathLike, *, output: PathLike | None = None, weights: str | None = None, arch: str | None = None) -> PreprocessResult:
    """Run the preprocessing on one image; optionally save the crop the network sees as a PNG."""
    from .preprocessing import PreprocessOptions, preprocess_image

    info = preprocess_image(image, PreprocessOptions(output=output, weights=weights, arch=arch))
    return PreprocessResult(info, weights_info(weights, arch))


PICTURES = ("features", "kernels", "cam", "stages")


@dataclass
class ShowResult:
    picture: str  # features | kernels | cam | stages
    path: Path  # the PNG written
    caption: str  # what the picture shows, as the CLI prints it
    details: dict[str, Any]  # the picture's numbers (channels drawn, CAM class and probability ...)
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {"picture": self.picture, "path": str(self.path), "caption": self.caption, **self.details,
                "weights": self.weights.to_dict()}


def show(model: LoadedModel | tuple | PathLike, picture: str, output: PathLike, image: PathLike | None = None,
         **options: Any) -> ShowResult:
    """Draw one picture as a PNG: ``features`` (a layer's feature maps), ``kernels`` (a conv's filters),
    ``cam`` (Grad-CAM and friends) or ``stages`` (one sheet per stage). ``options`` are fields of the
    picture's options dataclass (FeaturesOptions, KernelsOptions, CamOptions, StagesOptions)."""
    from .viz import show as _show

    if picture not in PICTURES:
        raise OptionError(f"picture {picture!r}: choose one of {', '.join(PICTURES)}")
    if picture != "kernels" and image is None:
        raise OptionError(f"picture {picture}: needs an image")
    m = as_model(model)
    if picture == "features":
        from .viz.features import FeaturesOptions

        path, grid = _show.show_features(image, m.module, m.meta, output, FeaturesOptions(**options))
        return ShowResult(picture, Path(path), grid.caption(), {"layer": grid.layer, "channels": list(grid.channels)}, m.weights)
    if picture == "kernels":
        from .viz.kernels import KernelsOptions

        path, caption = _show.show_kernels(m.module, output, KernelsOptions(**options), weights=m.meta)
        return ShowResult(picture, Path(path), caption, {}, m.weights)
    if picture == "cam":
        from .viz.cam import METHOD_TITLES, CamOptions, format_prob

        path, r = _show.show_cam(image, m.module, m.meta, output, CamOptions(**options))
        caption = (f"class #{r.class_index} {r.label} (p = {format_prob(r.prob)}, {'predicted' if r.predicted else 'requested'}); "
                   f"{', '.join(METHOD_TITLES[k] for k in r.maps)} on {r.layer}")
        return ShowResult(picture, Path(path), caption, {"class_index": r.class_index, "label": r.label, "prob": r.prob,
                                                         "predicted": r.predicted, "methods": list(r.maps), "layer": r.layer},
                          m.weights)
    from .viz.stages import StagesOptions

    path = _show.show_stages(image, m.module, m.meta, output, StagesOptions(**options))
    return ShowResult(picture, Path(path), "one sheet per stage", {}, m.weights)


@dataclass
class DatasetResult:
    info: dict[str, Any]  # classes, per-class counts, size, generator version, task ...
    out: Path

    def to_dict(self) -> dict[str, Any]:
        # generated images, no model: the provenance object says so, as in every --json
        return {**self.info, "out": str(self.out), "weights": WeightsInfo.none("no model: a generated dataset").to_dict()}


def make_dataset(out: PathLike, *, quiet: bool = True, **options: Any) -> DatasetResult:
    """Generate the reference task (or its transfer task) into ``out``: train/, val/, boxes.csv, dataset.json.
    ``options`` are fields of :class:`resnet_xray.datasets.reference.ReferenceOptions`."""
    from .datasets.reference import ReferenceOptions, make_reference_dataset

    return DatasetResult(make_reference_dataset(out, ReferenceOptions(**options), quiet=quiet), Path(out))


@dataclass
class PreprocessResult:
    info: dict[str, Any]  # image, original_size, transforms, shape, dtype, channel_mean/std, output
    weights: WeightsInfo  # whose declared transforms were used

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "weights": self.weights.to_dict()}


__all__ = [
    "LoadedModel", "load_model", "as_model", "classify", "anatomy", "trace", "gradflow", "report", "fuse", "export",
    "quantize", "bench", "evaluate", "finetune", "bench_data", "prune", "preprocess", "show", "make_dataset",
    "AnatomyResult", "TraceResult", "GradFlowReport", "ReportOutput", "FuseResult", "ExportResult", "QuantizeResult",
    "BenchReport", "FinetuneResult", "DataBenchResult", "PruneReport", "PreprocessResult", "ShowResult", "DatasetResult",
]
