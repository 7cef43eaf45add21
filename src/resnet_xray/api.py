"""The public Python API: one verb per capability, the same verbs as the CLI.

Every verb takes a model (a :class:`LoadedModel` from :func:`load_model`, or a
``(module, meta)`` pair, or a weights path), then ``options: XOptions | None = None``
and ``**overrides`` (fields of that options dataclass), and returns the feature's own
result, whose ``.to_dict()`` is exactly the document the matching command prints with
``--json`` and whose ``.weights`` says where the weights came from. The CLI is
parse -> call one of these -> render, so the two cannot drift apart (docs/api.md).
Heavy libraries load inside each verb, so ``import resnet_xray`` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import XrayError
from .options import OptionError, configure

if TYPE_CHECKING:  # imported for annotations only: importing them loads torch
    from .batch.options import BatchOptions, BatchResult
    from .batch.scoring import BatchEvalResult
    from .classification import ClassifyOptions, ClassifyResult
    from .datasets.reference import DatasetResult, ReferenceOptions
    from .deploy.bench import BenchOptions, BenchResult
    from .deploy.export import ExportResult
    from .deploy.fuse import FuseOptions, FuseResult
    from .deploy.layers import LayersOptions, LayersResult
    from .deploy.onnx import ExportOptions
    from .deploy.optimize import OptimizeOptions, OptimizeResult
    from .deploy.quantize import QuantizeOptions, QuantizeResult
    from .deploy.runtime import EvalResult, EvaluateOptions
    from .dissect import Anatomy, AnatomyOptions
    from .model import LoadedModel
    from .preprocessing import PreprocessOptions, PreprocessResult
    from .pruning.loop import PruneOptions, PruneResult
    from .reporting import ReportOptions, ReportResult
    from .tracing import TraceOptions
    from .tracing.gradflow import GradFlowOptions, GradFlowResult
    from .tracing.result import TraceResult
    from .train.bench import DataBenchOptions
    from .train.recipe import FinetuneOptions
    from .train.results import DataBenchResult, FinetuneResult
    from .viz.show import ShowResult
    from .explorer.server import Explorer
    from .explorer.workspace import ExploreOptions

PathLike = str | os.PathLike
Model = Any  # LoadedModel | (module, meta) | a weights path | a torchvision arch name


def load_model(arch: str | None = None, weights: PathLike = "imagenet", *, seed: int = 0, progress: bool = True,
               **options: Any) -> LoadedModel:
    """Build ``arch`` (None: the checkpoint's, else resnet50) and load ``weights``: ``imagenet[-v1|-v2]`` (torchvision),
    ``random`` (seeded), or a state_dict, checkpoint or safetensors file. The one way every command gets a model."""
    from . import model

    return model.LoadedModel(*model.load_model(arch, weights, seed=seed, progress=progress, **options))


def as_model(model: Model, *, arch: str | None = None) -> LoadedModel:
    """What every verb accepts, as one LoadedModel: a LoadedModel, a ``(module, meta)`` pair or a weights path."""
    from . import model as _model

    return _model.as_model(model, arch=arch)


def classify(model: Model, images: Iterable[PathLike], options: ClassifyOptions | None = None, **overrides: Any) -> ClassifyResult:
    """Top-k labels for every readable image in ``images`` (files and folders); unreadable files are listed in
    ``result.skipped``, and :class:`XrayError` is raised when nothing at all could be classified."""
    from .classification import ClassifyOptions
    from .classification import classify as _classify

    opts = configure(ClassifyOptions, options, overrides)  # refuses bad values first
    m = as_model(model)
    images = list(images)
    result = _classify(images, m.module, m.meta, opts)
    if not result.results and not result.skipped:
        raise XrayError(f"no image files found in: {' '.join(map(str, images))}")
    if not result.results and len(result.skipped) == 1:
        s = result.skipped[0]
        raise XrayError(f"{s.path}: {s.reason}")
    return result


def anatomy(model: Model, options: AnatomyOptions | None = None, **overrides: Any) -> Anatomy:
    """The measured layer table, Table 1 stages, totals and breakdowns at ``input_size`` (None: the model's crop)."""
    from .dissect import AnatomyOptions, analyze

    opts = configure(AnatomyOptions, options, overrides)
    m = as_model(model)
    return replace(analyze(m.module, m.arch, opts, crop=m.meta.preprocessing.crop), weights=m.weights)


def trace(model: Model, image: PathLike, options: TraceOptions | None = None, *, walkthrough: bool = False,
          **overrides: Any) -> TraceResult:
    """Follow one image through one forward pass: every op's output statistics, each block's residual."""
    from .image import load_image
    from .tracing import TraceOptions
    from .tracing.result import follow

    opts = configure(TraceOptions, options, overrides)
    picture = load_image(image)  # a bad image fails here, before the model is built
    return follow(as_model(model), image, opts, picture=picture, with_walkthrough=walkthrough)


def gradflow(model: Model | None = None, options: GradFlowOptions | None = None, *, output: PathLike | None = None,
             quiet: bool = False, **overrides: Any) -> GradFlowResult:
    """Gradient flow through ResNet-N and plain-N (shortcuts removed), in both BatchNorm regimes, of ``model`` (None:
    ``arch`` with ``weights`` from the options); ``output`` also draws the chart (PNG); ``quiet``: no progress."""
    from .atomic import check_writable
    from .model import weights_info
    from .tracing.gradflow import GradFlowOptions, measure_gradflow

    m = None if model is None else as_model(model)
    if m is not None:
        overrides = {"arch": m.arch, "weights": m.meta.weights, **overrides}
    opts = configure(GradFlowOptions, options, overrides)  # refuses bad values before minutes of measurement
    if output:
        check_writable(output, flag="-o", suffixes=(".png", ""))
    res = measure_gradflow(opts, model=None if m is None else m.module, quiet=quiet)
    if output:
        from .viz.gradflow import plot_gradflow

        plot_gradflow(res, output)
        res.plot = Path(output)
    res.weights = m.weights if m is not None else weights_info(opts.weights, opts.arch, seed=opts.seed)
    return res


def report(model: Model, image: PathLike, options: ReportOptions | None = None, **overrides: Any) -> ReportResult:
    """One self-contained HTML page (and report.json) that follows ``image`` through the network (``out_dir``)."""
    from .atomic import check_writable
    from .reporting import ReportOptions, build_report

    opts = configure(ReportOptions, options, overrides)
    opts = replace(opts, out_dir=check_writable(opts.out_dir, flag="-o", kind="dir"))  # the caller's options stay as given
    m = as_model(model)
    res = build_report(image, m.module, m.meta, opts)
    res.weights = m.weights
    return res


def fuse(model: Model, output: PathLike | None = None, options: FuseOptions | None = None, *, check: Sequence[PathLike] = (),
         **overrides: Any) -> FuseResult:
    """Fold every BatchNorm into the conv before it; compare with the unfused model; save only if the check passes."""
    from .atomic import check_writable
    from .deploy.fuse import FuseOptions, fuse_checked
    from .locks import file_lock

    opts = configure(FuseOptions, options, overrides)
    if output is None:
        return fuse_checked(as_model(model), None, check, opts)
    with file_lock(output, "-o"):  # one writer per output file
        return fuse_checked(as_model(model), check_writable(output), check, opts)


def export(model: Model, output: PathLike, options: ExportOptions | None = None, *, check: Sequence[PathLike] = (),
           tensorrt: str | None = None, calib: PathLike | None = None, **overrides: Any) -> ExportResult:
    """Export to ONNX (and OpenVINO IR), each checked against eager PyTorch; optionally a TensorRT engine. The files
    replace an earlier export at ``output`` (locked for the run) only when every check passes; else ``.passed`` is False."""
    from .atomic import check_suffix
    from .deploy.export import export_model
    from .deploy.onnx import ExportOptions
    from .deploy.tensorrt import require_tensorrt

    if options is None:
        overrides = {"openvino": True, **overrides}  # the verb writes the IR too unless told not to, as the command does
    opts = configure(ExportOptions, options, overrides)  # refuses a bad opset first
    check_suffix(output, "-o", (".onnx",))
    if tensorrt:
        require_tensorrt()  # fail in one line before the export, not after
    return export_model(as_model(model), output, opts, list(check), tensorrt, calib)


def quantize(onnx_model: PathLike, calib: PathLike, output: PathLike, options: QuantizeOptions | None = None, *,
             compare_torch: Model | None = None, **overrides: Any) -> QuantizeResult:
    """Static INT8 of the FP32 ``.onnx`` from :func:`export`, calibrated on an image folder (ORT QDQ, or NNCF for OpenVINO),
    with its agreement with FP32; ``compare_torch`` also builds PyTorch's FX INT8 from this model, for comparison."""
    from .deploy.onnx import inspect_onnx
    from .deploy.quantize import QuantizeOptions, QuantizeResult, quantize_onnx
    from .provenance import WeightsInfo

    opts = configure(QuantizeOptions, options, overrides)
    torch_model = None if compare_torch is None else as_model(compare_torch).module
    rep = quantize_onnx(onnx_model, calib, output, opts, torch_model=torch_model)
    return QuantizeResult.from_report(rep, WeightsInfo.of(inspect_onnx(onnx_model).sidecar))


def bench(model: Model, options: BenchOptions | None = None, *, output: PathLike | None = None, **overrides: Any) -> BenchResult:
    """Every inference path side by side, in one process: latency, throughput, GFLOP/s vs measured peak (``output``: a chart)."""
    from .atomic import check_writable
    from .deploy.bench import BenchOptions, run_bench

    opts = configure(BenchOptions, options, overrides)
    if output:
        check_writable(output)
    m = as_model(model)
    res = run_bench(m.module, m.meta, opts)
    res.weights = m.weights
    if output:
        from .deploy.charts import save_chart  # matplotlib only when a chart is asked for

        save_chart(res, output)
    return res


def evaluate(models: PathLike | Sequence[PathLike], data: PathLike, options: EvaluateOptions | None = None,
             **overrides: Any) -> EvalResult:
    """Accuracy of deployed models (``.onnx`` / ``.xml``) on a labelled folder, and each one's agreement with the first."""
    from .deploy.runtime import EvaluateOptions, evaluate_models

    opts = configure(EvaluateOptions, options, overrides)  # refuses bad values before any model is loaded
    paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    return evaluate_models(paths, data, limit=opts.limit, threads=opts.threads)


def finetune(data: PathLike, out_dir: PathLike, options: FinetuneOptions | None = None, *, resume: bool = False,
             overwrite: bool = False, **overrides: Any) -> FinetuneResult:
    """Fine-tune on an image folder into ``out_dir`` (locked; an earlier run there needs ``resume`` or ``overwrite``)."""
    from .model import weights_info
    from .train.job import finetune as _finetune
    from .train.recipe import FinetuneOptions
    from .train.results import FinetuneResult

    opts = configure(FinetuneOptions, options, overrides)
    run = _finetune(data, opts, out_dir, resume=resume, overwrite=overwrite)
    return FinetuneResult.from_run(run, weights_info(opts.weights, opts.arch, seed=opts.seed))


def bench_data(data: PathLike, options: DataBenchOptions | None = None, **overrides: Any) -> DataBenchResult:
    """Loader images/s against model-step images/s, and the share of a step spent waiting for data."""
    from .provenance import WeightsInfo
    from .train.bench import DataBenchOptions
    from .train.bench import bench_data as _bench_data
    from .train.results import DataBenchResult

    opts = configure(DataBenchOptions, options, overrides)
    # the step is timed on a freshly initialised model: its weights do not matter, only its shape
    return DataBenchResult(**_bench_data(data, opts), weights=WeightsInfo.random(f"random (seed {opts.seed})"))


def prune(model: Model, data: PathLike | None = None, options: PruneOptions | None = None, *,
          log: Callable[[str], None] | None = None, **overrides: Any) -> PruneResult:
    """Iterative structured channel pruning to a MAC target; ``data``: an ImageFolder for fine-tuning (None: no recovery)."""
    from .deploy.search import prune_with_ort as _prune
    from .pruning.loop import PruneOptions, prune_loaders

    opts = configure(PruneOptions, options, overrides)
    m = as_model(model)
    res = _prune(m.module, m.meta, opts, prune_loaders(data, m.meta, opts), log=log or (lambda s: None))
    res.weights = m.weights
    return res


def preprocess(image: PathLike, options: PreprocessOptions | None = None, **overrides: Any) -> PreprocessResult:
    """Run the preprocessing on one image; optionally save the crop the network sees as a PNG (``output``)."""
    from .model import weights_info
    from .preprocessing import PreprocessOptions, PreprocessResult, preprocess_image

    opts = configure(PreprocessOptions, options, overrides)
    return PreprocessResult(**preprocess_image(image, opts), weights=weights_info(opts.weights, opts.arch))


def show(model: Model, picture: str, output: PathLike, image: PathLike | None = None, options: Any = None,
         **overrides: Any) -> ShowResult:
    """Draw one picture as a PNG: ``features``, ``kernels``, ``cam`` or ``stages``; ``options`` is the picture's options
    dataclass (FeaturesOptions, KernelsOptions, CamOptions, StagesOptions)."""
    from .viz.show import OPTIONS, PICTURES, draw

    if picture not in PICTURES:
        raise OptionError("picture", picture, f"choose one of {', '.join(PICTURES)}")
    if picture != "kernels" and image is None:
        raise OptionError("picture", picture, "needs an image")
    opts = configure(OPTIONS[picture], options, overrides)
    return draw(as_model(model), picture, output, image, opts)


def make_dataset(out: PathLike, options: ReferenceOptions | None = None, *, quiet: bool = True, **overrides: Any) -> DatasetResult:
    """Generate the reference task (or its transfer task) into ``out``: train/, val/, boxes.csv, dataset.json."""
    from .datasets.reference import DatasetResult, ReferenceOptions, make_reference_dataset

    opts = configure(ReferenceOptions, options, overrides)
    return DatasetResult(make_reference_dataset(out, opts, quiet=quiet), Path(out))


def optimize(checkpoint: PathLike, options: OptimizeOptions | None = None, *, log: Callable[[str], None] | None = None,
             **overrides: Any) -> OptimizeResult:
    """prune -> fine-tune -> fuse -> export -> INT8 on each engine -> measure: the fastest model within ``max_drop``."""
    from .deploy.optimize import OptimizeOptions
    from .deploy.optimize import optimize as _optimize

    return _optimize(str(checkpoint), configure(OptimizeOptions, options, overrides), log=log)


def classify_batch(model: Model, images: Iterable[PathLike], out: PathLike, options: BatchOptions | None = None, *,
                   manifest: PathLike | None = None, ray: str | None = None, **overrides: Any) -> BatchResult:
    """Classify files, folders and globs (and a ``manifest`` of paths) into ``out`` (``.jsonl`` / ``.parquet``), one record
    per image, resumable: every image ends up there exactly once. ``model`` may be a deployed ``.xml`` / ``.onnx`` (its
    engine's throughput mode); ``ray``: a Ray address to run on as a Ray Data pipeline (``"local"``: a local instance)."""
    from .batch.job import classify_to
    from .batch.options import BatchOptions

    opts = configure(BatchOptions, options, overrides)  # refuses bad values before the model is loaded
    return classify_to(model, images, out, opts, manifest=manifest, ray=ray)


def evaluate_batch(model: Model, data: PathLike, out: PathLike, options: BatchOptions | None = None, *,
                   ray: str | None = None, **overrides: Any) -> BatchEvalResult:
    """Top-1/top-5 accuracy of one model on a labelled folder (its ``val/`` when it has one) through the batch
    pipeline: the records go to ``out`` first, so a killed run resumes like :func:`classify_batch`."""
    from .batch.options import BatchOptions
    from .batch.scoring import evaluate_to

    opts = configure(BatchOptions, options, overrides)
    return evaluate_to(model, data, out, opts, ray=ray)


def explore(model: Model, options: ExploreOptions | None = None, *, compare: Sequence[Model] = (),
            artefacts: Sequence[PathLike] = (), layers: Sequence[PathLike] = (), **overrides: Any) -> Explorer:
    """The local explorer's app over ``model``, ``compare`` models (layer by layer), deployed ``artefacts`` (at the
    output only) and per-layer tables ``layers --json`` wrote: ``.serve()`` runs it."""
    from .deploy.layerchart import read_layers_doc
    from .deploy.runtime import load_deployed
    from .explorer.server import open_explorer
    from .explorer.workspace import ExploreOptions
    from .model import LoadedModel

    opts = configure(ExploreOptions, options, overrides)  # a bad port is refused before any model is loaded
    tables = [{"file": str(p), **read_layers_doc(p, "--layers")} for p in layers]
    return open_explorer([as_model(model), *(as_model(c) for c in compare)], [LoadedModel(*load_deployed(p)) for p in artefacts], opts,
                         tables)


def layers(model: Model, options: LayersOptions | None = None, *, against: Model | None = None, output: PathLike | None = None,
           **overrides: Any) -> LayersResult:
    """Each PyTorch layer's MACs, its time on each engine's own profiler, its error against ``against``; ``model`` and
    ``against`` are deployed files (``.onnx`` / ``.xml``) or models; ``output`` also draws the chart (PNG)."""
    from .deploy.layers import LayersOptions, run_layers

    return run_layers(model, against, configure(LayersOptions, options, overrides), output)  # options refused before any load


__all__ = [
    "LoadedModel", "load_model", "as_model", "classify", "anatomy", "trace", "gradflow", "report", "fuse",
    "export", "quantize", "bench", "evaluate", "finetune", "bench_data", "prune", "preprocess", "show", "make_dataset",
    "optimize", "classify_batch", "evaluate_batch", "explore", "layers",
]


def __getattr__(name: str) -> Any:
    # these live with the model (resnet_xray.model), which imports torch: loaded on first use only
    if name in ("LoadedModel", "weights_info"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
