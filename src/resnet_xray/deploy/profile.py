"""Where the time goes inside one engine: each row's time from the engine's own profiler.

ONNX Runtime's profiler (``SessionOptions.enable_profiling``, a JSON trace of every kernel),
OpenVINO's ``PERF_COUNT`` (``request.get_profiling_info()``, each executed node and the kernel
it chose) and ``torch.profiler`` (one ``record_function`` per row around the traced graph's
nodes). Each engine runs a tagged copy (see :mod:`.graphmap`), so its node names, fused or
not, lead back to PyTorch layers. The same runs are timed end to end with the wall clock, so
the per-layer times can be checked against the latency they should add up to.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XrayError
from .graphmap import OTHER, fx_nodes, group_nodes, row_of
from .openvino import compile_cpu
from .timing import torch_threads

# Per-layer times and the end-to-end latency of the same runs agree within this share when profiling is faithful.
SUM_TOLERANCE = 0.15


@dataclass
class LayerTimes:
    """One engine and precision (``ort-int8``): each row's time and the end-to-end latency over the same profiled runs."""

    key: str  # ENGINE-PRECISION
    rows_ms: dict[str, float]  # row -> mean per-run milliseconds of the nodes it owns (over the runs kept)
    kernels: dict[str, str]  # row -> the kernel the engine ran for its costliest node
    end_to_end_ms: float  # mean wall-clock latency of the same runs
    runs: int  # runs the figures are taken over
    method: str  # which profiler, and what the end-to-end time is

    @property
    def layer_sum_ms(self) -> float:
        return float(sum(self.rows_ms.values()))

    @property
    def sum_ratio(self) -> float:
        """Per-layer sum over end-to-end latency: 1.0 when the profiler accounts for every millisecond."""
        return self.layer_sum_ms / self.end_to_end_ms if self.end_to_end_ms > 0 else float("nan")

    @property
    def adds_up(self) -> bool:
        return abs(self.sum_ratio - 1.0) <= SUM_TOLERANCE

    def sum_check(self) -> dict[str, Any]:
        return {"layer_sum_ms": self.layer_sum_ms, "end_to_end_ms": self.end_to_end_ms, "ratio": self.sum_ratio,
                "tolerance": SUM_TOLERANCE, "passed": self.adds_up, "runs": self.runs, "method": self.method}


# Runs kept, fastest first by wall clock: a run another process stalled is dropped whole, from both sides.
KEEP_SHARE = 0.8


def _typical(per_run: list[dict[str, float]], walls: list[float]) -> tuple[dict[str, float], float, int]:
    """Each row's mean over the fastest runs, the mean wall-clock milliseconds of the same runs, and how many.

    Means over the same runs add up the way the runs do; per-row medians would not (a stall lands
    on a different layer in each run, and every row's median leaves it out).
    """
    order = sorted(range(len(walls)), key=walls.__getitem__)[: max(1, round(KEEP_SHARE * len(walls)))]
    rows = {r for i in order for r in per_run[i]}
    means = {r: float(statistics.fmean(per_run[i].get(r, 0.0) for i in order)) for r in rows}
    return means, 1e3 * statistics.fmean(walls[i] for i in order), len(order)


def _costliest(seen: dict[str, dict[str, float]]) -> dict[str, str]:
    return {r: max(k, key=k.get) for r, k in seen.items() if k}


# --- ONNX Runtime ---


