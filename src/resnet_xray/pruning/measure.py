"""What a pruning round buys, measured: MACs and params from anatomy, batch-1 latency eager and in ORT.

Latencies only compare within one process (the CPU is shared and its clocks move),
so every run measures the unpruned baseline itself and reports ratios against it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..deploy.bench import torch_threads
from .structured import count_macs, count_params

# The TorchScript route exports a ResNet about 3x faster than dynamo here, and the loop exports every round.
EXPORTER = "torchscript"


@dataclass
class Cost:
    macs: int  # conv + fc multiply-accumulates at 1x3xSxS (resnet_xray.dissect's convention)
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_cost(model: nn.Module, input_size: int) -> Cost:
    return Cost(count_macs(model, input_size), count_params(model))


@dataclass
class Latency:
    eager_ms: float  # median batch-1 forward in PyTorch eager (inference mode)
    ort_ms: float | None  # median batch-1 run of the exported FP32 model in ONNX Runtime
    ort_max_abs_diff: float | None  # ORT vs eager logits on the timing input: the export check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_callable(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, timed by the deploy package's benchmark timer."""
    from ..deploy.bench import time_callable as bench_timer

    return bench_timer(fn, warmup, repeats).median_ms


@torch.inference_mode()
def measure_latency(
    model: nn.Module, input_size: int, *, warmup: int = 3, repeats: int = 20, ort: bool = True, threads: int | None = None
) -> Latency:
    """Batch-1 latency of ``model`` in eager PyTorch and (``ort=True``) ONNX Runtime FP32.

    The ONNX file goes to a temporary folder; its outputs are compared with eager's on
    the same input, so a pruned model that does not export faithfully shows up here.
    ``threads`` sets the intra-op threads of both runtimes (None: their defaults).
    """
    model = model.eval()
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch_threads(threads):
        eager_ms = time_callable(lambda: model(x), warmup, repeats)
    if not ort:
        return Latency(eager_ms, None, None)
    from ..deploy.onnx import ExportOptions, export_onnx, ort_session

    with tempfile.TemporaryDirectory(prefix="resnet-xray-prune-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", ExportOptions(input_size=input_size, batch=1, exporter=EXPORTER))
        sess = ort_session(path, threads=threads)
        name = sess.get_inputs()[0].name
        feed = {name: x.numpy()}
        ort_ms = time_callable(lambda: sess.run(None, feed), warmup, repeats)
        diff = float(np.abs(sess.run(None, feed)[0] - model(x).numpy()).max())
    return Latency(eager_ms, ort_ms, diff)


@torch.inference_mode()
def measure_latencies(
    models: list[nn.Module], input_size: int, *, warmup: int = 3, repeats: int = 20, rounds: int = 5, ort: bool = True,
    threads: int | None = None,
) -> list[Latency]:
    """Batch-1 latency of several models, timed round-robin in this process after each is warmed up.

    Speed-ups between rounds come from here: timing the unpruned baseline first and alone
    let a cold start (allocator, caches, lazy init) or a burst of load land on it alone,
    which once turned a 1.24x speed-up into 8.50x.
    """
    from ..deploy.onnx import ExportOptions, export_onnx, ort_session
    from ..deploy.runtime import time_models

    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    runners: dict[str, Callable[[], Any]] = {}
    diffs: list[float | None] = [None] * len(models)
    with tempfile.TemporaryDirectory(prefix="resnet-xray-prune-") as tmp, torch_threads(threads):
        for i, m in enumerate(models):
            m = m.eval()
            runners[f"eager {i}"] = lambda m=m: m(x)
            if ort:
                path = export_onnx(m, Path(tmp) / f"model{i}.onnx", ExportOptions(input_size=input_size, batch=1, exporter=EXPORTER))
                sess = ort_session(path, threads=threads)
                feed = {sess.get_inputs()[0].name: x.numpy()}
                runners[f"ort {i}"] = lambda sess=sess, feed=feed: sess.run(None, feed)
                diffs[i] = float(np.abs(sess.run(None, feed)[0] - m(x).numpy()).max())
        stats = time_models(runners, warmup=warmup, repeats=repeats, rounds=rounds)
    return [Latency(stats[f"eager {i}"].median_ms, stats[f"ort {i}"].median_ms if ort else None, diffs[i]) for i in range(len(models))]
