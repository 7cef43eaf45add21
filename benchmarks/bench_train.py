"""Fine-tuning throughput: resnet-xray's ``fit`` vs a plain loop written to torchvision's reference recipe.

The plain loop follows ``references/classification/train.py``: ImageFolder, RandomResizedCrop
+ flip, a RandomSampler DataLoader with pin_memory, SGD (momentum 0.9, wd 1e-4), label
smoothing, ``model.train(); output = model(image); loss.backward(); optimizer.step()``.
Both sides get the same arch, batch, image size, worker count and thread count, and are
run alternately (A B A B) so a busy machine penalises both equally. Then the data-wait
fraction of our loop with the default worker count. Prints measured numbers only.

    python benchmarks/bench_train.py out/reference/data --arch resnet50 --steps 12

Two more modes:

    # the reference run: make-dataset if needed, the README's finetune command, the goal line
    python benchmarks/bench_train.py out/reference/data --reference [--epochs 5] [--amp]
    # the recipe ablation: the fast recipe, and the same with one piece taken away or added, one run each
    python benchmarks/bench_train.py out/small/data --ablation --arch resnet18 --epochs 6 [--amp]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from resnet_xray.model import build_model
from resnet_xray.train.bench import DataBenchOptions, bench_data
from resnet_xray.train.data import default_workers, make_loaders
from resnet_xray.train.finetune import fit
from resnet_xray.train.recipe import FinetuneOptions


def recipe_loop(data_dir: str, arch: str, size: int, batch: int, workers: int, steps: int) -> float:
    """images/s of the reference recipe's train_one_epoch, steps 2..steps+1 (first step is warm-up)."""
    tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor(),
                    T.ConvertImageDtype(torch.float), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(os.path.join(data_dir, "train"), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=torch.utils.data.RandomSampler(ds),
                                         num_workers=workers, pin_memory=True)
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(ds.classes))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * batch / 256, momentum=0.9, weight_decay=1e-4)
    model.train()
    n, t0 = 0, None
    while True:
        for i, (image, target) in enumerate(loader):
            output = model(image)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += len(image)
            if n >= steps * batch:
                return n / (time.perf_counter() - t0)


def ours(data_dir: str, arch: str, size: int, batch: int, workers: int, steps: int, **kw) -> float:
    data = make_loaders(data_dir, image_size=size, batch_size=batch, workers=workers, seed=0)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(data.class_names))
    # Many epochs so the schedule is long; stop_after_steps ends the run mid-epoch (no evaluation timed).
    # The classic recipe at a fixed size, so both loops see the same resolution; pieces come in through kw.
    kw = {"recipe": "classic", "optimizer": "sgd", **kw}
    opts = FinetuneOptions(arch=arch, weights="random", epochs=50, batch_size=batch, workers=workers,
                           progress=False, stop_after_steps=steps + 1, **kw)
    r = fit(model, data, opts, pretrained=False)
    return r["steps_after_first"] * batch / r["seconds_after_first"]


# The training goals: accuracy by minutes of wall time, 2 threads, and the CPU kind each goal is set for.
GOALS = ((0.85, 12.0, "avx2"), (0.90, 15.0, "avx2"), (0.90, 10.0, "amx_bf16"))
KIND = {"avx2": "a 2-core AVX2-only CPU", "amx_bf16": "an AMX CPU"}


EPOCH_LINE = re.compile(r"^epoch \d+/\d+: .*\| val loss [\d.]+ acc ([\d.]+)%(?:, EMA ([\d.]+)%)?")


