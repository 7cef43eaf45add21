"""This CPU's FP32 peak, which ``bench`` gives each FP32 row's GFLOP/s as a share of.

The peak is the highest of several estimates: the best float32 GEMM that each installed
engine (PyTorch, ONNX Runtime, OpenVINO) reaches here, and the bound the instruction set
gives (cores x FMA units x vector lanes x the measured clock). No single library's GEMM is every CPU's
fastest path, so taking one library's figure let other engines pass "100%".
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .onnx import ort_session

GEMM_SIDE = 1024  # n of the n x n x n GEMM: large enough to reach the BLAS's rate, small enough to time quickly
GEMM_BUDGET_S = 0.2  # timed seconds per engine, after one warm-up call
GEMM_MIN_CALLS = 3
CLOCK_STEPS = 10_000_000  # xorshift steps per clock sample: ~20 ms at 3 GHz
CLOCK_CYCLES_PER_STEP = 6  # three dependent (shift, xor) pairs, one cycle each


@dataclass
class PeakRaise:
    """A path measured above every estimate; the peak was raised to its figure."""

    path: str
    batch: int
    gflops: float


@dataclass
class Peak:
    """The FP32 peak in GFLOP/s and where it comes from."""

    estimate_gflops: float  # the highest estimate before any path was measured
    sources: dict[str, float]  # GFLOP/s of each estimate that could be made here
    threads: int
    isa: str  # how the ISA bound was derived, or why it could not be
    raised: PeakRaise | None = None  # set when a path beat every estimate
    failed: dict[str, str] = field(default_factory=dict)  # engines whose GEMM could not run, with the reason

    @property
    def gflops(self) -> float:
        return self.raised.gflops if self.raised else self.estimate_gflops

    @property
    def source(self) -> str:
        return max(self.sources, key=self.sources.get) if self.sources else "none"

    def raise_to(self, path: str, batch: int, gflops: float) -> bool:
        """Raise the peak to a path's measured rate if it is higher; True when it was."""
        if gflops <= self.gflops:
            return False
        self.raised = PeakRaise(path, batch, gflops)
        return True

    def method(self) -> str:
        """One line: the estimates and which one is the peak."""
        parts = ", ".join(f"{name} {g:.0f}" for name, g in sorted(self.sources.items(), key=lambda kv: -kv[1]))
        text = f"highest of {parts} GFLOP/s at {self.threads} thread(s)" if parts else "no estimate could be made"
        if self.raised:
            text += f"; raised to {self.raised.path} (batch {self.raised.batch}), measured above every estimate"
        return text

    def raise_note(self) -> str | None:
        if not self.raised:
            return None
        r = self.raised
        return (f"the FP32 peak estimate ({self.estimate_gflops:.0f} GFLOP/s, {self.source}) was too low: {r.path} at batch "
                f"{r.batch} ran at {r.gflops:.0f} GFLOP/s, so the peak is raised to that figure (GFLOP/s counts 2 x the "
                f"model's MACs; a convolution algorithm that does fewer operations, such as Winograd, can pass a GEMM's rate)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.gflops,
            "estimate_gflops": self.estimate_gflops,
            "source": "raised" if self.raised else self.source,
            "sources": dict(self.sources),
            "isa": self.isa,
            "threads": self.threads,
            "raised": asdict(self.raised) if self.raised else None,
            "failed": dict(self.failed),
            "method": self.method(),
        }


def best_rate(fn: Callable[[], Any], flops: float, budget_s: float = GEMM_BUDGET_S, min_calls: int = GEMM_MIN_CALLS) -> float:
    """GFLOP/s of the fastest call of ``fn`` after one warm-up, timing until ``budget_s`` is spent."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return flops / max(best, 1e-9) / 1e9


def _operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)


def torch_gemm(n: int, threads: int) -> Callable[[], Any]:
    import torch

    a, b = (torch.from_numpy(x) for x in _operands(n))
    c = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=c)


def ort_gemm(n: int, threads: int) -> Callable[[], Any]:
    """A one-node ONNX MatMul (B a constant, as a model's weights are) in ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a, b = _operands(n)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="resnet-xray-peak-") as d:
        path = Path(d) / "gemm.onnx"
        onnx.save(model, path)
        sess = ort_session(path, threads)
    return lambda: sess.run(None, {"A": a})


def openvino_gemm(n: int, threads: int) -> Callable[[], Any]:
    """An OpenVINO MatMul built with its opset API, compiled for CPU in f32."""
    import openvino as ov
    import openvino.opset13 as ops

    a, b = _operands(n)
    param = ops.parameter([n, n], ov.Type.f32, name="A")
    model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param], "gemm")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    return lambda: request.infer({0: a})


ENGINES: dict[str, Callable[[int, int], Callable[[], Any]]] = {
    "torch.mm": torch_gemm,
    "onnxruntime MatMul": ort_gemm,
    "openvino MatMul": openvino_gemm,
}


@dataclass
class CpuTopology:
    """What the ISA bound needs from /proc/cpuinfo (Linux x86)."""

    flags: set[str]
    mhz: float | None  # the highest clock the kernel reports (cpufreq's maximum, else cpuinfo's; often the base clock)
    cores: int  # physical cores this process may run on


