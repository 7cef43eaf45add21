"""The per-layer table of a deployed model: each PyTorch layer's MACs, its time on each engine, its error.

One row per layer a user knows (``layer3.2.conv2``), or per group an engine fuses, named after
its conv (see :mod:`.graphmap`). Times come from each engine's own profiler (:mod:`.profile`),
errors from intermediate outputs set against a reference model (:mod:`.probes`): an INT8 model
against its FP32 parent, a pruned one against the dense one. Columns are keyed
``ENGINE-PRECISION`` (``ort-int8``), as ``bench`` names its paths.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import check_writable
from ..dissect.layers import layer_table
from ..errors import XrayError
from ..image import Preprocessing, Skipped, bundled_cat
from ..model import as_model
from ..options import at_least, image_side, one_of, option, thread_count
from ..provenance import WeightsInfo
from ..units import si, table
from .bench import machine_info
from .data import image_batches, list_images, spread
from .graphmap import OTHER, LayerGroups, fx_nodes, group_nodes, openvino_nodes, openvino_op, tag_onnx, tag_openvino
from .layerchart import save_layers_chart
from .onnx import TIMING_EXPORTER, ExportOptions, export_onnx, inspect_onnx
from .probes import Probe, layer_errors, openvino_probe, ort_probe, torch_probe
from .profile import LayerTimes, openvino_layer_times, ort_layer_times, torch_layer_times
from .qdq import QdqSettings
from .quantize import QuantizeOptions, detect_cpu_int8
from .runtime import engine_of, load_deployed
from .sensitivity import UNITS, SensitivityReport, block_of, rank_sensitivity

ENGINES = ("ort", "openvino", "torch")
SORTS = ("network", "time", "error")


@dataclass
class LayersOptions:
    engines: tuple[str, ...] = option((), "engines to profile each layer on: ort, openvino, torch (default: the model's own: "
                                          "ort for .onnx, openvino for .xml, torch for a PyTorch model)")
    images: str | None = option(None, "folder of images the per-layer error is measured on (default: the bundled photo)")
    max_images: int = option(100, "use at most this many images of --images, spread over the folder")
    sort: str = option("network", "row order: network (execution order), time (slowest first on the first engine), error")
    threads: int | None = option(None, "intra-op threads for every engine (None: their defaults)")
    runs: int = option(20, "profiled runs per engine and model after warm-up; times are means over the fastest 80%")
    warmup: int = option(5, "untimed runs first")
    input_size: int | None = option(None, "square side for a PyTorch model (None: its preprocessing's crop); files take their own")
    sensitivity: str | None = option(None, "also rank each layer (or block) by the agreement gained keeping it in float; "
                                     "needs an INT8 MODEL, --against its FP32 .onnx and --images")
    calib: str | None = option(None, "calibration images for the sensitivity variants (default: the folder the INT8 model names)")
    progress: bool = True

    def __post_init__(self) -> None:
        # --engine ort --engine openvino and --engine ort,openvino mean the same
        self.engines = tuple(dict.fromkeys(e.strip() for item in self.engines for e in str(item).split(",") if e.strip()))
        for e in self.engines:
            one_of("engines", e, ENGINES)
        one_of("sort", self.sort, SORTS)
        at_least("max_images", self.max_images, 1)
        at_least("runs", self.runs, 1)
        at_least("warmup", self.warmup, 0)
        thread_count("threads", self.threads)
        image_side("input_size", self.input_size, allow_none=True)
        if self.sensitivity is not None:
            one_of("sensitivity", self.sensitivity, UNITS)


@dataclass
class LayerRow:
    name: str  # the PyTorch layer (layer3.2.conv2), or a fused group named after its conv
    kind: str  # conv | fc | maxpool | avgpool | other
    macs: int  # per image, of the layer itself (element operations for pools)
    output_shape: list[int]  # of the layer itself, without the batch
    times_ms: dict[str, float] = field(default_factory=dict)  # ENGINE-PRECISION -> ms per image (mean over the runs kept)
    speedup: dict[str, float] = field(default_factory=dict)  # engine -> reference time / model time
    error: dict[str, float] | None = None  # against the reference at the row's output; None: no reference or no match
    kernels: dict[str, str] = field(default_factory=dict)  # ENGINE-PRECISION -> the kernel the engine chose
    channels: dict[str, int] | None = None  # {"kept", "of"}: output channels against the reference, where they differ
    sensitivity: dict[str, Any] | None = None  # {"unit", "rank", "agreement", "gain"}: keeping its layer (or block) in float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.error is not None:
            d["error"] = {k: (None if not math.isfinite(v) else v) for k, v in self.error.items()}
        return d


@dataclass
class LayersResult:
    model: str
    reference: str | None
    rows: list[LayerRow]  # in network order
    end_to_end_ms: dict[str, float]  # ENGINE-PRECISION -> wall-clock latency of the profiled runs
    sum_check: dict[str, dict[str, Any]]  # ENGINE-PRECISION -> per-layer sum vs end to end
    keys: dict[str, str]  # ENGINE-PRECISION -> "model" or "reference"
    error_engine: str | None  # the engine whose intermediate outputs the errors come from
    images: int  # images the errors are averaged over
    machine: dict[str, Any]
    options: LayersOptions
    weights: WeightsInfo | None = None
    skipped: list[Skipped] = field(default_factory=list)
    chart: Path | None = None
    sensitivity: SensitivityReport | None = None  # agreement gained keeping each layer (or block) in float, ranked

    def sorted_rows(self) -> list[LayerRow]:
        if self.options.sort == "time":
            key = next((k for k, who in self.keys.items() if who == "model"), None)
            return sorted(self.rows, key=lambda r: -r.times_ms.get(key, 0.0))
        if self.options.sort == "error":
            return sorted(self.rows, key=lambda r: -(r.error or {}).get("rel_l2", -1.0))
        return list(self.rows)

    def to_dict(self) -> dict[str, Any]:
        index = {id(r): i for i, r in enumerate(self.rows)}  # the position in the network, whatever the sort
        return {
            "model": self.model, "reference": self.reference,
            "rows": [{**r.to_dict(), "index": index[id(r)]} for r in self.sorted_rows()],
            "end_to_end_ms": self.end_to_end_ms, "sum_check": self.sum_check, "keys": self.keys,
            "error_engine": self.error_engine, "images": self.images, "machine": self.machine,
            "options": asdict(self.options), "weights": self.weights.to_dict() if self.weights else None,
            "skipped": [asdict(s) for s in self.skipped], "chart": str(self.chart) if self.chart else None,
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
        }

    def table(self) -> str:
        keys = list(self.keys)
        speed = [e for e in self.options.engines if any(e in r.speedup for r in self.rows)]
        first = keys[0] if keys else None
        header = ["layer", "MACs", "output", *(f"{k} ms" for k in keys), *(f"{e} x" for e in speed)]
        has_err = any(r.error for r in self.rows)
        has_ch = any(r.channels for r in self.rows)
        has_sens = any(r.sensitivity for r in self.rows)
        header += (["rel L2", "SQNR dB", "cosine"] if has_err else []) + (["kept"] if has_ch else [])
        header += (["in float"] if has_sens else []) + [f"{first} kernel"]
        out = []
        for r in self.sorted_rows():
            cells = [r.name, si(r.macs) if r.macs else "", "x".join(map(str, r.output_shape)),
                     *(_ms(r.times_ms.get(k)) for k in keys), *(_x(r.speedup.get(e)) for e in speed)]
            if has_err:
                e = r.error or {}
                cells += [_g(e.get("rel_l2")), _g(e.get("sqnr_db"), ".1f"), _g(e.get("cosine"), ".5f")]
            if has_ch:
                cells.append(f"{r.channels['kept']}/{r.channels['of']}" if r.channels else "")
            if has_sens:
                sv = r.sensitivity
                cells.append(f"#{sv['rank']} {sv['agreement']:.1%}" if sv else "")
            out.append(cells + [r.kernels.get(first, "")])
        align = "lrl" + "r" * (len(header) - 4) + "l"
        return table(header, out, align)


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _g(v: float | None, fmt: str = ".3g") -> str:
    return "" if v is None else format(v, fmt)


# --- the models, as each engine takes them ---


@dataclass
class Subject:
    """One model to profile: a deployed file, or a PyTorch module (exported for ONNX Runtime and OpenVINO on demand)."""

    label: str
    precision: str  # fp32 | int8 | bf16 | int8+bf16 (as load_deployed labels what ran)
    pre: Preprocessing
    path: Path | None = None  # the .onnx or .xml given
    module: Any = None  # the nn.Module, for the torch engine
    meta: Any = None
    exported: Path | None = None  # the module exported to ONNX, once an engine needed it

    @property
    def size(self) -> int:
        return self.pre.crop

    @property
    def float_precision(self) -> str:
        """What OpenVINO is asked to compute float layers in: as the file ran on loading (bf16 only where granted)."""
        return "bf16" if "bf16" in self.precision else "f32"

    @property
    def own_engine(self) -> str:
        """The engine that runs this model as it is: ONNX Runtime for .onnx, OpenVINO for .xml, PyTorch for a module."""
        if self.path is None:
            return "torch"
        return "openvino" if self.path.suffix.lower() == ".xml" else "ort"

    def runs_on(self, engine: str) -> bool:
        if engine == "torch":
            return self.module is not None
        if engine == "ort":
            return self.module is not None or (self.path is not None and self.path.suffix.lower() == ".onnx")
        return True

    def onnx_file(self, work: Path) -> Path:
        if self.path is not None and self.path.suffix.lower() == ".onnx":
            return self.path
        if self.exported is None:
            self.exported = export_onnx(self.module, work / f"{_slug(self.label)}.onnx",
                                        ExportOptions(exporter=TIMING_EXPORTER, input_size=self.size), self.meta)
        return self.exported

    def openvino_model(self, work: Path) -> Any:
        import openvino as ov

        src = self.path if self.path is not None else self.onnx_file(work)
        return ov.Core().read_model(str(src))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[-60:]


def subject(model: Any, flag: str, size: int | None = None) -> Subject:
    """A deployed file (``.onnx`` / ``.xml``) or a loaded PyTorch model (at ``size`` px, None: its crop) as a :class:`Subject`."""
    if isinstance(model, (str, os.PathLike)):
        engine_of(model, flag)  # a clear error for any other suffix
        dm, meta = load_deployed(model, flag=flag)
        if (dm.fixed_batch or 1) > 1:
            raise XrayError(f"{flag} {model}: has a fixed batch of {dm.fixed_batch}; layers runs one image at a time "
                            "(export it with a batch of 1 or --dynamic-batch)")
        return Subject(str(model), dm.precision, meta.preprocessing, path=Path(model), meta=meta)
    pre = model.meta.preprocessing
    if size and size != pre.crop:
        pre = pre.scaled_to(size, f"{pre.source}, scaled to {size} px for layers")
    return Subject(f"{model.meta.arch} ({model.meta.weights})", "fp32", pre, module=model.module.eval(), meta=model.meta)


def _refuse_unrunnable(s: Subject, engines: tuple[str, ...], flag: str) -> None:
    for e in engines:
        if s.runs_on(e):
            continue
        if e == "torch":
            raise XrayError(f"--engine torch: {flag} {s.label} is a deployed file; the torch engine profiles a PyTorch "
                            "model (a checkpoint, or --arch/--weights)")
        raise XrayError(f"--engine ort: {flag} {s.label} is an OpenVINO IR; ONNX Runtime runs the .onnx it was made from")


# --- measuring ---


def _layer_times(engine: str, s: Subject, key: str, x: np.ndarray, opts: LayersOptions, work: Path) -> LayerTimes:
    kw = {"threads": opts.threads, "runs": opts.runs, "warmup": opts.warmup}
    if engine == "torch":
        return torch_layer_times(s.module, x, key, **kw)
    if engine == "openvino":
        model = s.openvino_model(work)
        _, rows = tag_openvino(model)
        return openvino_layer_times(model, rows, x, key, precision=s.float_precision, **kw)
    import onnx

    proto = onnx.load(str(s.onnx_file(work)))
    _, rows = tag_onnx(proto)
    tagged = work / f"{key}.tagged.onnx"
    onnx.save(proto, str(tagged))
    return ort_layer_times(tagged, rows, x, key, **kw)


def _probe(engine: str, s: Subject, opts: LayersOptions, work: Path, key: str) -> Probe:
    if engine == "torch":
        return torch_probe(s.module)
    if engine == "openvino":
        model = s.openvino_model(work)
        groups, _ = tag_openvino(model)
        return openvino_probe(model, groups, opts.threads, s.float_precision)
    import onnx

    proto = onnx.load(str(s.onnx_file(work)))
    groups, _ = tag_onnx(proto)
    probe_dir = work / f"{key}.probe"
    probe_dir.mkdir(exist_ok=True)
    return ort_probe(proto, groups, probe_dir, opts.threads)


def layer_shapes(s: Subject, work: Path) -> tuple[LayerGroups, dict[str, tuple[int, list[int]]]]:
    """The rows of ``s`` in network order, and each one's (MACs, output shape): dissect's for a module, else the IR's."""
    if s.module is not None:
        from torch import fx

        groups = group_nodes(fx_nodes(fx.symbolic_trace(s.module)))
        rows = {r.name: (r.macs, list(r.output_shape)) for r in layer_table(s.module, s.size)}
        return groups, {name: rows.get(name, (0, [])) for name in groups.order}
    model = s.openvino_model(work)
    groups = group_nodes(openvino_nodes(model))
    return groups, {name: _op_cost(openvino_op(model, groups.anchor[name])) for name in groups.order}