def reference_run(data: str, out: str, arch: str, epochs: int, extra: list[str]) -> None:
    """make-dataset (if missing) and the README's command, timed from process start to exit; then the goal line."""
    cli = [sys.executable, "-m", "resnet_xray"]
    if not Path(data, "dataset.json").exists():
        subprocess.run([*cli, "make-dataset", data], check=True)
    cmd = [*cli, "finetune", data, "--arch", arch, "--weights", "random", "--out", out, "--epochs", str(epochs), *extra]
    print("$ " + " ".join(cmd[2:]), flush=True)
    # The epoch lines are timestamped here, from process start, so the log shows when each accuracy was reached.
    reached: dict[float, float] = {}
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            t = time.perf_counter() - t0
            m = EPOCH_LINE.search(line)
            print(f"[{t / 60:5.2f} min] {line}" if m else line, end="", flush=True)
            if m:
                acc = max(float(g) for g in m.groups() if g) / 100  # best.pt keeps the better of the two
                for goal, _, _ in GOALS:
                    if acc >= goal:
                        reached.setdefault(goal, t / 60)
    if proc.returncode:
        raise SystemExit(f"bench_train: finetune exited with {proc.returncode}")
    minutes = (time.perf_counter() - t0) / 60
    with open(Path(out, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    best = max(max(float(r["val_accuracy"]), float(r.get("ema_val_accuracy") or 0)) for r in rows)
    summary = json.loads(Path(out, "summary.json").read_text())
    final = summary["final"]["accuracy"]
    print(f"\nreference run: {arch}, {epochs} epochs, {torch.get_num_threads()} threads, {cpu_line()}: final {final:.1%}, "
          f"best {best:.1%} (best.pt), {minutes:.1f} min wall")
    print("\n".join(goal_lines(reached, cpu_kind())))
    from records import write_record

    write_record("bench_train_reference", {
        "arch": arch, "epochs": epochs, "args": extra, "threads": torch.get_num_threads(),
        "precision": summary.get("precision"),  # what ran: --amp falls back to fp32 where the CPU has no fast bf16
        "final_accuracy": final, "best_accuracy": best, "minutes": minutes,
        "minutes_to": {f"{goal:.2f}": reached.get(goal) for goal, _, _ in GOALS},
        "epoch_accuracy": [float(r["val_accuracy"]) for r in rows],
    })


def goal_lines(reached: dict[float, float], here: str | None) -> list[str]:
    """One line per goal; a goal set for another CPU kind is marked, so no line reads as a claim about that kind."""
    lines = []
    for acc, limit, kind in GOALS:
        when = reached.get(acc)
        got = f"first reached after {when:.1f} min" if when is not None else "not reached"
        if kind != here:
            note = " (this CPU is not that kind: not a measurement of this goal)"
        elif kind == "avx2" and held_to_avx2():
            note = " (PyTorch held to AVX2 kernels on a CPU with AVX-512: an approximation, not a measurement of this goal)"
        else:
            note = ""
        lines.append(f"goal >= {acc:.0%} in <= {limit:.0f} min on {KIND[kind]}: {got}: "
                     f"{'MET' if when is not None and when <= limit else 'NOT MET'}{note}")
    return lines


def _cpuinfo_field(name: str) -> str:
    """The text after ``name:`` on its first /proc/cpuinfo line ('' where there is none)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(name)), "")


def cpu_kind() -> str | None:
    """The CPU kind the training goals name: amx_bf16, avx2 (AVX2 without AVX-512, or PyTorch held to AVX2), or None."""
    flags = set(_cpuinfo_field("flags").split())
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        flags &= {"avx2"}
    return "amx_bf16" if "amx_bf16" in flags else "avx2" if "avx2" in flags and "avx512f" not in flags else None


def held_to_avx2() -> bool:
    """PyTorch limited to AVX2 kernels on a CPU that has AVX-512 (its cores, caches and clocks are not an AVX2 CPU's)."""
    return os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" and "avx512f" in _cpuinfo_field("flags").split()


def cpu_line() -> str:
    """The CPU model and the flags that decide training speed, and whether PyTorch was held to AVX2."""
    model = _cpuinfo_field("model name") or "unknown CPU"
    flags = _cpuinfo_field("flags").split()
    want = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"{model} ({', '.join(want) or 'no avx2'}" + (f"; PyTorch held to {cap})" if cap else ")")


ABLATION = {  # one piece of the fast recipe taken away (-) or an optional one added (+) per row
    "fast recipe (defaults)": {},
    "- whitened stem": {"stem_init": "default"},
    "- muon (adamw 2e-3 everywhere)": {"optimizer": "adamw", "lr": 2e-3},
    "- muon - whitened stem": {"optimizer": "adamw", "lr": 2e-3, "stem_init": "default"},
    "+ progressive resizing": {"progressive": "auto"},
    "+ EMA 0.99": {"ema": 0.99},
    "+ zero-init residual": {"zero_init_residual": True},
    "- channels-last": {"channels_last": False},
    "+ test-time flip": {"tta_flip": True},
    "classic (sgd, fixed size, crop 0.35)": {"recipe": "classic"},
}


def ablation(data: str, out: str, arch: str, epochs: int, batch: int, workers: int, rows: list[int] | None = None,
             amp: bool = False) -> None:
    """Each row one uninterrupted finetune run, same seed, back to back: best validation accuracy and minutes."""
    from resnet_xray.train.job import finetune

    print("\n| recipe | best val accuracy | final | minutes |\n|---|---|---|---|", flush=True)
    for i, (name, kw) in enumerate(ABLATION.items()):
        if rows is not None and i not in rows:
            continue
        opts = FinetuneOptions(arch=arch, weights="random", epochs=epochs, batch_size=batch, workers=workers,
                               amp=amp, progress=False, **kw)
        t0 = time.perf_counter()
        r = finetune(data, opts, Path(out, name.split(" (")[0].replace(" ", "_").strip("+-_")))
        minutes = (time.perf_counter() - t0) / 60
        print(f"| {name} | {r['best']['accuracy']:.1%} ({r['best']['weights']}, epoch {r['best']['epoch']}) | "
              f"{r['final']['accuracy']:.1%} | {minutes:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: finetune's: 2, or 0 on 2 CPUs or fewer)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="throughput: also time ours with --amp --channels-last; --reference, --ablation: train with --amp")
    ap.add_argument("--reference", action="store_true", help="the reference run (make-dataset, finetune ResNet-50 from scratch) and its goal line")
    ap.add_argument("--ablation", action="store_true", help="the recipe ablation table (one run per row)")
    ap.add_argument("--epochs", type=int, default=None, help="--reference / --ablation: epochs per run (default: 5 / 12)")
    ap.add_argument("--rows", default=None, help="--ablation: which rows to run, e.g. 0,1,2,5 (default: all)")
    ap.add_argument("--out", default=None, help="--reference / --ablation: output folder (default: beside DATA)")
    a, extra = ap.parse_known_args()
    if a.workers is None:
        a.workers = default_workers()
    if a.epochs is None:
        a.epochs = 5 if a.reference else 12
    if a.reference or a.ablation:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if a.reference:
        out = a.out or str(Path(a.data).parent / a.arch)
        # --amp is this script's own flag (it would otherwise be swallowed here and the run would train in fp32).
        amp = ["--amp"] if a.amp else []
        reference_run(a.data, out, a.arch, a.epochs, ["--batch-size", str(a.batch_size), "--workers", str(a.workers), *amp, *extra])
        return
    if extra:
        ap.error(f"unrecognised arguments: {' '.join(extra)}")
    if a.ablation:
        ablation(a.data, a.out or str(Path(a.data).parent / "ablation"), a.arch, a.epochs, a.batch_size, a.workers,
                 [int(i) for i in a.rows.split(",")] if a.rows else None, amp=a.amp)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {a.arch} {a.size}px, "
          f"batch {a.batch_size}, {a.workers} workers, {a.steps} timed steps, {a.rounds} alternating rounds")
    rows: dict[str, list[float]] = {"recipe": [], "ours": []}
    rows["ours + EMA + channels-last"] = []  # per-step pieces, at the same resolution
    rows["ours, fast recipe (muon, channels-last)"] = []  # Muon's Newton-Schulz iterations cost time every step
    if a.amp:
        rows["ours --amp --channels-last"] = []
    args = (a.data, a.arch, a.size, a.batch_size, a.workers, a.steps)
    for r in range(a.rounds):
        rows["recipe"].append(recipe_loop(*args))
        rows["ours"].append(ours(*args))
        rows["ours + EMA + channels-last"].append(ours(*args, ema=0.99, channels_last=True))
        rows["ours, fast recipe (muon, channels-last)"].append(ours(*args, optimizer="muon", channels_last=True))
        if a.amp:
            rows["ours --amp --channels-last"].append(ours(*args, amp=True, channels_last=True))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rows.items()), flush=True)
    best = {k: max(v) for k, v in rows.items()}
    print("\n| loop | images/s (best of rounds) | vs recipe |\n|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} | {v / best['recipe']:.2f}x |")
    from records import write_record

    write_record("bench_train_throughput", {"arch": a.arch, "size": a.size, "batch_size": a.batch_size, "workers": a.workers,
                                            "steps": a.steps, "rounds": a.rounds, "threads": torch.get_num_threads(),
                                            "images_per_s": best})
    d = bench_data(a.data, DataBenchOptions(arch=a.arch, batch_size=a.batch_size, image_size=a.size, steps=a.steps))
    print(f"\ndata wait with the default {d['workers']} workers: {d['data_wait_fraction']:.1%} of step time "
          f"(loader alone {d['loader_images_per_s']:.0f} img/s, model step alone {d['step_images_per_s']:.1f} img/s)")


if __name__ == "__main__":
    main()
