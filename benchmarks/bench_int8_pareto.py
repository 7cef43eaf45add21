"""INT8 agreement against speed on one reference model: calibration size, and which layers stay in float.

The INT8 repair chooses on control images and is judged on val. Where the control images are
agreed on alike by every choice, it has nothing to choose by. This measures, on the unpruned
FP32 export ``bench_optimize.py`` left in ``--work``:

- ONNX Runtime QDQ INT8 (percentile, per-channel weights) calibrated on 128 to 1000 training
  images: top-1 agreement with FP32 on the control and val images, ONNX Runtime and OpenVINO
  reading the same file;
- the same file at 256 calibration images with whole stages kept in float (fc, layer4.2, layer4,
  layer3 and layer4): agreement, and OpenVINO's latency at 224 px with those layers in f32 and in
  bf16, against OpenVINO FP32, timed round-robin.

    python benchmarks/bench_optimize.py --control out/control/val      # makes OUT/work/base.fp32.onnx
    resnet-xray make-dataset --seed 2 --per-class 1 --val-per-class 300 out/control3k
    python benchmarks/bench_int8_pareto.py --work out/bench_optimize/work --control out/control/val \
        --control-large out/control3k/val
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from records import cpu_info, write_record

CALIBRATION = (128, 256, 512, 1000)
FLOAT_SETS = {"none": (), "fc": ("fc",), "layer4.2": ("layer4.2.",), "layer4": ("layer4.",), "layer4, fc": ("layer4.", "fc"),
              "layer3, layer4, fc": ("layer3.", "layer4.", "fc")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="out/bench_optimize/work")
    ap.add_argument("--data", default="out/reference/data")
    ap.add_argument("--control", default="out/control/val")
    ap.add_argument("--control-large", default=None,
                    help="a second, larger control folder (e.g. make-dataset --seed 2 --val-per-class 300 out/control3k "
                         "--per-class 1) whose agreement tells flip rates of 0.2% and 0.5% apart")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np

    from resnet_xray.compare import agreement, top1
    from resnet_xray.deploy.data import list_images, spread
    from resnet_xray.deploy.onnx import inspect_onnx
    from resnet_xray.deploy.openvino import compile_cpu, inspect_ir, native_bf16, open_ir, write_ir
    from resnet_xray.deploy.qdq import QdqSettings
    from resnet_xray.deploy.sensitivity import Variants, load_arrays, logits_of
    from resnet_xray.deploy.timing import time_models

    fp32 = Path(args.work) / "base.fp32.onnx"
    if not fp32.exists():
        print(f"bench_int8_pareto: {fp32} not found; run bench_optimize.py first", file=sys.stderr)
        return 2
    train = list_images(Path(args.data) / "train", "--data")
    val, control = list_images(Path(args.data) / "val", "--data"), list_images(args.control, "--control")
    settings = QdqSettings("percentile", True, "uint8", False)
    precisions = ("f32", "bf16") if native_bf16() else ("f32",)  # elsewhere OpenVINO would run a bf16 hint in f32
    x224 = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

    def at_224(xml: Path, precision: str):
        model, _ = inspect_ir(xml)
        model.reshape({model.inputs[0].get_any_name(): [1, 3, 224, 224]})
        request = compile_cpu(model, args.threads, None, precision=precision).create_infer_request()
        return lambda: request.infer({0: x224})

    # val and the larger control set are scored against FP32 once; each calibration size is one Variants on the control images
    info = inspect_onnx(fp32)
    vx = load_arrays(val, info, "val")
    ref_val = logits_of(fp32, vx, args.threads).argmax(1)
    large_x = load_arrays(list_images(args.control_large, "--control-large"), info, "larger control") if args.control_large else None
    ref_large = logits_of(fp32, large_x, args.threads).argmax(1) if large_x else None

    def ort_agreement(path: Path, xs: list, ref) -> float:
        return agreement(logits_of(path, xs, args.threads).argmax(1), ref)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parent_ir = write_ir(fp32, work / "fp32.xml", {})
        parent_val = top1(open_ir(parent_ir)[0], vx)
        calibration_rows, float_rows, timers = [], [], {"openvino fp32": at_224(parent_ir, "f32")}
        for n in CALIBRATION:
            (work / str(n)).mkdir()
            v = Variants(fp32, spread(train, n), control, work / str(n), args.threads)
            sets = FLOAT_SETS if n == 256 else {"none": ()}
            for name, prefixes in sets.items():
                rows = [r for r in v.groups.order if v.groups.kind[r] in ("conv", "fc") and r.startswith(prefixes)]
                path = v.make(settings, rows, work / str(n) / f"{name.replace(', ', '_')}.onnx")
                ir = write_ir(path, path.with_suffix(".xml"), {})
                row = {"calibration_images": n, "float": name, "float_layers": len(rows), "ort_control": v.score(path)[0],
                       "ort_val": ort_agreement(path, vx, ref_val), "openvino_val": agreement(top1(open_ir(ir)[0], vx), parent_val)}
                large = ""
                if large_x and n == 256:
                    row["ort_control_large"], row["control_large_images"] = ort_agreement(path, large_x, ref_large), len(large_x)
                    large = f", control {row['ort_control_large']:.2%} of {row['control_large_images']}"
                print(f"{n:5d} calibration images, float {name:20s} ({len(rows):2d} layers): ONNX Runtime control "
                      f"{row['ort_control']:.1%}{large}, val {row['ort_val']:.1%}; OpenVINO val {row['openvino_val']:.1%}", flush=True)
                if name == "none":
                    calibration_rows.append(row)
                if n == 256:
                    float_rows.append(row)
                    for p in precisions:
                        timers[f"{name} {p}"] = at_224(ir, p)
        stats = time_models(timers, warmup=5, repeats=60, rounds=6)
    fp32_ms = stats["openvino fp32"].median_ms
    for row in float_rows:
        row["ms"] = {p: stats[f"{row['float']} {p}"].median_ms for p in precisions}
        row["vs_openvino_fp32"] = {p: fp32_ms / ms for p, ms in row["ms"].items()}
        timed = ", ".join(f"{p} float layers {ms:.2f} ms ({fp32_ms / ms:.2f}x FP32)" for p, ms in row["ms"].items())
        print(f"float {row['float']:20s} OpenVINO at 224 px: {timed}; FP32 {fp32_ms:.2f} ms")
    print(f"CPU: {cpu_info()['kind']}; {args.threads} thread(s); load average {os.getloadavg()[0]:.1f} at the end")
    write_record("bench_int8_pareto", {"work": args.work, "control_images": len(control), "val_images": len(val),
                                       "settings": "percentile, per-channel weights, uint8 activations",
                                       "openvino_fp32_ms": fp32_ms, "calibration": calibration_rows, "float": float_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
