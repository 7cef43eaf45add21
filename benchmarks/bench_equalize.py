"""Cross-layer equalisation before INT8: top-1 agreement with FP32 on control and val images, with and without it.

The INT8 repair's range step tries equalisation (``resnet_xray.deploy.equalize``) and keeps it
where it agrees more on the control images. This measures what it does on the reference models
``bench_optimize.py`` exported: the unpruned one and, where the run pruned, the pruned one.
Agreement only; nothing is timed.

    python benchmarks/bench_optimize.py --control out/control/val      # makes OUT/work/{base,pruned}.fp32.onnx
    python benchmarks/bench_equalize.py --work out/bench_optimize/work --control out/control/val
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from records import write_record


def routes(fp32_onnx: Path, calib: list[Path], control: list[Path], val: list[Path], tmp: Path, reduce_range: bool):
    """(route, control agreement, val agreement) for each INT8 route, plain and equalised."""
    from resnet_xray.compare import agreement, top1
    from resnet_xray.deploy.data import image_batches
    from resnet_xray.deploy.equalize import equalize_onnx
    from resnet_xray.deploy.onnx import inspect_onnx
    from resnet_xray.deploy.openvino import openvino_runner, quantize_nncf, write_ir
    from resnet_xray.deploy.qdq import QdqSettings
    from resnet_xray.deploy.sensitivity import Variants, load_arrays, logits_of

    v = Variants(fp32_onnx, calib, control, tmp, threads=None)
    vx = load_arrays(val, v.info, "val")
    ref_val = logits_of(v.info.path, vx).argmax(1)
    for per_channel in (True, False):
        for eq in (False, True):
            path = v.make(QdqSettings("minmax", per_channel, "uint8", reduce_range, eq), [])
            yield (f"ONNX Runtime QDQ, minmax, {'per-channel' if per_channel else 'per-tensor'} weights", eq,
                   v.score(path)[0], agreement(logits_of(path, vx).argmax(1), ref_val))
    info = inspect_onnx(fp32_onnx)
    cx = [x for _, x in image_batches(calib, info.preprocessing, 1, [], "calibrate", False)]
    plain_xml = write_ir(fp32_onnx, tmp / "plain.xml", info.sidecar)
    eq_xml = write_ir(equalize_onnx(fp32_onnx, tmp / "eq.onnx")[0], tmp / "eq.xml", info.sidecar)
    parent_k, parent_v = top1(openvino_runner(plain_xml), v.xs), top1(openvino_runner(plain_xml), vx)
    for eq, src in ((False, plain_xml), (True, eq_xml)):
        run = openvino_runner(quantize_nncf(src, cx, tmp / f"nncf_{eq}.xml").path)
        yield "NNCF (OpenVINO), default settings", eq, agreement(top1(run, v.xs), parent_k), agreement(top1(run, vx), parent_v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="out/bench_optimize/work", help="bench_optimize's work folder (its *.fp32.onnx exports)")
    ap.add_argument("--data", default="out/reference/data", help="train/ calibrates, val/ is scored")
    ap.add_argument("--control", default="out/control/val", help="the images the repair chooses on")
    ap.add_argument("--calib-images", type=int, default=128, help="calibration images, spread over train/ (optimize's default)")
    args = ap.parse_args(argv)

    from resnet_xray.deploy.data import list_images, spread
    from resnet_xray.deploy.quantize import detect_cpu_int8

    models = [(tag, Path(args.work) / f"{tag}.fp32.onnx") for tag in ("base", "pruned")]
    models = [(t, p) for t, p in models if p.exists()]
    if not models:
        print(f"bench_equalize: no *.fp32.onnx in {args.work}; run benchmarks/bench_optimize.py first", file=sys.stderr)
        return 2
    calib = spread(list_images(Path(args.data) / "train", "--data"), args.calib_images)
    control, val = list_images(Path(args.control), "--control"), list_images(Path(args.data) / "val", "--data")
    reduce_range = not detect_cpu_int8().vnni
    rows = []
    for tag, onnx_path in models:
        with tempfile.TemporaryDirectory(prefix="bench-equalize-") as tmp:
            for route, eq, ctl, v in routes(onnx_path, calib, control, val, Path(tmp), reduce_range):
                rows.append({"model": "pruned" if tag == "pruned" else "unpruned", "route": route, "equalized": eq,
                             "control_agreement": ctl, "val_agreement": v})
                print(f"{rows[-1]['model']:9s} {route:55s} {'equalised' if eq else 'plain':9s} control {ctl:.1%}  val {v:.1%}",
                      flush=True)
    write_record("bench_equalize", {"work": args.work, "calib_images": len(calib), "control_images": len(control),
                                    "val_images": len(val), "reduce_range": reduce_range, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
