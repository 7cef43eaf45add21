"""Per-layer benchmark: do the engines' per-layer times add up, and what does `layers` cost next to `bench`?

ResNet-50 at 224 px, 2 threads, FP32 and ORT INT8 (random weights unless given), on ONNX Runtime and
OpenVINO. Prints, and records in benchmarks/results/bench_layers.<cpu-kind>.json:

- for each ENGINE-PRECISION, the sum of the per-layer times against the end-to-end latency of the
  same profiled runs (goal: within +-15%);
- the wall time of one `resnet-xray layers` run (2 engines, --against the FP32 parent, 100 images)
  against one `resnet-xray bench --model ...` of the same four paths (goal: at most 3x);
- the layers with the largest INT8 error.

    .venv/bin/python benchmarks/bench_layers.py                       # random ResNet-50
    .venv/bin/python benchmarks/bench_layers.py --weights out/reference/resnet50/best.pt --images out/reference/data/val

Both commands run as separate processes, start-up and model loading included, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "resnet_xray"]


def synthetic_images(folder: Path, n: int, size: int = 256) -> Path:
    """``n`` noise-and-gradient pictures, so the benchmark needs no dataset."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size)[None, :, None]
    for i in range(n):
        p = folder / f"{i:03d}.png"
        if not p.exists():
            img = 0.5 * ramp + 0.5 * rng.integers(0, 255, (size, size, 3))
            Image.fromarray(img.astype(np.uint8)).save(p)
    return folder


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds one command takes as its own process, and its stdout."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, r.stdout


def models(args: argparse.Namespace, out: Path, calib: Path) -> tuple[Path, Path]:
    """The FP32 export (and IR) and its ORT INT8 (and IR), made once and reused."""
    from resnet_xray.deploy.onnx import ExportOptions, export_onnx, sidecar_path
    from resnet_xray.deploy.openvino import qdq_to_ir
    from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
    from resnet_xray.model import load_model

    fp32, int8 = out / "fp32.onnx", out / "int8.onnx"
    if not fp32.exists():
        model, meta = load_model(args.arch if args.weights == "random" else None, args.weights)
        export_onnx(model, fp32, ExportOptions(input_size=args.size, openvino=True), meta)
    if not int8.exists():
        quantize_onnx(fp32, calib, int8, QuantizeOptions(min_agreement=0.0, time_check=False, max_calib_images=32))
        qdq_to_ir(int8, int8.with_suffix(".xml"), json.loads(sidecar_path(int8).read_text()))
    return fp32, int8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", default=None, help="folder of images for the errors (default: 100 synthetic ones)")
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per engine and model")
    ap.add_argument("--out", default="out/bench_layers")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from records import write_record

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = Path(args.images) if args.images else synthetic_images(out / "images", args.max_images)
    load_before = os.getloadavg()
    fp32, int8 = models(args, out, images)
    threads = ["--threads", str(args.threads)]
    layers_s, text = timed([*CLI, "layers", str(int8), "--against", str(fp32), "--engine", "ort,openvino", "--images", str(images),
                            "--max-images", str(args.max_images), "--runs", str(args.runs), *threads, "-o", str(out / "layers.png"),
                            "--json"])
    doc = json.loads(text)
    bench_s, _ = timed([*CLI, "bench", "--model", str(fp32), "--model", str(int8), "--model", str(fp32.with_suffix(".xml")),
                        "--model", str(int8.with_suffix(".xml")), *threads, "--json"])
    checks = doc["sum_check"]
    worst = sorted((r for r in doc["rows"] if r["error"] and r["name"] != "fc"), key=lambda r: -r["error"]["rel_l2"])[:5]
    m = doc["machine"]
    print(f"model: {args.arch} ({args.weights}) at {args.size} px; CPU: {m['cpu']}, {args.threads} threads; "
          f"onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}")
    for key, c in checks.items():
        print(f"{key:14s} end to end {c['end_to_end_ms']:7.2f} ms, per-layer sum {c['layer_sum_ms']:7.2f} ms "
              f"({c['ratio']:.0%}; goal 85-115%: {'met' if c['passed'] else 'MISSED'})")
    print(f"layers (2 engines, {doc['images']} images, --against): {layers_s:.1f} s; bench of the same 4 paths: {bench_s:.1f} s "
          f"-> {layers_s / bench_s:.2f}x (goal <= 3x)")
    print("largest INT8 error (rel L2 at the row's output): "
          + ", ".join(f"{r['name']} {r['error']['rel_l2']:.3g}" for r in worst))
    print(f"load average before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (other processes share these cores)")
    path = write_record("bench_layers", {
        "model": f"{args.arch} ({args.weights})", "input_size": args.size, "threads": args.threads, "images": doc["images"],
        "runs": args.runs, "end_to_end_ms": doc["end_to_end_ms"],
        "layer_sum_ms": {k: c["layer_sum_ms"] for k, c in checks.items()},
        "sum_ratio": {k: c["ratio"] for k, c in checks.items()},
        "sum_within_15pct": {k: c["passed"] for k, c in checks.items()},
        "layers_s": layers_s, "bench_s": bench_s, "layers_over_bench": layers_s / bench_s,
        "top_error_layers": [{"name": r["name"], "rel_l2": r["error"]["rel_l2"], "cosine": r["error"]["cosine"]} for r in worst],
        "rows": doc["rows"], "load_average_before": list(load_before),
    })
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
