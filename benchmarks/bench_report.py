"""The report's cost for one 224x224 image with ResNet-50: wall time, peak memory, trace overhead.

Run:  .venv/bin/python benchmarks/bench_report.py [--arch resnet50] [--repeats 25] [--no-gradflow]
The report runs as `resnet-xray report` in a child process, so its wall time includes
start-up and its peak resident memory (targets: under 2 GB) is the child's alone.
Trace overhead (target: at most 1.25x a plain forward) comes from bench_trace.py,
measured with statistics only and with the full maps the report keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_trace import cpu_description, measure_trace_overhead  # noqa: E402  (the trace measurement, reused)

from resnet_xray.dissect import layer_table  # noqa: E402
from resnet_xray.image import bundled_cat  # noqa: E402
from resnet_xray.model import build_model_on_meta  # noqa: E402
from resnet_xray.reporting.assemble import GRID_TYPES  # noqa: E402

RSS_TARGET_MB = 2048
TRACE_TARGET = 1.25
WALL_TARGET_S = 20.0


def run_report(arch: str, gradflow: bool) -> dict:
    """One `resnet-xray report` in a fresh process; wall time, the child's peak RSS, its section timings."""
    exe = Path(sys.executable).with_name("resnet-xray")
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(exe), "report", str(bundled_cat()), "--arch", arch, "--weights", "random", "-o", out, "--quiet"]
        if not gradflow:
            cmd.append("--no-gradflow")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"report failed ({proc.returncode}): {proc.stderr.strip()}")
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_kb = ru.ru_maxrss  # Linux: kilobytes
        doc = json.loads((Path(out) / "report.json").read_text())
        size = (Path(out) / "report.html").stat().st_size
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": rss_kb / 1024, "sections_s": doc["timings_s"],
            "html_mb": size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--repeats", type=int, default=25, help="alternating plain/trace repeats for the overhead")  # 5 let the ratio flip across 1.25x
    ap.add_argument("--no-gradflow", action="store_true", help="time the report without its gradient-flow section")
    args = ap.parse_args()

    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.2f} at start; python {platform.python_version()}")
    print(f"goals: report <= {WALL_TARGET_S:.0f} s and peak RSS < {RSS_TARGET_MB} MB for {args.arch}; trace <= {TRACE_TARGET}x a plain forward")
    rep = run_report(args.arch, not args.no_gradflow)
    drawn = {r.name for r in layer_table(build_model_on_meta(args.arch), 224) if r.type in GRID_TYPES and len(r.output_shape) == 3}
    stats_only = measure_trace_overhead(args.arch, 224, args.repeats)
    with_maps = measure_trace_overhead(args.arch, 224, args.repeats, keep_maps=drawn)

    plain = stats_only["plain_median_s"]
    load_end = os.getloadavg()[0]
    print(f"\nreport for one 224x224 image, {args.arch}, random weights{'' if not args.no_gradflow else ', no gradient flow'}:")
    print(f"  wall time (fresh process)   {rep['wall_s']:8.1f} s   = {rep['wall_s'] / plain:,.0f}x one plain forward ({plain * 1e3:.0f} ms)")
    print(f"  CPU time (user + sys)       {rep['cpu_s']:8.1f} s   (both threads; less sensitive to other jobs than wall time)")
    print(f"  peak resident memory        {rep['peak_rss_mb']:8.0f} MB  = {rep['peak_rss_mb'] / RSS_TARGET_MB:.2f}x the 2 GB target")
    print(f"  report.html                 {rep['html_mb']:8.1f} MB (self-contained)")
    secs = {k: v for k, v in rep["sections_s"].items() if k != "total_before_write"}
    print("  sections: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(secs.items(), key=lambda kv: -kv[1])))
    print(f"\ntrace overhead (bench_trace.measure_trace_overhead, {args.repeats} alternating repeats; target <= {TRACE_TARGET}x):")
    print(f"  {'':<27} {'plain median':>12} {'trace median':>12} {'ratio':>7} {'best/best':>9}")
    for label, r in (("stats for every layer", stats_only), (f"+ the report's {len(drawn)} kept maps", with_maps)):
        print(f"  {label:<27} {r['plain_median_s'] * 1e3:9.1f} ms {r['trace_median_s'] * 1e3:9.1f} ms {r['ratio_median']:6.2f}x {r['ratio_best']:8.2f}x")
    cpu = cpu_description().split(",")[0]
    print(f"\ngoals on {cpu} (load average {load_end:.2f} at the end):")
    print(f"  report wall time {rep['wall_s']:.1f} s <= {WALL_TARGET_S:.0f} s: {'met' if rep['wall_s'] <= WALL_TARGET_S else 'NOT met'}")
    print(f"  peak RSS {rep['peak_rss_mb']:.0f} MB < {RSS_TARGET_MB} MB: {'met' if rep['peak_rss_mb'] < RSS_TARGET_MB else 'NOT met'}")
    print(f"  trace {stats_only['ratio_median']:.2f}x <= {TRACE_TARGET}x: {'met' if stats_only['ratio_median'] <= TRACE_TARGET else 'NOT met'}")

    from records import write_record

    write_record("bench_report", {"arch": args.arch, "gradflow": not args.no_gradflow, "wall_s": rep["wall_s"], "cpu_s": rep["cpu_s"],
                                  "peak_rss_mb": rep["peak_rss_mb"], "html_mb": rep["html_mb"], "plain_forward_s": plain,
                                  "trace_ratio": stats_only["ratio_median"], "trace_ratio_with_maps": with_maps["ratio_median"],
                                  "repeats": args.repeats, "goals": {"wall_s": WALL_TARGET_S, "rss_mb": RSS_TARGET_MB,
                                                                     "trace_ratio": TRACE_TARGET}})


if __name__ == "__main__":
    main()