def _op_cost(op: Any) -> tuple[int, list[int]]:
    """(MACs, output shape without the batch) of a conv, fc or pool op of an OpenVINO model, as dissect counts them."""
    out = [d.get_length() for d in op.get_output_partial_shape(0)]
    elems = math.prod(out[1:])
    t = op.get_type_name()
    if t in ("Convolution", "GroupConvolution"):  # weights [(G,) Cout, Cin / G, kh, kw]
        w = [d.get_length() for d in op.get_input_partial_shape(1)]
        return elems * math.prod(w[-3:]), out[1:]
    if t == "MatMul":
        return elems * op.get_input_partial_shape(0)[-1].get_length(), out[1:]
    if t == "MaxPool":
        k = list(op.get_attributes().get("kernel", [1, 1]))
        return elems * (math.prod(k) - 1), out[1:]
    return math.prod(d.get_length() for d in list(op.get_input_partial_shape(0))[1:]), out[1:]


def profile_layers(model: Any, reference: Any, opts: LayersOptions, work: Path) -> LayersResult:
    """The per-layer table of ``model`` (a deployed path or a loaded model), against ``reference`` when given."""
    s = subject(model, "MODEL", opts.input_size)
    r = subject(reference, "--against", opts.input_size) if reference is not None else None
    if not opts.engines:
        opts = replace(opts, engines=(s.own_engine,))
    for who, flag in ((s, "MODEL"), (r, "--against")):
        if who is not None:
            _refuse_unrunnable(who, opts.engines, flag)
    if r is not None and r.size != s.size:
        raise XrayError(f"--against {r.label}: takes {r.size} px images, MODEL {s.size} px; compare models of one network")
    images, skipped = _images(opts, s.pre)
    keys = _keys(opts.engines, s, r)
    times: dict[str, LayerTimes] = {}
    for key, (engine, who) in keys.items():
        _say(opts, f"profiling {key} ({who.label}), {opts.runs} runs")
        times[key] = _layer_times(engine, who, key, images[0], opts, work)
    groups, costs = layer_shapes(s, work)
    ref_costs = layer_shapes(r, work)[1] if r is not None else {}
    errors, error_engine = {}, None
    if r is not None:
        error_engine = opts.engines[0]
        _say(opts, f"per-layer error on {error_engine}, {len(images)} image(s)")
        errors = layer_errors(_probe(error_engine, r, opts, work, "reference"), _probe(error_engine, s, opts, work, "model"),
                              images, list(groups.kind))
    rows = _rows(groups, costs, ref_costs, times, keys, errors)
    sens = _sensitivity(s, r, opts, work) if opts.sensitivity else None
    if sens is not None:
        _mark_sensitivity(rows, sens)
    return LayersResult(
        s.label, r.label if r else None, rows, {k: t.end_to_end_ms for k, t in times.items()},
        {k: t.sum_check() for k, t in times.items()}, {k: ("model" if who is s else "reference") for k, (_, who) in keys.items()},
        error_engine, len(images) if r is not None else 0, machine_info(opts.threads), opts,
        WeightsInfo.of(s.meta) if s.meta is not None else None, skipped, sensitivity=sens)


