"""Deployment benchmark for the README: every inference path of ResNet-50, batch 1, in one process.

Prints the bench table, the deployment goals as measured ratios (never asserted), and the
INT8-vs-FP32 agreement on a held-out folder. Writes JSON, a Markdown table and the
bar chart to --out.

    .venv/bin/python benchmarks/bench_deploy.py                       # reference model if trained, else random
    .venv/bin/python benchmarks/bench_deploy.py --weights out/reference/resnet50/best.pt \
        --calib out/reference/data/train --eval out/reference/data/val

Timings on a shared machine are noisy: the IQR column says how much.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REFERENCE = Path("out/reference")


def calib_subset(src: Path, dst: Path, per_class: int) -> Path:
    """Symlink the first ``per_class`` images of each class folder (or of a flat folder)."""
    from resnet_xray.image import expand_inputs

    dst.mkdir(parents=True, exist_ok=True)
    files = expand_inputs([src])
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    for d, fs in by_dir.items():
        rel = d.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in fs[:per_class]:
            link = dst / rel / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return dst


def main() -> int:
    from resnet_xray.deploy.commands import bench_flags

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--weights", default=None, help="default: out/reference/resnet50/best.pt if present, else random")
    ap.add_argument("--calib", default=None, help="calibration folder (default: the reference train set if present)")
    ap.add_argument("--calib-per-class", type=int, default=10, help="calibration images per class folder")
    ap.add_argument("--eval", default=None, help="held-out folder for INT8 agreement (default: reference val set)")
    # the bench command's own flags, from BenchOptions, with this benchmark's defaults (those of the README's figures)
    bench = bench_flags().only("batches", "threads", "repeats", "input_size", "compile_timeout_s", "compile",
                               defaults={"threads": 2, "input_size": 224, "compile_timeout_s": 420})
    bench.add(ap)
    ap.add_argument("--no-agreement", action="store_true", help="skip the INT8 agreement run on --eval")
    ap.add_argument("--out", default="out/bench_deploy")
    args = ap.parse_args()

    from resnet_xray.deploy.bench import run_bench
    from resnet_xray.deploy.charts import save_chart
    from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
    from resnet_xray.model import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref_ckpt = REFERENCE / args.arch / "best.pt"
    weights = args.weights or (str(ref_ckpt) if ref_ckpt.exists() else "random")
    calib_src = args.calib or (str(REFERENCE / "data" / "train") if (REFERENCE / "data" / "train").exists() else None)
    eval_dir = args.eval or (str(REFERENCE / "data" / "val") if (REFERENCE / "data" / "val").exists() else None)
    if args.no_agreement:
        eval_dir = None
    load_before = os.getloadavg()
    model, meta = load_model(args.arch if weights == "random" else None, weights)
    calib = str(calib_subset(Path(calib_src), out / "calib", args.calib_per_class)) if calib_src else None

    opts = bench.build(args, calib_dir=calib, work_dir=str(out / "models"))
    res = run_bench(model, meta, opts)
    save_chart(res, out / "bench.png")

    m = res.machine
    print(f"model: {meta.arch} ({meta.weights}), {res.macs / 1e9:.2f} G MACs per image at {opts.input_size} px")
    print(f"machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} threads, VNNI {'yes' if m['vnni'] else 'no'} "
          f"{m['vnni_flags']}; torch {m['torch']}, onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino', 'not installed')}")
    print(f"CPU FP32 peak: {res.peak_gflops:.0f} GFLOP/s ({res.peak_method()})")
    print(res.table())
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; "
          f"after: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (other processes share these cores)")
    for n in res.notes:
        print(f"note: {n}")

    agreement = None
    if eval_dir:
        # agreement at the model's own preprocessing (the bench above may run it at another size)
        from resnet_xray.deploy.onnx import ExportOptions, export_onnx

        fp32 = export_onnx(model, out / "models" / "native.onnx", ExportOptions(), meta)
        rep = quantize_onnx(fp32, calib or eval_dir, out / "models" / "native.int8.onnx",
                            QuantizeOptions(per_channel=True, eval_dir=eval_dir, min_agreement=0.9), torch_model=model)
        agreement = rep["agreement"]
        print(f"INT8 vs FP32 at {meta.preprocessing.crop} px on {agreement['images']} held-out images of {eval_dir} "
              f"({rep['held_out']['labels']}); calibrated on {rep['calibration']['images_used']} images:")
        for name, row in agreement["paths"].items():
            acc = f", accuracy {row['accuracy']:.1%}" if "accuracy" in row else ""
            print(f"  {name:14s} top-1 agreement {row['top1_agreement']:.2%}, top-5 overlap {row['top5_overlap']:.2%}, "
                  f"mean KL {row['mean_kl']:.2e}{acc}")

    # the deployment goals, as measured ratios
    for b in opts.batches:
        ok = {r.path: r for r in res.rows if r.batch == b and r.status == "ok"}

        def ms(name: str) -> float | None:
            return ok[name].stats.median_ms if name in ok else None

        def ratio(a: str, c: str) -> str:
            return f"{ms(a) / ms(c):.2f}x" if ms(a) and ms(c) else "n/a"

        own = [p for p in ok if not p.startswith("openvino")]
        peers = [p for p in ok if p.startswith("openvino")]
        best_own = min(own, key=lambda p: ok[p].stats.median) if own else None
        best_peer = min(peers, key=lambda p: ok[p].stats.median) if peers else None
        print(f"\ngoals at batch {b} (measured; >= means the goal asks at least this):")
        print(f"  ORT INT8 vs ORT FP32 speed-up:   {ratio('ort fp32', 'ort int8')} (goal >= 1.5x)")
        print(f"  ORT INT8 vs eager FP32 speed-up: {ratio('eager fp32', 'ort int8')} (goal >= 2.5x)")
        print(f"  fused vs unfused eager speed-up: {ratio('eager fp32', 'fused')} (goal > 1x)")
        if best_own and best_peer:
            print(f"  fastest own path {best_own} {ms(best_own):.1f} ms vs best peer {best_peer} {ms(best_peer):.1f} ms: "
                  f"{ms(best_peer) / ms(best_own):.2f}x (goal >= 1x)")
        if "ort fp32" in ok:
            r = ok["ort fp32"]
            print(f"  ORT FP32 achieved {r.gflops:.0f} GFLOP/s = {r.peak_share:.0%} of the measured {res.peak_gflops:.0f} GFLOP/s peak")
    if agreement:
        print(f"  INT8 top-1 agreement with FP32: {agreement['paths']['ort_int8']['top1_agreement']:.2%} (goal >= 99%)")

    doc = res.to_dict()
    doc["int8_agreement_eval"] = agreement
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| path | batch | median ms | IQR ms | img/s | speed-up vs eager FP32 | GFLOP/s | % of FP32 peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res.rows:
        if r.status != "ok":
            lines.append(f"| {r.path} | {r.batch} | {r.status}: {r.note} | | | | | |")
            continue
        share = f"{r.peak_share:.0%}" if r.peak_share is not None else ""
        lines.append(f"| {r.path} | {r.batch} | {r.stats.median_ms:.1f} | {r.stats.iqr_ms:.1f} | {r.throughput:.1f} | "
                     f"{r.speedup:.2f}x | {r.gflops:.0f} | {share} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}/bench.json, {out}/table.md, {out}/bench.png")

    from records import write_record

    write_record("bench_deploy", {
        "arch": meta.arch, "weights": str(meta.weights), "input_size": opts.input_size, "threads": m["threads"],
        "peak_gflops": res.peak_gflops,
        "rows": [{"path": r.path, "batch": r.batch, "status": r.status, "note": r.note,
                  "median_ms": r.stats.median_ms if r.stats else None, "iqr_ms": r.stats.iqr_ms if r.stats else None,
                  "images_per_s": r.throughput, "speedup": r.speedup, "gflops": r.gflops, "peak_share": r.peak_share}
                 for r in res.rows],
        "int8_top1_agreement": agreement["paths"]["ort_int8"]["top1_agreement"] if agreement else None,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
