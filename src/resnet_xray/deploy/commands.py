"""The deploy subcommands: ``fuse``, ``export``, ``quantize`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cliutil import add_model_args, model_from_args, print_json, report_skipped
from ..errors import XrayError
from ..units import pct, si


def cmd_fuse(args: argparse.Namespace) -> int:
    from .. import api
    from ..atomic import check_writable

    check_writable(args.output)  # before the model is built
    res = api.fuse(model_from_args(args), args.output, check=args.check or [])
    report_skipped(res.skipped)
    if args.json:
        print_json(res.to_dict())
        return 0
    rep = res.check
    print(f"folded {res.folded} BatchNorm layers into the convolutions before them "
          f"({res.batchnorm_before} before, {res.batchnorm_after} left)")
    print(f"check on {rep['images']} image(s): logits max abs diff {rep['max_abs_diff']:.3g}, "
          f"mean abs diff {rep['mean_abs_diff']:.3g} (max |logit| {rep['max_abs_logit']:.3g}); "
          f"top-1 agreement {pct(rep['top1_agreement'])}")
    print(f"saved {res.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .. import api
    from .onnx import ExportOptions

    ExportOptions(opset=args.opset, dynamic_batch=args.dynamic_batch, exporter=args.exporter)  # flags first, then the model
    res = api.export(model_from_args(args), args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                     exporter=args.exporter, check=args.check or [], tensorrt=args.tensorrt, calib=args.calib)
    report_skipped(res.check["skipped"])
    path, rep, engine = res.output, res.check, res.engine
    if args.json:
        print_json(res.to_dict())
    else:
        print(f"wrote {path} ({si(path.stat().st_size)}B, {args.exporter} exporter) and {path.name}.json; onnx.checker passed")
        print(f"ONNX Runtime vs eager on {rep['images']} image(s): max abs diff {rep['max_abs_diff']:.3g} "
              f"(tolerance {rep['tolerance']:.3g}), top-1 agreement {pct(rep['top1_agreement'])}, "
              f"top-5 agreement {pct(rep['top5_agreement'])}")
        if engine:
            print(f"wrote TensorRT {args.tensorrt} engine {engine}")
    if not rep["passed"]:
        print(f"resnet-xray: error: ONNX Runtime output DIVERGES from eager PyTorch for {path}", file=sys.stderr)
        return 1
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .. import api
    from .quantize import QuantizeOptions

    rr = {"auto": None, "on": True, "off": False}[args.reduce_range]
    options = dict(method=args.method, per_channel=args.per_channel, reduce_range=rr, eval_dir=args.eval,
                   max_calib_images=args.max_images, progress=not args.json)
    QuantizeOptions(**options)  # refuse bad flags before anything is loaded
    torch_model = None
    if args.compare_torch:
        if args.weights == "sidecar":
            from .onnx import inspect_onnx

            args.weights = inspect_onnx(args.model).sidecar.get("weights")
            if not args.weights:
                raise XrayError(f"--compare-torch: {args.model} has no sidecar naming its weights; pass --weights")
        torch_model = model_from_args(args)
    res = api.quantize(args.model, args.calib, args.output, compare_torch=torch_model, **options)
    report_skipped(res.skipped)
    if args.json:
        print_json(res.to_dict())
        return 0
    rep = res.report
    c = rep["choices"]
    print(c["reduce_range_reason"])
    print(f"QDQ, {c['method']} calibration, {'per-channel' if c['per_channel'] else 'per-tensor'} weights, "
          f"U8S8 reduce_range={c['reduce_range']}; calibrated on {rep['calibration']['images_used']} image(s), "
          f"{len(rep['calibration']['skipped'])} skipped")
    print(f"size: {si(rep['size_fp32_bytes'])}B -> {si(rep['size_int8_bytes'])}B ({rep['compression']:.2f}x smaller)")
    a = rep["agreement"]
    held = "held-out" if rep["held_out"]["separate_from_calibration"] else "calibration (too few to hold any out)"
    print(f"agreement with FP32 on {a['images']} {held} image(s); labels: {rep['held_out']['labels']}")
    for name, row in a["paths"].items():
        if name == a["reference"]:
            if "accuracy" in row:
                print(f"  {name:14s} accuracy {pct(row['accuracy'])}")
            continue
        acc = f", accuracy {pct(row['accuracy'])}" if "accuracy" in row else ""
        print(f"  {name:14s} top-1 agreement {pct(row['top1_agreement'])}, top-5 overlap {pct(row['top5_overlap'])}, "
              f"mean KL {row['mean_kl']:.2e}{acc}")
    print(f"wrote {rep['int8_model']} and {Path(rep['int8_model']).name}.json (choices and this report)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import api
    from .bench import BenchOptions

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise XrayError(f"--batch {args.batch}: expected comma-separated integers such as 1,8") from None
    options = dict(batches=batches, threads=args.threads, repeats=args.repeats, compile=not args.no_compile,
                   compile_timeout_s=args.compile_timeout, calib_dir=args.calib, progress=not args.json)
    opts = BenchOptions(**options)  # refuse bad flags before the model is built
    if args.output:
        from ..atomic import check_writable

        check_writable(args.output)
    model = model_from_args(args)
    report = api.bench(model, output=args.output, **options)
    if args.json:
        print_json(report.to_dict())
        return 0
    res, meta = report.result, model.meta
    m = res.machine
    print(f"{meta.arch} ({meta.weights}), {si(res.macs)} MACs per image at {opts.input_size or meta.preprocessing.crop} px")
    print(f"CPU: {m['cpu']}, {m['threads']} thread(s) of {m['logical_cores']}, VNNI: {'yes' if m['vnni'] else 'no'}"
          + (f"; GPU: {m['cuda']}" if m.get("cuda") else ""))
    print(f"measured CPU FP32 peak (2048^3 matmul): {res.peak_gflops:.0f} GFLOP/s")
    print(res.table())
    for n in res.notes:
        print(f"note: {n}")
    if res.agreement:
        for name, row in res.agreement["paths"].items():
            if name != res.agreement["reference"]:
                print(f"note: {name} vs FP32 on {res.agreement['images']} held-out image(s): top-1 agreement "
                      f"{pct(row['top1_agreement'])}, mean KL {row['mean_kl']:.2e}")
    if args.output:
        print(f"chart: {args.output}")
    return 0


def fuse_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="fused checkpoint (.pt) to write")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="images/folders to check on, besides the bundled photo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fuse)


def export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (plus a .onnx.json sidecar)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 for dynamo)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: fixed batch 1)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.onnx route: dynamo (torch.export, default) or torchscript (dynamo=False)")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="more images/folders to compare on (the bundled photo is always used)")
    p.add_argument("--tensorrt", choices=("fp16", "int8"), help="also build a TensorRT engine (needs tensorrt and a CUDA GPU)")
    p.add_argument("--calib", help="calibration images for --tensorrt int8")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="FP32 .onnx file (from resnet-xray export)")
    p.add_argument("--calib", required=True, help="folder of calibration images (ImageFolder layout also gives accuracy)")
    p.add_argument("-o", "--output", required=True, help="INT8 .onnx to write (plus a .onnx.json with every choice)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="percentile", help="calibration (default: percentile)")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights against U8S8 saturation; auto: on exactly when the CPU lacks VNNI")
    p.add_argument("--eval", help="separate held-out folder for the agreement check (default: every 5th --calib image)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many calibration images")
    p.add_argument("--compare-torch", action="store_true",
                   help="also build PyTorch's FX INT8 (x86) from --weights (default: those the sidecar names)")
    add_model_args(p, default_weights="sidecar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize, option_flags={"max_calib_images": "--max-images", "eval_dir": "--eval"})


def bench_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, default_weights="random")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for torch, ORT and OpenVINO")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per path (at least; default: 30)")
    p.add_argument("--calib", help="calibration images for the INT8 rows (default: crops of the bundled photo)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--compile-timeout", type=int, default=300, help="seconds to allow torch.compile (default: 300)")
    p.add_argument("-o", "--output", help="bar chart PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench, option_flags={"batches": "--batch", "compile_timeout_s": "--compile-timeout", "calib_dir": "--calib"})