def _say(opts: LayersOptions, text: str) -> None:
    if opts.progress:
        print(f"layers: {text}", file=sys.stderr)


def _keys(engines: tuple[str, ...], s: Subject, r: Subject | None) -> dict[str, tuple[str, Subject]]:
    """ENGINE-PRECISION -> (engine, model); the reference's key gets ``-ref`` where both models share a precision."""
    keys: dict[str, tuple[str, Subject]] = {}
    for e in engines:
        keys[f"{e}-{s.precision}"] = (e, s)
        if r is not None:
            keys[f"{e}-{r.precision}" + ("-ref" if r.precision == s.precision else "")] = (e, r)
    return keys


def _image_files(opts: LayersOptions) -> list[Path]:
    """At most ``max_images`` of ``--images``, spread over the folder (the bundled photo when none)."""
    if not opts.images:
        return [bundled_cat()]
    every = list_images(opts.images, "--images")
    return spread(every, opts.max_images)


def _images(opts: LayersOptions, pre: Preprocessing) -> tuple[list[np.ndarray], list[Skipped]]:
    """The images the errors are measured on (and the first one timed), one 1xCxHxW array each."""
    files = _image_files(opts)
    skipped: list[Skipped] = []
    xs = [x for _, x in image_batches(files, pre, 1, skipped, "layers", False)]
    if not xs:
        raise XrayError(f"--images {opts.images}: none of the {len(files)} images could be read")
    return xs, skipped


