"""Start-up cost of the CLI, measured side by side in fresh interpreters.

Goals: `resnet-xray --help` <= 0.5 s, and `classify` on one image with
`--weights random` <= 1.5x the time of `python -c "import torch, torchvision"` alone.
Each command runs in a new process, round-robin, so a burst of load hits all alike;
the medians are compared. Usage: python benchmarks/bench_startup.py [--repeats 5] [--arch resnet18]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
        return f"{name} ({os.cpu_count()} logical cores; {' '.join(isa)})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _cat():
    from resnet_xray.image import bundled_cat  # imports torch: kept out of importers' start-up (bench_hostile)

    return bundled_cat()


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arch", default="resnet18", help="model for the classify run (default: resnet18)")
    a = ap.parse_args()
    py = sys.executable
    runs = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import torch, torchvision'": [py, "-c", "import torch, torchvision"],
        "resnet-xray --help": [py, "-m", "resnet_xray", "--help"],
        "resnet-xray --version": [py, "-m", "resnet_xray", "--version"],
        f"resnet-xray classify cat --arch {a.arch} --weights random": [
            py, "-m", "resnet_xray", "classify", str(_cat()), "--arch", a.arch, "--weights", "random"],
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for name, argv in runs.items():  # one untimed pass warms the page cache for every file
        timed(argv)
    for _ in range(a.repeats):
        for name, argv in runs.items():
            times[name].append(timed(argv))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f}; {a.repeats} round-robin runs, medians")
    for k, v in med.items():
        print(f"  {k:<62s} {v:7.3f} s   (min {min(times[k]):.3f})")
    torch_s = med["python -c 'import torch, torchvision'"]
    help_s = med["resnet-xray --help"]
    classify_s = med[f"resnet-xray classify cat --arch {a.arch} --weights random"]
    print()
    print(f"{'goal':<58s} {'measured':>10s} {'target':>8s}  met")
    print(f"{'--help wall time':<58s} {help_s:9.3f}s {'<= 0.5s':>8s}  {'yes' if help_s <= 0.5 else 'NO'}")
    print(f"{'--help / import torch, torchvision':<58s} {help_s / torch_s:9.2f}x {'':>8s}")
    print(f"{'classify (1 image, random weights) / import torch, torchvision':<58s} {classify_s / torch_s:9.2f}x "
          f"{'<= 1.5x':>8s}  {'yes' if classify_s / torch_s <= 1.5 else 'NO'}")

    from records import write_record

    write_record("bench_startup", {"arch": a.arch, "repeats": a.repeats, "median_s": med, "help_s": help_s,
                                   "import_torch_s": torch_s, "classify_s": classify_s,
                                   "classify_vs_import_torch": classify_s / torch_s, "goals": {"help_s": 0.5, "classify_ratio": 1.5}})


if __name__ == "__main__":
    main()