def read_topology(cpuinfo: str | None = None, max_khz: str | None = None) -> CpuTopology | None:
    """Parse /proc/cpuinfo (or the given text); None where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    if max_khz is None:
        with contextlib.suppress(OSError):
            max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
    fields: dict[str, str] = {}
    mhz: list[float] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "cpu MHz":
            with contextlib.suppress(ValueError):
                mhz.append(float(value))
        fields.setdefault(key, value)
    with contextlib.suppress(ValueError, TypeError):
        mhz.append(float(max_khz) / 1000)
    try:
        smt = max(1, int(fields["siblings"]) // max(1, int(fields["cpu cores"])))
    except (KeyError, ValueError):
        smt = 1
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuTopology(set(fields.get("flags", "").split()), max(mhz) if mhz else None, max(1, logical // smt))


@functools.cache
def _xorshift_chain() -> Callable[[int, int], int]:
    import numba

    @numba.njit(cache=False)
    def chain(steps, x):  # each line depends on the one before: no two steps overlap
        for _ in range(steps):
            x ^= x << np.uint64(13)
            x ^= x >> np.uint64(7)
            x ^= x << np.uint64(17)
        return x

    return chain


def measure_clock_ghz(steps: int = CLOCK_STEPS, runs: int = 8) -> float | None:
    """One core's clock while busy, in GHz: the fastest of ``runs`` timed chains of xorshift steps.

    A shift or an xor takes one cycle on every x86 core, and each waits for the one before,
    so a step takes six cycles whatever the core. Where register moves are not eliminated
    (a few Intel generations) a step takes more and the figure comes out high, which keeps
    the ISA bound an upper one. None without numba.
    """
    try:
        chain = _xorshift_chain()
        chain(10, np.uint64(1))  # compile
    except ImportError:
        return None
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        chain(steps, np.uint64(88172645463325252))
        best = min(best, time.perf_counter() - t0)
    return steps * CLOCK_CYCLES_PER_STEP / max(best, 1e-9) / 1e9


def isa_bound(threads: int, topo: CpuTopology | None, measured_ghz: float | None = None) -> tuple[float | None, str]:
    """cores x FP32 operations per cycle x clock: (GFLOP/s or None, how it was derived or why not).

    The clock is the higher of the measured one and the one the kernel reports (often the base
    clock, below what a busy core runs at). Two FMA units per core are assumed (every x86 core
    with FMA since Haswell and Zen 2 has them; fewer only lowers the true bound, so the figure
    stays an upper one).
    """
    if topo is None:
        return None, "no /proc/cpuinfo"
    f = topo.flags
    lanes = 16 if "avx512f" in f else 8 if "avx" in f else 4 if "sse2" in f else 0
    if not lanes:
        return None, "no x86 vector flags in /proc/cpuinfo"
    reported = topo.mhz / 1000 if topo.mhz else None
    ghz = max(g for g in (measured_ghz, reported, 0.0) if g is not None)
    if not ghz:
        return None, "no clock measured or reported"
    per_lane = 4 if "fma" in f else 2  # 2 FMA units x (multiply + add); without FMA one adder and one multiplier
    cores = min(threads, topo.cores)
    gflops = cores * lanes * per_lane * ghz
    width = {16: "AVX-512", 8: "AVX", 4: "SSE"}[lanes]
    unit = "2 FMA units" if "fma" in f else "an adder and a multiplier"
    clocks = ", ".join(f"{name} {g:.2f} GHz" for name, g in (("measured", measured_ghz), ("reported", reported)) if g)
    return gflops, f"{cores} core(s) x {unit} x {lanes} {width} FP32 lanes x {ghz:.2f} GHz (the higher of {clocks})"


def measure_fp32_peak(threads: int | None = None, engines: dict[str, Callable[[int, int], Callable[[], Any]]] | None = None,
                      n: int = GEMM_SIDE, topo: CpuTopology | None | bool = True, clock_ghz: float | None | bool = True) -> Peak:
    """Time an n^3 float32 GEMM in each installed engine and derive the ISA bound; the peak is the highest.

    Args:
        threads: intra-op threads each engine uses (None: torch's current count).
        engines: name -> builder of a zero-argument GEMM call (default: :data:`ENGINES`).
        n: the GEMM's side.
        topo: the CPU's description for the ISA bound (True: read this machine's; None: no bound).
        clock_ghz: the core clock for the ISA bound (True: measure it; None: the reported one only).
    """
    import torch

    threads = threads or torch.get_num_threads()
    sources: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name, build in (ENGINES if engines is None else engines).items():
        try:
            sources[name] = best_rate(build(n, threads), 2 * n**3)
        except ImportError as e:
            failed[name] = f"not installed ({e.name})"
        except Exception as e:  # noqa: BLE001 - an engine that cannot run a GEMM here leaves the others' estimates
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    topo = read_topology() if topo is True else topo or None
    ghz = (measure_clock_ghz() if topo is not None else None) if clock_ghz is True else clock_ghz or None
    bound, how = isa_bound(threads, topo, ghz)
    if bound:
        sources["ISA bound"] = bound
    return Peak(max(sources.values(), default=0.0), sources, threads, how, failed=failed)