def _rows(groups: LayerGroups, costs: dict[str, tuple[int, list[int]]], ref_costs: dict[str, tuple[int, list[int]]],
          times: dict[str, LayerTimes], keys: dict[str, tuple[str, Subject]], errors: dict[str, Any]) -> list[LayerRow]:
    names = list(groups.order)
    names += [n for t in times.values() for n in t.rows_ms if n not in names and n != OTHER]
    if any(OTHER in t.rows_ms for t in times.values()):
        names.append(OTHER)
    rows = []
    for name in names:
        macs, shape = costs.get(name, (0, []))
        row = LayerRow(name, groups.kind.get(name, "other"), int(macs), list(shape))
        row.times_ms = {k: t.rows_ms[name] for k, t in times.items() if name in t.rows_ms}
        row.kernels = {k: t.kernels[name] for k, t in times.items() if name in t.kernels}
        row.error = errors.get(name)
        ref_shape = ref_costs.get(name, (0, []))[1]
        if row.kind == "conv" and shape and ref_shape and shape[0] != ref_shape[0]:
            row.channels = {"kept": int(shape[0]), "of": int(ref_shape[0])}
        row.speedup = _speedups(row.times_ms, keys)
        rows.append(row)
    return rows


def _speedups(times_ms: dict[str, float], keys: dict[str, tuple[str, Subject]]) -> dict[str, float]:
    """Per engine: the reference's time over the model's, where both were timed."""
    by_engine: dict[str, dict[bool, float]] = {}
    model = next(who for _, who in keys.values())
    for k, ms in times_ms.items():
        engine, who = keys[k]
        by_engine.setdefault(engine, {})[who is model] = ms
    return {e: t[False] / t[True] for e, t in by_engine.items() if t.get(True) and t.get(False) is not None}


