"""Every inference path side by side, in one process, on the same input.

Each path is warmed up and timed over many repeats; the table gives the median and
the interquartile range (IQR) of the latency, throughput, speed-up over eager FP32,
and the achieved GFLOP/s (2 x the model's MACs from ``anatomy``, per second) against
this CPU's FP32 peak (:mod:`.peak`: the best engine GEMM or the ISA bound, raised to any
FP32 path that passes it, so no share exceeds 100%).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compare import Tolerance, as_logits, compare
from ..dissect import AnatomyOptions, analyze
from ..errors import XrayError
from ..options import OptionError, at_least, batch_fits, image_side, option, thread_count
from ..provenance import WeightsInfo
from ..image import bundled_cat, load_image
from ..units import table
from ..interface import ClassLogits, unwrap
from .data import image_batches, list_images
from .fuse import fuse_model
from .onnx import ExportOptions, export_onnx, inspect_onnx, ort_session
from .openvino import compile_cpu, compiled_precision, native_bf16, no_bf16_reason, quantize_nncf, write_ir
from .peak import Peak, measure_fp32_peak
from .runtime import OpenVinoThroughput, images_per_second
from .quantize import QuantizeOptions, detect_cpu_int8, quantize_onnx
from .tensorrt import TensorRTOptions, TensorRTRunner, build_engine, tensorrt_available
from .timing import TimingStats, time_models, torch_threads
from .torch_int8 import quantize_torch_fx


@dataclass
class BenchOptions:
    batches: tuple[int, ...] = option((1,), "comma-separated batch sizes")
    threads: int | None = option(None, "intra-op threads for torch, ORT and OpenVINO (None: their defaults)")
    warmup: int = 5
    repeats: int = option(30, "timed calls per path (at least)")
    min_time_s: float = option(1.0, "per row: fast paths get more repeats")
    rounds: int = option(5, "repeats are spread over this many round-robin passes over the paths, so a")
    # burst of load from other processes hits every path alike instead of whichever ran then
    compile: bool = option(True, "the torch.compile row")
    compile_timeout_s: int = option(300, "seconds to allow torch.compile")
    calib_dir: str | None = option(None, "calibration images for the INT8 rows (default: crops of the bundled photo)")
    calib_images: int = option(32, "crops of the bundled photo to calibrate on when no calib_dir")
    input_size: int | None = option(None, "None: the preprocessing's crop size")
    work_dir: str | None = option(None, "where the ONNX files go (None: a temporary folder, removed after)")
    paths: tuple[str, ...] | None = option(None, "only these rows (names as in the table)")
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.batches:
            raise OptionError("batches", "", "give at least one batch size")
        image_side("input_size", self.input_size, allow_none=True)
        for b in self.batches:
            batch_fits("batches", b, self.input_size)
        thread_count("threads", self.threads)
        at_least("warmup", self.warmup, 0)
        at_least("repeats", self.repeats, 1)
        at_least("min_time_s", self.min_time_s, 0)
        at_least("rounds", self.rounds, 1)
        at_least("compile_timeout_s", self.compile_timeout_s, 1)
        at_least("calib_images", self.calib_images, 1)


@dataclass
class BenchRow:
    path: str
    batch: int
    device: str
    status: str  # ok | skipped | failed
    note: str = ""
    stats: TimingStats | None = None
    throughput: float | None = None  # images/s at this batch, from the median latency
    throughput_img_s: float | None = None  # images/s in the path's throughput mode (see THROUGHPUT_NOTE)
    speedup: float | None = None  # vs eager FP32 at the same batch
    gflops: float | None = None  # achieved, 2 x MACs x batch / median
    peak_share: float | None = None  # gflops / the CPU FP32 peak (CPU FP32 rows only; never above 1)
    check: dict[str, Any] | None = None  # compare() against eager FP32 on the timing input

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = self.stats.to_dict() if self.stats else None
        if self.stats:
            d["median_ms"], d["iqr_ms"] = self.stats.median_ms, self.stats.iqr_ms
        return d


@dataclass
class BenchResult:
    rows: list[BenchRow]
    macs: int  # per image, from anatomy
    peak_gflops: float  # the CPU FP32 peak every share is taken of (raised to any path that passed the estimate)
    machine: dict[str, Any]
    options: BenchOptions
    notes: list[str] = field(default_factory=list)
    agreement: dict[str, Any] | None = None  # INT8 vs FP32 on the calibration hold-out
    model: str = ""  # arch and weights, named in the chart's title
    peak: Peak | None = None  # how the peak was estimated, and whether a path raised it
    weights: WeightsInfo | None = None  # the weights' provenance, set by the verb that ran

    def peak_method(self) -> str:
        return self.peak.method() if self.peak else "given"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "macs_per_image": self.macs,
            "cpu_fp32_peak_gflops": self.peak_gflops,
            "peak_method": self.peak_method(),
            "peak": self.peak.to_dict() if self.peak else None,
            "machine": self.machine,
            "options": asdict(self.options),
            "notes": self.notes,
            "int8_agreement": self.agreement,
            "weights": self.weights.to_dict() if self.weights else None,
        }

    def table(self) -> str:
        header = ["path", "batch", "device", "median ms", "IQR ms", "img/s", "tput img/s", "speed-up", "GFLOP/s", "% peak", "vs eager"]
        rows = []
        for r in self.rows:
            if r.status != "ok":
                rows.append([r.path, r.batch, r.device, r.status, "", "", "", "", "", "", r.note[:60]])
                continue
            rows.append([
                r.path,
                r.batch,
                r.device,
                f"{r.stats.median_ms:.1f}",
                f"{r.stats.iqr_ms:.1f}",
                f"{r.throughput:.1f}",
                f"{r.throughput_img_s:.1f}" if r.throughput_img_s else "",
                f"{r.speedup:.2f}x",
                f"{r.gflops:.0f}",
                f"{r.peak_share:.0%}" if r.peak_share is not None else "",
                "" if r.check is None else ("ok" if r.check["passed"] else "DIFFERS"),
            ])
        return table(header, rows, "llllrrrrrrl")


def machine_info(threads: int | None) -> dict[str, Any]:
    cpu = detect_cpu_int8()
    model_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": model_name or platform.processor(),
        "logical_cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "vnni": cpu.vnni,
        "vnni_flags": cpu.flags,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import openvino

        info["openvino"] = openvino.__version__
    return info


@contextlib.contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeoutError if the block runs longer than ``seconds`` (main thread, POSIX only)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"{what} took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def calibration_crops(out_dir: Path, n: int, size: int, seed: int = 0) -> Path:
    """Write ``n`` random crops/flips/colour shifts of the bundled photo as a calibration folder."""
    from PIL import ImageEnhance, ImageOps

    out_dir.mkdir(parents=True, exist_ok=True)
    img = load_image(bundled_cat())
    rng = np.random.default_rng(seed)
    w, h = img.size
    for i in range(n):
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((max(size, 64), max(size, 64)))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
        crop.save(out_dir / f"crop_{i:03d}.png")
    return out_dir



def run_bench(model: nn.Module, meta: Any, options: BenchOptions | None = None) -> BenchResult:
    """Time every available inference path of ``model`` side by side.

    Args:
        model: the eager FP32 model (any ResNet-like module, fine-tuned or pruned).
        meta: its :class:`~resnet_xray.model.ModelMeta` (preprocessing, arch).
        options: batches, threads, repeats, compile time box, calibration images.

    Returns:
        The rows (each ``ok``, ``skipped`` with the reason, or ``failed`` with the error),
        the MACs, the CPU FP32 peak (raised to any FP32 path measured above it) and the machine description.
    """
    opts = options or BenchOptions()
    size = opts.input_size or meta.preprocessing.crop
    for b in opts.batches:  # the options checked them at the smallest side; the model's crop is known now
        batch_fits("batches", b, size)
    model = model.eval()
    if isinstance(model(torch.zeros(1, 3, size, size)), dict):
        model = ClassLogits(model).eval()
    macs = analyze(unwrap(model), meta.arch, AnatomyOptions(input_size=size)).totals.macs

    with torch_threads(opts.threads), contextlib.ExitStack() as stack:
        if opts.work_dir:
            work = Path(opts.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="resnet-xray-bench-")))
        bench = _Bench(model, meta, opts, size, macs, measure_fp32_peak(opts.threads), work)
        bench.run()
    return BenchResult(bench.rows, macs, bench.peak.gflops, machine_info(opts.threads), opts, bench.notes, bench.agreement,
                       f"{meta.arch} ({meta.weights})", bench.peak)


class _Bench:
    """The state one benchmark run shares between its rows."""

    def __init__(self, model: nn.Module, meta: Any, opts: BenchOptions, size: int, macs: int, peak: Peak, work: Path):
        self.model, self.meta, self.opts, self.size, self.macs, self.peak, self.work = model, meta, opts, size, macs, peak, work
        self.rows: list[BenchRow] = []
        self.notes: list[str] = []
        self.agreement: dict[str, Any] | None = None
        self.onnx_fp32: Path | None = None
        self.onnx_int8: Path | None = None
        self.int8_failed: str | None = None  # why there is no INT8 model to time, when quantisation refused one
        self.pre = meta.preprocessing.scaled_to(size)
        self.pending: list[tuple[BenchRow, Callable[[], Any], bool]] = []
        self.ov_files: dict[str, tuple[Path, str]] = {}  # OpenVINO rows' model files and precisions, timed again in throughput mode
        self.nncf_xml: Path | None = None  # made once per run, for every batch size

    def wanted(self, name: str) -> bool:
        return self.opts.paths is None or name in self.opts.paths

    def log(self, msg: str) -> None:
        if self.opts.progress:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    def add(self, name: str, batch: int, device: str, make: Callable[[], Callable[[], Any]], cpu: bool = True) -> None:
        """Build the path with ``make()`` and warm it up (untimed); timing happens later, interleaved."""
        if not self.wanted(name):
            return
        self.log(f"preparing {name}, batch {batch}")
        try:
            fn = make()
            for _ in range(max(0, self.opts.warmup)):
                fn()
        except _Skip as e:
            self.rows.append(BenchRow(name, batch, device, "skipped", str(e)))
            return
        except _Failed as e:
            self.rows.append(BenchRow(name, batch, device, "failed", str(e)))
            return
        except XrayError:
            raise
        except Exception as e:  # noqa: BLE001 - one failing path must not hide the others
            self.rows.append(BenchRow(name, batch, device, "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
            return
        row = BenchRow(name, batch, device, "ok")
        self.rows.append(row)
        self.pending.append((row, fn, cpu))

    def time_pending(self) -> None:
        """Time every prepared path round-robin (each was warmed up when added), then fill in the statistics."""
        if not self.pending:
            return
        stats = time_models({str(i): fn for i, (_, fn, _) in enumerate(self.pending)}, warmup=0, repeats=self.opts.repeats,
                            rounds=self.opts.rounds, min_time_s=self.opts.min_time_s, progress=self.log)
        ref = None
        for i, (row, fn, _) in enumerate(self.pending):
            row.stats = stats[str(i)]
            row.throughput = row.batch / row.stats.median
            row.gflops = 2 * self.macs * row.batch / row.stats.median / 1e9
            out = _host_logits(fn())
            if row.path == "eager fp32":
                ref = out
            if ref is not None and out is not None and row.path != "eager fp32":
                tol = Tolerance.reduced_precision(0.0) if _reduced(row.path) else Tolerance(atol=1e-2, rtol=1e-3)
                row.check = compare(ref, out, tolerance=tol, names=("eager fp32", row.path)).to_dict()
        self.pending = []

    def run(self) -> None:
        self._prepare_onnx()
        for b in self.opts.batches:
            self._cpu_rows(b)
            self._cuda_rows(b)
            self.time_pending()  # per batch, so only one batch's models and inputs are held at once
        self._peak_shares()
        self._throughput_mode()
        for b in self.opts.batches:
            base = next((r for r in self.rows if r.path == "eager fp32" and r.batch == b and r.status == "ok"), None)
            for r in self.rows:
                if r.batch == b and r.status == "ok" and base is not None:
                    r.speedup = base.stats.median / r.stats.median
            ok = {r.path: r for r in self.rows if r.batch == b and r.status == "ok"}
            if "ort int8" in ok and "ort fp32" in ok and ok["ort int8"].stats.median >= ok["ort fp32"].stats.median:
                self.notes.append(f"ORT INT8 is SLOWER than ORT FP32 on this CPU at batch {b} ({ok['ort int8'].stats.median_ms:.1f} vs "
                                  f"{ok['ort fp32'].stats.median_ms:.1f} ms): not recommended here; use OpenVINO INT8")

    def _throughput_mode(self) -> None:
        """Each row's throughput-mode images/s: OpenVINO's THROUGHPUT hint and async queue, else the best batch timed."""
        best: dict[str, float] = {}
        for r in self.rows:
            if r.status == "ok" and r.device == "cpu":
                best[r.path] = max(best.get(r.path, 0.0), r.throughput)
        for r in self.rows:
            if r.status != "ok" or r.device != "cpu":
                continue
            r.throughput_img_s = best[r.path]
            if r.path in self.ov_files:
                self.log(f"timing {r.path}, batch {r.batch}, in throughput mode (async requests)")
                r.throughput_img_s = self._async_img_s(*self.ov_files[r.path], r.batch)
        if best:
            self.notes.append(THROUGHPUT_NOTE)

    def _async_img_s(self, path: Path, precision: str, batch: int) -> float:
        import openvino as ov

        run = OpenVinoThroughput(ov.Core().read_model(str(path)), self.opts.threads, batch, precision)
        x = np.random.default_rng(0).standard_normal((2 * run.requests * batch, 3, self.size, self.size)).astype(np.float32)
        return images_per_second(run, x, max(self.opts.min_time_s, 0.2))

    def _peak_shares(self) -> None:
        """Each CPU FP32 row's share of the peak, after raising the peak to any row measured above it."""
        # INT8 and bf16 rows do other arithmetic than the FP32 peak measures; a share of it would mislead
        fp32 = [r for r in self.rows if r.status == "ok" and r.device == "cpu" and not _reduced(r.path)]
        if not fp32:
            return
        top = max(fp32, key=lambda r: r.gflops)
        if self.peak.raise_to(top.path, top.batch, top.gflops):
            self.notes.append(self.peak.raise_note())
        for r in fp32:
            r.peak_share = min(1.0, r.gflops / self.peak.gflops)

    # --- artefacts shared by several rows ---

    def _prepare_onnx(self) -> None:
        need_fp32 = any(self.wanted(n) for n in ("ort fp32", "ort int8", "openvino fp32", "openvino int8", "openvino bf16",
                                                 "tensorrt fp16", "tensorrt int8"))
        need_int8 = any(self.wanted(n) for n in ("ort int8", "openvino int8"))
        if not need_fp32:
            return
        self.log("exporting ONNX (fused model, dynamo exporter)")
        dynamic = len(self.opts.batches) > 1 or self.opts.batches[0] != 1
        self.onnx_fp32 = export_onnx(
            fuse_model(self.model), self.work / "model.onnx", ExportOptions(dynamic_batch=dynamic, input_size=self.size), self.meta
        )
        if not need_int8:
            return
        calib = self.opts.calib_dir
        if calib is None:
            calib = str(calibration_crops(self.work / "calib", self.opts.calib_images, self.size))
            self.notes.append(f"INT8 calibrated on {self.opts.calib_images} crops of the bundled photo (no --calib given)")
        self.log(f"quantising to INT8 (QDQ, per-channel, calibration from {calib})")
        report = quantize_onnx(
            # bench times the INT8 file as calibrated: its check gates the row, with no repair run (minutes per model)
            self.onnx_fp32, calib, self.work / "model.int8.onnx",
            QuantizeOptions(per_channel=True, progress=self.opts.progress, min_agreement=0.9),
        )
        self.agreement = report["agreement"]
        self.notes.append(f"ORT INT8: {report['choices']['reduce_range_reason']}")
        if report["int8_model"] is None:  # quantize writes no model that fails its agreement check
            bad = next((r["check"]["reason"] for r in report["agreement"]["paths"].values()
                        if r.get("check") and not r["check"]["passed"]), "its agreement check failed")
            untrained = getattr(self.meta, "pretrained", None) is False
            hint = "; untrained weights leave near-ties that INT8 flips: give trained --weights" if untrained else ""
            self.int8_failed = f"INT8 model fails its check against FP32 ({bad}){hint}"
            self.notes.append(f"ORT/OpenVINO INT8 rows not timed: {self.int8_failed}")
        else:
            self.onnx_int8 = Path(report["int8_model"])

    # --- rows ---

    def _cpu_rows(self, b: int) -> None:
        x = torch.randn(b, 3, self.size, self.size)
        model = self.model

        def eager(m: nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
            def fn() -> Any:
                with torch.inference_mode():
                    return m(inp)

            return fn

        self.add("eager fp32", b, "cpu", lambda: eager(model, x))

        def channels_last() -> Callable[[], Any]:
            m = copy.deepcopy(model).to(memory_format=torch.channels_last)
            return eager(m, x.contiguous(memory_format=torch.channels_last))

        self.add("eager channels_last", b, "cpu", channels_last)
        self.add("fused", b, "cpu", lambda: eager(fuse_model(model), x))
        if self.opts.compile:
            self.add("torch.compile", b, "cpu", lambda: self._compiled(x))
        self.add("ort fp32", b, "cpu", lambda: self._ort(self.onnx_fp32, x))
        self.add("ort int8", b, "cpu", lambda: self._ort(self._int8(), x))
        self.add("pytorch int8 (fx x86)", b, "cpu", lambda: self._torch_int8(x))
        self.add("openvino fp32", b, "cpu", lambda: self._openvino(self.onnx_fp32, x, "f32", "openvino fp32"))
        self.add("openvino int8", b, "cpu", lambda: self._openvino(self._int8(), x, "f32", "openvino int8"))
        self.add("openvino int8 (nncf)", b, "cpu", lambda: self._openvino(self._nncf_ir(), x, "f32", "openvino int8 (nncf)"))
        self.add("openvino bf16", b, "cpu", lambda: self._openvino(self.onnx_fp32, x, "bf16", "openvino bf16"))

    def _int8(self) -> Path | None:
        if self.int8_failed:
            raise _Failed(self.int8_failed)
        return self.onnx_int8

    def _compiled(self, x: torch.Tensor) -> Callable[[], Any]:
        import torch._inductor.config as inductor_config

        torch._dynamo.reset()
        # freezing folds weights into the graph and lets inductor prepack them: the CPU inference setting
        with inductor_config.patch(freezing=True):
            compiled = torch.compile(self.model)
            t0 = time.perf_counter()
            try:
                with time_limit(self.opts.compile_timeout_s, "torch.compile"), torch.inference_mode():
                    compiled(x)
            except TimeoutError as e:
                torch._dynamo.reset()
                raise _Skip(f"{e} (--compile-timeout)") from None
        self.notes.append(f"torch.compile (inductor, freezing) compiled batch {x.shape[0]} in {time.perf_counter() - t0:.0f} s")

        def fn() -> Any:
            with torch.inference_mode():
                return compiled(x)

        return fn

    def _ort(self, path: Path | None, x: torch.Tensor) -> Callable[[], Any]:
        if path is None:
            raise _Skip("no model (an earlier step failed or was not requested)")
        sess = ort_session(path, self.opts.threads)
        name = sess.get_inputs()[0].name
        arr = x.numpy()
        return lambda: sess.run(None, {name: arr})

    def _torch_int8(self, x: torch.Tensor) -> Callable[[], Any]:
        g = torch.Generator().manual_seed(0)
        calib = [torch.randn(4, 3, self.size, self.size, generator=g) for _ in range(4)]
        if self.opts.calib_dir or (self.work / "calib").exists():
            files = list_images(self.opts.calib_dir or self.work / "calib", "--calib")
            calib = [torch.from_numpy(a) for _, a in image_batches(files[:64], self.pre, 8, [], "calibrate torch", False)]
        q = quantize_torch_fx(self.model, None, self.pre, calib_batches=calib).model

        def fn() -> Any:
            with torch.inference_mode():
                return q(x)

        return fn

    def _openvino(self, path: Path | None, x: torch.Tensor, precision: str, name: str) -> Callable[[], Any]:
        try:
            import openvino as ov
        except ImportError:
            raise _Skip("openvino not installed (it is a default dependency: pip install -e .)") from None
        if path is None:
            raise _Skip("no model (an earlier step failed or was not requested)")
        if precision == "bf16" and not native_bf16():
            raise _Skip(f"{no_bf16_reason()}, where OpenVINO runs a bf16 hint in f32")
        self.ov_files[name] = (path, precision)
        m = ov.Core().read_model(str(path))
        m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
        compiled = compile_cpu(m, self.opts.threads, precision=precision)
        got = compiled_precision(compiled)
        if got != precision:
            raise _Skip(f"OpenVINO compiled it in {got}, not {precision}: a row is labelled with what ran")
        request = compiled.create_infer_request()
        arr = x.numpy()
        return lambda: request.infer({0: arr})

    def _nncf_ir(self) -> Path:
        """NNCF post-training INT8 of the FP32 model, calibrated on the same images as ORT's."""
        if self.onnx_fp32 is None:
            raise _Skip("no ONNX model")
        xml = self.work / "model.int8_nncf.xml"
        # never an earlier run's file: a --work-dir kept from another model gave that model's logits
        if self.nncf_xml is None:
            fp32_xml = write_ir(self.onnx_fp32, self.work / "model.fp32.xml", inspect_onnx(self.onnx_fp32).sidecar)
            # the same images as ORT's INT8; made here when no ORT INT8 row asked for them
            calib_dir = self.opts.calib_dir or calibration_crops(self.work / "calib", self.opts.calib_images, self.size)
            files = list_images(calib_dir, "--calib")[:64]
            calib = [a for _, a in image_batches(files, self.pre, 1, [], "calibrate nncf", False)]
            quantize_nncf(fp32_xml, calib, xml)
            self.nncf_xml = xml
        return xml

    def _cuda_rows(self, b: int) -> None:
        if not torch.cuda.is_available():
            return
        torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithms for this shape
        x = torch.randn(b, 3, self.size, self.size, device="cuda")
        m = copy.deepcopy(self.model).cuda().eval()

        def timed(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                out = fn()
                torch.cuda.synchronize()
                return out

            return run

        def eager_cuda() -> Callable[[], Any]:
            def fn() -> Any:
                with torch.inference_mode():
                    return m(x)

            return timed(fn)

        def amp_fp16() -> Callable[[], Any]:
            mc = copy.deepcopy(m).to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)

            def fn() -> Any:
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                    return mc(xc)

            return timed(fn)

        self.add("cuda fp32", b, "cuda", eager_cuda, cpu=False)
        self.add("cuda amp fp16", b, "cuda", amp_fp16, cpu=False)
        for precision in ("fp16", "int8"):
            self.add(f"tensorrt {precision}", b, "cuda", lambda p=precision: self._tensorrt(p, b, x), cpu=False)

    def _tensorrt(self, precision: str, b: int, x: torch.Tensor) -> Callable[[], Any]:
        ok, why = tensorrt_available()
        if not ok:
            raise _Skip(why)
        if self.onnx_fp32 is None:
            raise _Skip("no ONNX model")
        calib = self.opts.calib_dir or (str(self.work / "calib") if (self.work / "calib").exists() else None)
        if precision == "int8" and calib is None:
            raise _Skip("int8 needs calibration images")
        engine = build_engine(
            self.onnx_fp32, self.work / f"model.b{b}.{precision}.engine", TensorRTOptions(precision, calib, batch=b)
        )
        runner = TensorRTRunner(engine)

        def fn() -> Any:
            out = runner(x)
            torch.cuda.synchronize()
            return out

        return fn


def _reduced(path: str) -> bool:
    """A path that computes in less than FP32 (int8, fp16, bf16): checked by decisions, never a share of the FP32 peak."""
    return any(p in path for p in ("int8", "fp16", "bf16"))


def _host_logits(out: Any) -> np.ndarray | None:
    """A row's output as logits on the host, whatever the runtime returned (None if unreadable)."""
    try:
        if hasattr(out, "to_tuple"):  # OpenVINO's OVDict
            out = out[0]
        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu()
        return as_logits(out)
    except Exception:  # noqa: BLE001 - a row whose output we cannot read is still timed
        return None


THROUGHPUT_NOTE = ("throughput_img_s: OpenVINO rows with the THROUGHPUT hint and an async request queue (as classify --out "
                   "runs them); other rows the best img/s over the batches timed (--batch 1,16 adds a batch-16 figure)")


class _Skip(Exception):
    """A path that cannot run here (missing package or hardware); shown as skipped, not failed."""


class _Failed(Exception):
    """A path whose model an earlier step refused; shown as failed with that step's reason alone."""
