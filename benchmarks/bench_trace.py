"""Trace overhead: one traced forward (stats for every layer) against a plain forward, same model, same input.

Run:  .venv/bin/python benchmarks/bench_trace.py [--arch resnet50] [--size 224] [--repeats 7] [--device cpu]
Prints the median and best times of both and their ratio (target: at most 1.25x).
The two are timed alternately, so a machine whose load changes hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from resnet_xray.model import build_model
from resnet_xray.trace import TraceOptions, trace_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_trace_overhead(arch: str = "resnet50", size: int = 224, repeats: int = 7, device: str = "cpu",
                           keep_maps: set[str] | None = None) -> dict:
    """Time ``model(x)`` and ``trace_model(model, x)`` alternately; return the times and ratios."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(arch).eval().to(dev)
    x = torch.randn(1, 3, size, size, device=dev)
    opts = TraceOptions(keep_maps=keep_maps)
    plain, traced = [], []
    with torch.inference_mode():
        model(x)
    trace_model(model, x, opts)  # warm-up: allocator, oneDNN/cuDNN kernels, the FX graph cache
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        _sync(dev)
        t1 = time.perf_counter()
        trace_model(model, x, opts)
        _sync(dev)
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        traced.append(t2 - t1)
    # A cold first trace also builds the FX graph; time it once on a fresh model object.
    cold_model = build_model(arch).eval().to(dev)
    _sync(dev)
    t0 = time.perf_counter()
    trace_model(cold_model, x, opts)
    _sync(dev)
    cold = time.perf_counter() - t0
    return {
        "arch": arch,
        "input": [1, 3, size, size],
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "plain_median_s": statistics.median(plain),
        "trace_median_s": statistics.median(traced),
        "plain_best_s": min(plain),
        "trace_best_s": min(traced),
        "ratio_median": statistics.median(traced) / statistics.median(plain),
        "ratio_best": min(traced) / min(plain),
        "trace_cold_s": cold,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure_trace_overhead(args.arch, args.size, args.repeats, args.device)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; device {r['device']}; torch threads {r['threads']}")
    print(f"{r['arch']} on {'x'.join(map(str, r['input']))}, {r['repeats']} alternating repeats")
    print(f"{'':<22} {'median':>10} {'best':>10}")
    print(f"{'plain forward':<22} {r['plain_median_s'] * 1e3:8.1f}ms {r['plain_best_s'] * 1e3:8.1f}ms")
    print(f"{'trace (all stats)':<22} {r['trace_median_s'] * 1e3:8.1f}ms {r['trace_best_s'] * 1e3:8.1f}ms")
    print(f"{'trace / plain':<22} {r['ratio_median']:9.2f}x {r['ratio_best']:9.2f}x   (target <= 1.25x)")
    print(f"first trace of a fresh model (builds the FX graph): {r['trace_cold_s'] * 1e3:.1f}ms")


if __name__ == "__main__":
    main()