def run_layers(model: Any, reference: Any, opts: LayersOptions, output: str | os.PathLike | None = None) -> LayersResult:
    """:func:`profile_layers` in a temporary working folder (tagged copies, exports), removed after.

    ``model`` and ``reference``: deployed files (kept as paths: the engines open them) or anything
    :func:`~resnet_xray.model.as_model` takes. ``output``: also draw the chart (PNG).
    """
    if output:
        check_writable(output, flag="-o", suffixes=(".png",))
    with tempfile.TemporaryDirectory(prefix="rx-layers-") as tmp:
        res = profile_layers(_model_or_file(model), None if reference is None else _model_or_file(reference), opts, Path(tmp))
    if output:
        res.chart = save_layers_chart(res.to_dict(), output)
    return res


def _model_or_file(model: Any) -> Any:
    """A deployed file stays a path (the engines open it); anything else is loaded as a PyTorch model."""
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in (".onnx", ".xml"):
        return model
    return as_model(model)


def _sensitivity(s: Subject, r: Subject | None, opts: LayersOptions, work: Path) -> SensitivityReport:
    """Rank the layers of the FP32 reference by the agreement keeping each in float gains, with MODEL's INT8 settings."""
    if r is None or r.path is None or r.path.suffix.lower() != ".onnx" or r.precision != "fp32":
        raise XrayError(f"--sensitivity {opts.sensitivity}: needs --against the FP32 .onnx the INT8 MODEL was quantised from")
    if not opts.images:
        raise XrayError(f"--sensitivity {opts.sensitivity}: needs --images, the images agreement is scored on")
    q = (inspect_onnx(s.path).sidecar.get("quantization") or {}) if s.path and s.path.suffix.lower() == ".onnx" else {}
    calib = opts.calib or (q.get("calibration") or {}).get("folder")
    if not calib:
        raise XrayError(f"--sensitivity {opts.sensitivity}: MODEL names no calibration folder; pass --calib")
    o, choices = q.get("options") or {}, q.get("choices") or {}
    default = QuantizeOptions()
    reduce_range = choices.get("reduce_range")
    settings = QdqSettings(o.get("method", default.method), bool(o.get("per_channel", default.per_channel)),
                           o.get("activation_type", default.activation_type),
                           (not detect_cpu_int8().vnni) if reduce_range is None else bool(reduce_range))
    _say(opts, f"sensitivity: one INT8 variant per {opts.sensitivity}, calibrated on {calib}, scored on {opts.images}")
    sens_dir = work / "sensitivity"
    sens_dir.mkdir()
    return rank_sensitivity(r.path, list_images(calib, "--calib"), _image_files(opts), settings, sens_dir,
                            unit=opts.sensitivity, threads=opts.threads, progress=opts.progress)


def _mark_sensitivity(rows: list[LayerRow], sens: SensitivityReport) -> None:
    """Each row's rank, agreement and gain when its layer (or its block) is kept in float."""
    ranked = {u.name: (i + 1, u) for i, u in enumerate(sens.ranking)}
    for row in rows:
        unit = row.name if sens.unit == "layer" else block_of(row.name)
        if unit in ranked:
            rank, u = ranked[unit]
            row.sensitivity = {"unit": u.name, "rank": rank, "agreement": u.agreement, "gain": u.gain}
