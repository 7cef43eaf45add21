"""Trace overhead: one traced forward (stats for every layer) against a plain forward, same model, same input.

Run:  .venv/bin/python benchmarks/bench_trace.py [--arch resnet50] [--size 224] [--repeats 7] [--threads 1,2]
      [--engines codegen,codegen-full]
For each thread count, the plain forward and every trace engine are timed round-robin
(plain, engine 1, engine 2, plain, ...), so a machine whose load changes hurts all alike.
Prints median and best times, the ratios (of medians, of bests, of CPU times, and the median of each round's
trace/plain ratio), and the goal (trace <= 1.25x plain, ratio of medians), met or not, with the CPU named.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from resnet_xray.model import build_model
from resnet_xray.tracing import TraceOptions, trace_model

GOAL = 1.25


def cpu_description() -> str:
    """The CPU's model name and the vector-ISA flags that decide PyTorch's kernels (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name":
                    name = val.strip()
                elif key.strip() == "flags":
                    flags = set(val.split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    env = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ]
    return (f"{name}, {os.cpu_count()} CPUs, flags: {' '.join(isa) or 'none of avx2/avx512/amx'}"
            + (f"; limited by {' '.join(env)}" if env else "") + f"; torch {torch.__version__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_trace_overhead(arch: str = "resnet50", size: int = 224, repeats: int = 7, device: str = "cpu",
                           keep_maps: set[str] | None = None, engines: tuple[str, ...] = ("codegen",)) -> dict:
    """Time ``model(x)`` and ``trace_model(model, x)`` for each engine round-robin; return times and ratios.

    The top-level ``trace_*``/``ratio_*`` keys are the first engine's; ``engines`` holds all of them.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(arch).eval().to(dev)
    x = torch.randn(1, 3, size, size, device=dev)
    with torch.inference_mode():
        want = model(x)
    times: dict[str, list[float]] = {"plain": [], **{e: [] for e in engines}}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # process CPU time: far less sensitive to a busy machine
    for e in engines:  # warm-up (allocator, oneDNN kernels, graph caches) and the bit-identity check
        got = trace_model(model, x, TraceOptions(keep_maps=keep_maps, engine=e)).logits
        if not torch.equal(got, want):
            raise SystemExit(f"engine {e}: traced logits differ from a plain forward")
    for _ in range(repeats):
        for key in times:
            _sync(dev)
            c0, t0 = time.process_time(), time.perf_counter()
            if key == "plain":
                with torch.inference_mode():
                    model(x)
            else:
                trace_model(model, x, TraceOptions(keep_maps=keep_maps, engine=key))
            _sync(dev)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    # A cold first trace also builds the FX code; time it once on a fresh model object.
    cold_model = build_model(arch).eval().to(dev)
    _sync(dev)
    t0 = time.perf_counter()
    trace_model(cold_model, x, TraceOptions(keep_maps=keep_maps, engine=engines[0]))
    _sync(dev)
    cold = time.perf_counter() - t0
    plain = times["plain"]
    per = {e: {"median_s": statistics.median(times[e]), "best_s": min(times[e]),
               "ratio_median": statistics.median(times[e]) / statistics.median(plain),
               "ratio_best": min(times[e]) / min(plain),
               # each round's trace over the same round's plain forward: steadier than a ratio of
               # medians when the machine's speed drifts during the run
               "ratio_paired": statistics.median(t / p for t, p in zip(times[e], plain)),
               "cpu_ratio_median": statistics.median(cpu[e]) / statistics.median(cpu["plain"])} for e in engines}
    first = per[engines[0]]
    return {
        "arch": arch,
        "input": [1, 3, size, size],
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "plain_median_s": statistics.median(plain),
        "plain_best_s": min(plain),
        "trace_median_s": first["median_s"],
        "trace_best_s": first["best_s"],
        "ratio_median": first["ratio_median"],
        "ratio_best": first["ratio_best"],
        "ratio_paired": first["ratio_paired"],
        "trace_cold_s": cold,
        "engines": per,
        "logits_bit_identical": True,  # checked above for every engine, or the run stopped
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch intra-op thread counts (default: 1,2)")
    ap.add_argument("--engines", default="codegen,codegen-full", help="trace engines to time (default: codegen,codegen-full)")
    args = ap.parse_args()
    engines = tuple(e for e in args.engines.split(",") if e)
    print(f"CPU: {cpu_description()}")
    print(f"goal: trace (statistics of every layer) <= {GOAL}x a plain forward, {args.arch} at {args.size} px, "
          f"engine {engines[0]}; traced logits bit-identical to the plain forward (checked)")
    verdicts, runs = [], []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        torch.set_num_threads(threads)
        load0 = os.getloadavg()[0]
        r = measure_trace_overhead(args.arch, args.size, args.repeats, args.device, engines=engines)
        runs.append(r)
        print(f"\n{r['arch']} on {'x'.join(map(str, r['input']))}, {r['device']}, torch threads {r['threads']}, "
              f"{r['repeats']} round-robin repeats; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
        print(f"  {'':<22} {'median':>10} {'best':>10} {'ratio (median)':>15} {'ratio (best)':>13} {'CPU-time ratio':>15}"
              f" {'paired ratio':>13}")
        print(f"  {'plain forward':<22} {r['plain_median_s'] * 1e3:8.1f}ms {r['plain_best_s'] * 1e3:8.1f}ms")
        for e, v in r["engines"].items():
            print(f"  {'trace, ' + e:<22} {v['median_s'] * 1e3:8.1f}ms {v['best_s'] * 1e3:8.1f}ms {v['ratio_median']:14.2f}x "
                  f"{v['ratio_best']:12.2f}x {v['cpu_ratio_median']:14.2f}x {v['ratio_paired']:12.2f}x")
        print(f"  first trace of a fresh model ({engines[0]}, builds the FX code): {r['trace_cold_s'] * 1e3:.0f}ms")
        met = r["ratio_median"] <= GOAL
        verdicts.append(f"{threads} thread{'s' if threads > 1 else ''}: {r['ratio_median']:.3f}x "
                        f"({'met' if met else 'NOT met'}; paired {r['ratio_paired']:.3f}x, "
                        f"{'met' if r['ratio_paired'] <= GOAL else 'NOT met'})")
    print(f"\ngoal <= {GOAL}x ({engines[0]}, median ratio) on {cpu_description().split(',')[0]}: " + "; ".join(verdicts))
    if args.device == "cpu":
        from records import write_record

        write_record("bench_trace", {"arch": args.arch, "size": args.size, "engine": engines[0], "goal": GOAL,
                                     "runs": [{k: v for k, v in r.items() if k != "engines"} for r in runs]})


if __name__ == "__main__":
    main()
