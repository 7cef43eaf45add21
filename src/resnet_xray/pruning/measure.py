"""What a pruning round buys, measured: MACs and params from anatomy, batch-1 latency eager and in ORT.

Latencies only compare within one process (the CPU is shared and its clocks move),
so every run measures the unpruned baseline itself and reports ratios against it.
The ONNX Runtime column needs an exporter, which deploy supplies (:data:`OrtExport`):
pruning takes nothing from deploy but its timer.
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

from ..deploy.timing import time_callable, time_models, torch_threads
from .structured import count_macs, count_params

# (model, onnx path, input side, threads) -> the model exported there, in ONNX Runtime: NumPy batch in, logits out.
# resnet_xray.deploy.onnx.exported_runner is the one; None leaves the ORT column empty.
OrtExport = Callable[[nn.Module, Path, int, int | None], Callable[[np.ndarray], np.ndarray]]


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


@torch.inference_mode()
def measure_latency(
    model: nn.Module, input_size: int, *, warmup: int = 3, repeats: int = 20, ort: OrtExport | None = None,
    threads: int | None = None,
) -> Latency:
    """Batch-1 latency of ``model`` in eager PyTorch and (given ``ort``) ONNX Runtime FP32.

    The ONNX file goes to a temporary folder; its outputs are compared with eager's on
    the same input, so a pruned model that does not export faithfully shows up here.
    ``threads`` sets the intra-op threads of both runtimes (None: their defaults).
    """
    model = model.eval()
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch_threads(threads):
        eager_ms = time_callable(lambda: model(x), warmup, repeats).median_ms
    if ort is None:
        return Latency(eager_ms, None, None)
    with tempfile.TemporaryDirectory(prefix="resnet-xray-prune-") as tmp:
        run, xn = ort(model, Path(tmp) / "model.onnx", input_size, threads), x.numpy()
        ort_ms = time_callable(lambda: run(xn), warmup, repeats).median_ms
        diff = float(np.abs(run(xn) - model(x).numpy()).max())
    return Latency(eager_ms, ort_ms, diff)


@torch.inference_mode()
def measure_latencies(
    models: list[nn.Module], input_size: int, *, warmup: int = 3, repeats: int = 20, rounds: int = 5,
    ort: OrtExport | None = None, threads: int | None = None,
) -> list[Latency]:
    """Batch-1 latency of several models, timed round-robin in this process after each is warmed up.

    Speed-ups between rounds come from here: timing the unpruned baseline first and alone
    let a cold start (allocator, caches, lazy init) or a burst of load land on it alone,
    which once turned a 1.24x speed-up into 8.50x.
    """
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    runners: dict[str, Callable[[], Any]] = {}
    diffs: list[float | None] = [None] * len(models)
    with tempfile.TemporaryDirectory(prefix="resnet-xray-prune-") as tmp, torch_threads(threads):
        for i, m in enumerate(models):
            m = m.eval()
            runners[f"eager {i}"] = lambda m=m: m(x)
            if ort is not None:
                run = ort(m, Path(tmp) / f"model{i}.onnx", input_size, threads)
                runners[f"ort {i}"] = lambda run=run: run(xn)
                diffs[i] = float(np.abs(run(xn) - m(x).numpy()).max())
        stats = time_models(runners, warmup=warmup, repeats=repeats, rounds=rounds)
    ort_ms = [stats[f"ort {i}"].median_ms if ort is not None else None for i in range(len(models))]
    return [Latency(stats[f"eager {i}"].median_ms, ort_ms[i], diffs[i]) for i in range(len(models))]
