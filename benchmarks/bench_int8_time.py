"""Where INT8 time goes at small MACs: OpenVINO INT8 per op kind and kernel, unpruned against pruned widths.

ResNet-50 at 224 px (random weights: time depends on shapes, not values), 2 threads. It prunes one copy
to ``--target`` of the MACs once per ``--round-to`` value (remaining widths kept multiples of it: 8 is
the AVX2 INT8 kernels' block of output channels, 16 AVX-512's), exports each, quantizes it with
ONNX Runtime (QDQ), and profiles it with ``resnet-xray layers --engine openvino``. Prints, and records
in benchmarks/results/bench_int8_time.<cpu-kind>.json:

- end-to-end latency and the share of time in convolutions, fc, pooling and the rest;
- the convolutions' pace (GMAC/s): whether time still follows MACs once the model is small;
- the kernels that take the time, by OpenVINO's exec type.

Each model is profiled ``--repeats`` times, round-robin, and its median run is kept.

    .venv/bin/python benchmarks/bench_int8_time.py
    .venv/bin/python benchmarks/bench_int8_time.py --target 0.25 --round-to 1,8,16

The same pruning ratio with different ``--round-to`` values is the layout fix the project controls:
if rounding widths to the kernel block mattered, the rounded models would run faster per MAC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_layers import CLI, synthetic_images, timed  # noqa: E402
from records import write_record  # noqa: E402


def make_models(args: argparse.Namespace, out: Path, calib: Path) -> list[dict[str, Any]]:
    """The unpruned model and one pruned copy per --round-to, each exported and quantized once (reused when present)."""
    from resnet_xray.deploy.onnx import ExportOptions, export_onnx
    from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
    from resnet_xray.model import load_model
    from resnet_xray.pruning.structured import count_macs, prune_to_macs

    model, meta = load_model(args.arch, "random")
    model.eval()
    base_macs = count_macs(model, args.size)
    made = []
    for round_to in [None, *args.round_to]:
        label = "unpruned" if round_to is None else f"pruned, widths x{round_to}"
        stem = out / ("base" if round_to is None else f"pruned-r{round_to}")
        fp32, int8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
        facts = stem.with_suffix(".json")
        if not int8.exists() or not facts.exists():
            m = model if round_to is None else prune_to_macs(model, int(args.target * base_macs), criterion="l1",
                                                             input_size=args.size, round_to=round_to).model
            m.eval()
            export_onnx(m, fp32, ExportOptions(input_size=args.size, openvino=True), meta)
            quantize_onnx(fp32, calib, int8, QuantizeOptions(min_agreement=0.0, time_check=False, max_calib_images=32))
            facts.write_text(json.dumps({"macs": count_macs(m, args.size)}))
        macs = json.loads(facts.read_text())["macs"]
        made.append({"label": label, "round_to": round_to, "macs": macs, "macs_share": macs / base_macs, "int8": int8})
    return made


def account(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """Time per op kind and per kernel, and the convolutions' pace, from one `layers --json` document."""
    by_kind: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    conv_macs = 0
    for row in doc["rows"]:
        t = (row.get("times_ms") or {}).get(key)
        if t is None:
            continue
        by_kind[row["kind"]] += t
        kernel = (row.get("kernels") or {}).get(key) or "?"
        by_kernel[kernel.split(" (")[0]] += t
        conv_macs += row["macs"] if row["kind"] == "conv" else 0
    total = sum(by_kind.values())
    return {
        "end_to_end_ms": doc["end_to_end_ms"][key],
        "layer_sum_ms": total,
        "share": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "kernel_share": {k: v / total for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])},
        "conv_ms": by_kind.get("conv", 0.0),
        "conv_gmac_s": conv_macs / (by_kind["conv"] * 1e6) if by_kind.get("conv") else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.25, help="share of the MACs the pruned copies keep")
    ap.add_argument("--round-to", default="1,8,16", help="comma-separated width multiples, one pruned copy each")
    ap.add_argument("--runs", type=int, default=30, help="profiled runs per model")
    ap.add_argument("--repeats", type=int, default=3, help="profiles per model, round-robin; the median is kept")
    ap.add_argument("--out", default="out/bench_int8_time")
    args = ap.parse_args()
    args.round_to = [int(v) for v in args.round_to.split(",")]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = synthetic_images(out / "images", 32)
    load_before = os.getloadavg()
    models = make_models(args, out, calib)
    key = "openvino-int8"
    docs: list[list[dict[str, Any]]] = [[] for _ in models]
    for _ in range(args.repeats):  # round-robin, so a noisy spell on the shared machine hits every model
        for m, kept in zip(models, docs):
            _, text = timed([*CLI, "layers", str(m["int8"]), "--engine", "openvino", "--runs", str(args.runs),
                             "--threads", str(args.threads), "--json"])
            kept.append(json.loads(text))
    rows = []
    for m, kept in zip(models, docs):
        doc = sorted(kept, key=lambda d: d["end_to_end_ms"][key])[len(kept) // 2]  # the median run
        rows.append({k: v for k, v in m.items() if k != "int8"} | account(doc, key)
                    | {"end_to_end_ms_runs": [d["end_to_end_ms"][key] for d in kept]})
    machine = docs[0][0]["machine"]

    base = rows[0]
    print(f"{args.arch} at {args.size} px, OpenVINO INT8 (ORT QDQ file), {args.threads} threads; CPU: {machine['cpu']}")
    for r in rows:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in r["share"].items() if v >= 0.001)
        kernels = ", ".join(f"{k} {v:.0%}" for k, v in list(r["kernel_share"].items())[:3])
        print(f"{r['label']:22s} MACs {r['macs_share']:6.1%}  {r['end_to_end_ms']:6.2f} ms "
              f"({base['end_to_end_ms'] / r['end_to_end_ms']:.2f}x unpruned)  conv {r['conv_gmac_s']:.0f} GMAC/s; "
              f"time: {shares}; kernels: {kernels}")
    print(f"load average before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (other processes share these cores)")
    path = write_record("bench_int8_time", {
        "model": f"{args.arch} (random)", "input_size": args.size, "threads": args.threads, "runs": args.runs,
        "target": args.target, "repeats": args.repeats, "engine": key, "rows": rows, "load_average_before": list(load_before),
    })
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