def ort_layer_times(path: Path, rows: dict[str, str], x: np.ndarray, key: str, *, threads: int | None = None,
                    runs: int = 20, warmup: int = 5) -> LayerTimes:
    """Profile the tagged ONNX file ``path`` in ONNX Runtime: each row's kernel time per run, and the wall clock."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="rx-ort-profile-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "trace")
        if threads:
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as bench and classify run it
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT's own words name the problem
            raise XrayError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})") from None
        feed = {sess.get_inputs()[0].name: x}
        walls = _timed(lambda: sess.run(None, feed), runs, warmup)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run, kernels = _ort_rows(events, rows, warmup)
    if len(per_run) != len(walls):
        raise RuntimeError(f"ONNX Runtime's trace holds {len(per_run)} timed runs, {len(walls)} were made")
    means, e2e, kept = _typical(per_run, walls)
    return LayerTimes(key, means, _costliest(kernels), e2e, kept,
                      f"onnxruntime profiler (kernel times); end to end: wall clock of session.run; means over the "
                      f"fastest {kept} of {len(walls)} runs")


def _timed(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return walls


def _ort_rows(events: list[dict[str, Any]], rows: dict[str, str], skip: int
              ) -> tuple[list[dict[str, float]], dict[str, dict[str, float]]]:
    """Kernel events split by run (the ``model_run`` spans) and summed per row, after the ``skip`` warm-up runs."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [s for s, _ in spans]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in spans]
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > spans[i][1]:
            continue
        row = row_of(name, rows)
        op = e.get("args", {}).get("op_name", "?")
        per_run[i][row] += e["dur"] / 1e3
        kernels[row][op + (" (NCHWc)" if "_nchwc" in name else "")] += e["dur"]
    return [dict(r) for r in per_run[skip:]], kernels


# --- OpenVINO ---


def openvino_layer_times(model: Any, rows: dict[str, str], x: np.ndarray, key: str, *, threads: int | None = None,
                         runs: int = 20, warmup: int = 5, precision: str = "f32") -> LayerTimes:
    """Profile the tagged, uncompiled OpenVINO ``model`` with ``PERF_COUNT``: each executed node's time, per run."""
    request = compile_cpu(model, threads, perf_count=True, precision=precision).create_infer_request()
    feed = {0: np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(warmup):
        request.infer(feed)
    walls, per_run = [], []
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(feed)
        walls.append(time.perf_counter() - t0)
        run: dict[str, float] = defaultdict(float)
        for p in request.get_profiling_info():  # the last inference's counters
            ms = p.real_time.total_seconds() * 1e3
            if ms <= 0:
                continue  # fused into another node (NOT_RUN), or a no-op
            row = row_of(p.node_name, rows)
            run[row] += ms
            kernels[row][f"{p.exec_type} ({p.node_type})"] += ms
        per_run.append(dict(run))
    means, e2e, kept = _typical(per_run, walls)
    return LayerTimes(key, means, _costliest(kernels), e2e, kept,
                      f"OpenVINO PERF_COUNT (real time per executed node); end to end: wall clock of infer; means over the "
                      f"fastest {kept} of {runs} runs")


# --- PyTorch ---


def torch_layer_times(module: Any, x: np.ndarray, key: str, *, threads: int | None = None, runs: int = 20,
                      warmup: int = 5) -> LayerTimes:
    """``torch.profiler`` over the traced graph with one ``record_function`` per row; end to end: the eager module."""
    import torch
    from torch import fx
    from torch.profiler import ProfilerActivity, profile, record_function

    gm = fx.symbolic_trace(module.eval())
    groups = group_nodes(fx_nodes(gm))

    class Labelled(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            with record_function(f"rx::{groups.row.get(n.name, OTHER)}"):
                return super().run_node(n)

    t = torch.from_numpy(x)
    with torch_threads(threads), torch.inference_mode():
        walls = _timed(lambda: module(t), runs, warmup)
        for _ in range(warmup):
            Labelled(gm).run(t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                Labelled(gm).run(t)
    per_row: dict[str, float] = defaultdict(float)
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in prof.key_averages():
        if e.key.startswith("rx::"):
            per_row[e.key[4:]] += e.cpu_time_total / 1e3 / runs
    for e in prof.events():  # the aten op that did the work, by the row whose label encloses it
        parent = e.cpu_parent
        if parent is not None and parent.name.startswith("rx::") and e.name.startswith("aten::"):
            kernels[parent.name[4:]][e.name] += e.cpu_time_total
    return LayerTimes(key, dict(per_row), _costliest(kernels), 1e3 * statistics.fmean(walls), runs,
                      "torch.profiler (one record_function per row, mean over runs); end to end: the eager module, mean")
