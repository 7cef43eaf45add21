"""Pruning goals, measured side by side in one process: MACs removed, accuracy kept, real speed-ups.

Prunes the reference task's trained ResNet-50 with the iterative loop (resumable: rerun
the same command after an interruption), then times, on one batch-1 input, in this one
process: the unpruned model in eager FP32 and ONNX Runtime FP32, the pruned model in
eager and ORT FP32, and the pruned model quantised to INT8 (ORT QDQ, through the deploy
package's export and quantize). Accuracy is measured on the reference validation split
for every path. Prints the goal table with measured numbers, and writes it as JSON.

    .venv/bin/python benchmarks/bench_prune.py                      # the reference task
    .venv/bin/python benchmarks/bench_prune.py --steps 2 --finetune-epochs 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resnet_xray.deploy.timing import time_callable
from resnet_xray.deploy.onnx import ExportOptions, export_onnx, ort_session
from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
from resnet_xray.model import load_model
from resnet_xray.deploy.search import prune_with_ort as prune
from resnet_xray.pruning.commands import prune_flags
from resnet_xray.pruning.loop import loader_options
from resnet_xray.train.data import make_loaders
from resnet_xray.units import table


@dataclass
class BlockStats:
    median: float  # seconds: median over the interleaved blocks' medians
    min: float
    max: float
    blocks: int

    @property
    def median_ms(self) -> float:
        return self.median * 1e3

    @property
    def min_ms(self) -> float:
        return self.min * 1e3

    @property
    def max_ms(self) -> float:
        return self.max * 1e3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ort_accuracy(sess, loader) -> float:
    """Top-1 accuracy of an ONNX Runtime session with a fixed batch of 1, over a DataLoader."""
    name = sess.get_inputs()[0].name
    correct = n = 0
    for batch in loader:
        x, y = batch[0].numpy(), batch[1].numpy()
        for i in range(len(y)):
            logits = sess.run(None, {name: x[i : i + 1]})[0]
            correct += int(logits.argmax(1)[0] == y[i])
            n += 1
    return correct / max(n, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="out/reference/resnet50/best.pt")
    p.add_argument("--data", default="out/reference/data")
    # the prune command's own flags, from PruneOptions, with this benchmark's defaults: two rounds, everything on
    # one thread (a shared 2-core machine)
    flags = prune_flags().only("target_macs", "steps", "finetune_epochs", "importance", "lr", "global_pruning", "threads",
                               "latency_repeats", "batch_size", "workers", latency_repeats="--repeats",
                               defaults={"steps": 2, "threads": 1, "workers": 1, "latency_repeats": 30})
    flags.add(p)
    p.add_argument("--blocks", type=int, default=6, help="interleaved timing blocks per path (default: 6)")
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--out", default="out/bench_prune")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    # On a shared 2-core machine a second spinning OpenMP thread can slow a forward many times over.
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(None, args.weights)
    data = make_loaders(args.data, batch_size=args.batch_size, workers=args.workers, seed=0, **loader_options(meta))
    size = data.preprocessing.crop
    opts = flags.build(args, out=str(out / "prune"))
    result = prune(model, meta, opts, data, log=lambda s: print(s, flush=True))
    pruned, pmeta = load_model(None, result.final_checkpoint)
    t_pruned = time.perf_counter()

    # --- every path, side by side, in this process ---
    onnx_dir = out / "onnx"
    ex = ExportOptions(input_size=size, batch=1, exporter="torchscript")
    base_onnx = export_onnx(model.eval(), onnx_dir / "unpruned_fp32.onnx", ex, meta=meta)
    pruned_onnx = export_onnx(pruned.eval(), onnx_dir / "pruned_fp32.onnx", ex, meta=pmeta)
    calib_dir = Path(args.data) / "train"
    qreport = quantize_onnx(
        pruned_onnx,
        calib_dir,
        onnx_dir / "pruned_int8.onnx",
        QuantizeOptions(max_calib_images=args.calib_images, eval_dir=str(Path(args.data) / "val"), progress=False, min_agreement=0.9),
    )
    sessions = {
        "unpruned ORT FP32": ort_session(base_onnx, threads=args.threads),
        "pruned ORT FP32": ort_session(pruned_onnx, threads=args.threads),
        "pruned ORT INT8": ort_session(onnx_dir / "pruned_int8.onnx", threads=args.threads),
    }
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    runners = {
        "unpruned eager FP32": lambda: model(x),
        "pruned eager FP32": lambda: pruned(x),
        **{k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: xn})) for k, s in sessions.items()},
    }
    # The CPU is shared: time the paths in interleaved blocks, so a burst of load hits them all alike.
    blocks: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for fn in runners.values():
            time_callable(fn, warmup=5, repeats=1)
        for _ in range(args.blocks):
            for name, fn in runners.items():
                blocks[name].append(time_callable(fn, warmup=1, repeats=max(3, opts.latency_repeats // args.blocks), min_time_s=0.3).median)
    stats = {name: BlockStats(float(np.median(v)), float(min(v)), float(max(v)), len(v)) for name, v in blocks.items()}
    for name, st in stats.items():
        print(f"timed {name}: {st.median_ms:.2f} ms (block medians {st.min_ms:.2f}-{st.max_ms:.2f})", flush=True)

    acc = {
        "unpruned eager FP32": result.baseline["accuracy"],
        "pruned eager FP32": result.rounds[-1]["accuracy"],
    }
    for name, s in sessions.items():
        acc[name] = ort_accuracy(s, data.val)
    ref = stats["unpruned eager FP32"].median
    rows = [
        [name, f"{st.median_ms:.2f}", f"{st.min_ms:.2f}-{st.max_ms:.2f}", f"{ref / st.median:.2f}x", f"{100 * acc[name]:.1f}%"]
        for name, st in stats.items()
    ]
    latency_txt = table(["path (batch 1)", "median ms", f"range of {args.blocks} block medians", "vs unpruned eager", "val acc"], rows)

    base_macs, macs = result.baseline["macs"], result.rounds[-1]["macs"]
    ort_speedup = stats["unpruned ORT FP32"].median / stats["pruned ORT FP32"].median
    int8_speedup = ref / stats["pruned ORT INT8"].median
    fp32_loss = 100 * (acc["unpruned eager FP32"] - acc["pruned eager FP32"])
    int8_loss = 100 * (acc["unpruned eager FP32"] - acc["pruned ORT INT8"])
    goals = [
        ["MACs removed", "50%", f"{100 * (1 - macs / base_macs):.1f}% ({base_macs / 1e9:.3f} G -> {macs / 1e9:.3f} G)", _met(1 - macs / base_macs >= 0.5 - 0.01)],
        ["val accuracy lost, pruned + fine-tuned", "<= 1.0 pt", f"{fp32_loss:+.1f} pt", _met(fp32_loss <= 1.0)],
        ["ORT FP32 speed-up, pruned vs unpruned", ">= 1.6x", f"{ort_speedup:.2f}x", _met(ort_speedup >= 1.6)],
        ["pruned INT8 (ORT) vs unpruned eager FP32", ">= 4x", f"{int8_speedup:.2f}x", _met(int8_speedup >= 4.0)],
        ["val accuracy lost, pruned + INT8", "<= 1.5 pt", f"{int8_loss:+.1f} pt", _met(int8_loss <= 1.5)],
    ]
    goals_txt = table(["goal", "target", "measured", "met"], goals, align="llll")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {args.threads} intra-op thread(s), load average {os.getloadavg()[0]:.1f} at the end"
    setup = (
        f"{meta.arch} from {args.weights}, {size}x{size} input, pruning: {args.importance}, "
        f"{'global' if args.global_pruning else 'per-group'} ranking, {args.steps} rounds x {args.finetune_epochs} fine-tuning epoch(s) (lr {args.lr or 'default'}), "
        f"target keeps {args.target_macs:.0%} of MACs; INT8: ORT static QDQ, {qreport['calibration']['images_used']} calibration images"
    )
    print()
    print(setup)
    print(f"machine: {machine}")
    print()
    print(result.rounds_table)
    print()
    print(latency_txt)
    print()
    print(goals_txt)
    print()
    print("channels per stage (before -> after)")
    print(result.stage_table)
    print(f"\nwall time: pruning loop {t_pruned - t_start:.0f} s, side-by-side measurements {time.perf_counter() - t_pruned:.0f} s")
    doc = {
        "setup": setup,
        "machine": machine,
        "baseline": result.baseline,
        "rounds": result.rounds,
        "latency_ms": {k: v.to_dict() for k, v in stats.items()},
        "accuracy": acc,
        "goals": [dict(zip(["goal", "target", "measured", "met"], g)) for g in goals],
        "quantization_agreement": qreport.get("agreement"),
    }
    (out / "bench_prune.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    from records import write_record

    write_record("bench_prune", {
        "arch": meta.arch, "weights": args.weights, "input_size": size, "importance": args.importance, "steps": args.steps,
        "finetune_epochs": args.finetune_epochs, "threads": args.threads,
        "macs_before": base_macs, "macs_after": macs, "macs_kept": macs / base_macs,
        "latency_ms": {k: v.median_ms for k, v in stats.items()}, "accuracy": acc,
        "accuracy_lost_fp32_points": fp32_loss, "accuracy_lost_int8_points": int8_loss,
        "ort_fp32_speedup": ort_speedup, "pruned_int8_vs_eager": int8_speedup,
    })
    return 0


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


if __name__ == "__main__":
    sys.exit(main())
