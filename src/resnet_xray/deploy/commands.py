"""The deploy subcommands: ``fuse``, ``export``, ``quantize``, ``bench``, ``evaluate`` and ``optimize``.

Each parses its flags, calls one verb of :mod:`resnet_xray.api` (or the deploy module that
has no verb of its own yet), and renders the result; a failed equivalence check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cliutil import add_model_args, model_from_args, print_json, report_skipped
from ..errors import XrayError
from ..units import pct, si


def _g(v) -> str:
    return "nan" if v is None else f"{v:.3g}"


def cmd_fuse(args: argparse.Namespace) -> int:
    from .. import api
    from ..atomic import check_writable

    out = check_writable(args.output)  # before the model is built
    res = api.fuse(model_from_args(args), out, check=args.check or [])
    report_skipped(res.skipped)
    rep = res.check
    if args.json:
        print_json(res.to_dict())
    else:
        print(f"folded {res.folded} BatchNorm layers into the convolutions before them "
              f"({res.batchnorm_before} before, {res.batchnorm_after} left)")
        print(f"check on {rep['images']} image(s): logits max abs diff {_g(rep['max_abs_diff'])}, "
              f"mean abs diff {_g(rep['mean_abs_diff'])} (max |logit| {_g(rep['max_abs_logit'])}); "
              f"top-1 agreement {pct(rep['top1_agreement'])}")
        if res.output:
            print(f"saved {res.output}")
    if not res.passed:
        print(f"resnet-xray: error: fused model fails its check ({rep['check'].get('reason')}); nothing written to {out}",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .. import api
    from .onnx import ExportOptions

    ExportOptions(opset=args.opset, dynamic_batch=args.dynamic_batch, exporter=args.exporter).check()  # flags first
    res = api.export(model_from_args(args), args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                     exporter=args.exporter, openvino=not args.no_openvino, check=args.check or [],
                     tensorrt=args.tensorrt, calib=args.calib)
    report_skipped(res.check["skipped"])
    if args.json:
        print_json(res.to_dict())
    else:
        if res.output:
            ir = f", {res.openvino.name} + .bin (OpenVINO IR)" if res.openvino else ""
            print(f"wrote {res.output} ({si(res.output.stat().st_size)}B, {args.exporter} exporter){ir} and sidecars; "
                  "onnx.checker passed")
        checks = [("ONNX Runtime", res.check)] + ([("OpenVINO", res.check_openvino)] if res.check_openvino else [])
        for name, r in checks:
            print(f"{name} vs eager on {r['images']} image(s): max abs diff {_g(r['max_abs_diff'])} "
                  f"(tolerance {r['tolerance']:.3g}), top-1 agreement {pct(r['top1_agreement'])}, "
                  f"top-5 agreement {pct(r['top5_agreement'])}")
        if res.engine:
            print(f"wrote TensorRT {args.tensorrt} engine {res.engine}")
    if res.failed:
        name, r = res.failed[0]
        print(f"resnet-xray: error: {name} output DIVERGES from eager PyTorch ({r.get('reason')}); nothing written to "
              f"{args.output}", file=sys.stderr)
        return 1
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .. import api
    from .quantize import QuantizeOptions

    rr = {"auto": None, "on": True, "off": False}[args.reduce_range]
    options = dict(method=args.method, per_channel=args.per_channel, reduce_range=rr, eval_dir=args.eval,
                   max_calib_images=args.max_images, progress=not args.json, engine=args.engine,
                   min_agreement=args.min_agreement, time_check=not args.no_time_check)
    QuantizeOptions(**options)  # refuse bad flags before anything is loaded
    want = ".xml" if args.engine == "openvino" else ".onnx"
    if Path(args.output).suffix.lower() != want:
        raise XrayError(f"-o {args.output}: --engine {args.engine} writes a {want} file; name it so")
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
    rep = res.report
    failed = not rep.get("passed", True)
    if failed:
        bad = next(r["check"] for r in rep["agreement"]["paths"].values() if r.get("check") and not r["check"]["passed"])
        fail_line = f"resnet-xray: error: INT8 model fails its check ({bad['reason']}); nothing written to {args.output}"
    if args.json:
        print_json(res.to_dict())
        if failed:
            print(fail_line, file=sys.stderr)
        return 1 if failed else 0
    c = rep["choices"]
    if args.engine == "ort":
        print(c["reduce_range_reason"])
    route = (f"QDQ, {c['method']} calibration, {'per-channel' if c['per_channel'] else 'per-tensor'} weights, "
             f"U8S8 reduce_range={c['reduce_range']}") if args.engine == "ort" else c["format"]
    print(f"{route}; calibrated on {rep['calibration']['images_used']} image(s), {len(rep['calibration']['skipped'])} skipped")
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
              f"mean KL {_g(row['mean_kl'])}{acc}")
    sp = rep.get("speed")
    if sp:
        print(f"speed here ({sp['method']}): FP32 {sp['fp32_ms']:.1f} ms, INT8 {sp['int8_ms']:.1f} ms ({sp['speedup']:.2f}x)")
        if sp.get("note"):
            print(f"note: {sp['note']}")
    if failed:
        print(fail_line, file=sys.stderr)
        return 1
    print(f"wrote {rep['int8_model']} and {Path(rep['int8_model']).name}.json (choices and this report)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import api
    from .bench import BenchOptions, peak_method

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise XrayError(f"--batch {args.batch}: expected comma-separated integers such as 1,8") from None
    if args.output:
        from ..atomic import check_writable

        check_writable(args.output)
    if args.model:
        return _bench_models(args)
    options = dict(batches=batches, threads=args.threads, repeats=args.repeats, compile=not args.no_compile,
                   compile_timeout_s=args.compile_timeout, calib_dir=args.calib, progress=not args.json)
    opts = BenchOptions(**options)  # refuse bad flags before the model is built
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
    print(f"measured CPU FP32 peak: {res.peak_gflops:.0f} GFLOP/s ({peak_method(opts.threads)}); % peak for FP32 CPU rows only")
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .runtime import evaluate_models

    if args.limit is not None and args.limit < 1:
        raise XrayError(f"--limit {args.limit}: must be at least 1")
    res = evaluate_models(args.model, args.data, limit=args.limit, threads=args.threads)
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"{res.images} image(s); labels: {res.labels}")
    for m in res.models:
        acc = f"accuracy {pct(m.accuracy)}" if m.accuracy is not None else "no labels"
        agree = f"; {m.check.summary()}" if m.check else " (reference)"
        print(f"  {m.path} [{m.engine} {m.precision}]: {acc}{agree}")
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    """bench --model A [--model B ...]: deployed artefacts timed round-robin at batch 1 after warm-up."""
    import numpy as np

    from ..units import table
    from .bench import machine_info
    from .runtime import load_deployed, time_models

    if args.repeats < 1:
        raise XrayError(f"--repeats {args.repeats}: must be at least 1")
    loaded = {str(p): load_deployed(p, args.threads) for p in args.model}
    sizes = {m.preprocessing.crop for _, m in loaded.values()}
    if len(sizes) != 1:
        raise XrayError(f"--model: the models take different input sizes ({sorted(sizes)}); bench one network at a time")
    size = sizes.pop()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    stats = time_models({p: (lambda dm=dm: dm.run(x)) for p, (dm, _) in loaded.items()}, repeats=args.repeats,
                        progress=None if args.json else (lambda s: print(f"bench: {s}", file=sys.stderr)))
    first = next(iter(stats.values())).median
    rows = [{"model": p, "engine": loaded[p][0].engine, "precision": loaded[p][0].precision, "median_ms": st.median_ms,
             "iqr_ms": st.iqr_ms, "speedup_vs_first": first / st.median} for p, st in stats.items()]
    if args.json:
        print_json({"rows": rows, "machine": machine_info(args.threads), "method": "batch 1, round-robin after warm-up"})
        return 0
    m = machine_info(args.threads)
    print(f"CPU: {m['cpu']}, {m['threads']} thread(s), VNNI: {'yes' if m['vnni'] else 'no'}; batch 1, round-robin after warm-up")
    print(table(["model", "engine", "precision", "median ms", "IQR ms", "vs first"],
                [[r["model"], r["engine"], r["precision"], f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}", f"{r['speedup_vs_first']:.2f}x"]
                 for r in rows], "lllrrr"))
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from .optimize import OptimizeOptions, optimize

    try:
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    except AttributeError:
        engines = ()
    opts = OptimizeOptions(data=args.data, out=args.output, max_drop=args.max_drop, target_macs=args.target_macs,
                           prune_steps=args.prune_steps, finetune_epochs=args.finetune_epochs, engines=engines,
                           calib_images=args.calib_images, eval_images=args.eval_images, input_size=args.input_size,
                           threads=args.threads, repeats=args.repeats, mixed_precision=not args.no_mixed_precision,
                           batch_size=args.batch_size, workers=args.workers, resume=args.resume, overwrite=args.overwrite,
                           seed=args.seed, progress=not args.json)
    res = optimize(args.checkpoint, opts)
    if args.json:
        print_json(res.to_dict())
    else:
        m = res.machine
        print(f"CPU: {m['cpu']}, {m['threads']} thread(s), VNNI: {'yes' if m['vnni'] else 'no'}; FP32 checkpoint accuracy "
              f"{pct(res.baseline_accuracy)}, budget {res.max_drop} points")
        print(res.table())
        for c in res.candidates:
            if c.fp32_layers:
                print(f"{c.name}: layers kept in FP32: {', '.join(c.fp32_layers)}")
        if res.winner:
            print(f"winner: {res.winner.name}, {res.winner.speedup:.2f}x eager FP32 -> {res.winner_path} "
                  f"(resnet-xray classify --model {res.winner_path} IMAGES)")
        print(f"wrote {res.out / 'optimize.json'}" + (f" and {res.chart}" if res.chart else ""))
    if res.winner is None:
        print(f"resnet-xray: error: no candidate within {res.max_drop} points of the FP32 checkpoint; see {res.out / 'optimize.json'}",
              file=sys.stderr)
        return 1
    return 0


def fuse_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, allow_nonfinite=True)  # such a model then fails the check: exit 1, nothing written
    p.add_argument("-o", "--output", required=True, help="fused checkpoint (.pt) to write")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="images/folders to check on, besides the bundled photo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fuse)


def export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, allow_nonfinite=True)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (plus a .onnx.json sidecar)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 for dynamo; 18+ for dynamo, 9+ for torchscript)")
    p.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO IR (model.xml/.bin) written beside the .onnx")
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
    p.add_argument("--engine", choices=("ort", "openvino"), default="ort",
                   help="ort: ONNX Runtime QDQ .onnx (default); openvino: NNCF post-training INT8 .xml (often faster on CPUs)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="top-1 agreement with FP32 required on the held-out images, else nothing is written and exit 1 (default: 0.9)")
    p.add_argument("--no-time-check", action="store_true", help="skip timing FP32 against INT8 on this CPU")
    p.add_argument("--compare-torch", action="store_true",
                   help="also build PyTorch's FX INT8 (x86) from --weights (default: those the sidecar names)")
    add_model_args(p, default_weights="sidecar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize, option_flags={"max_calib_images": "--max-images", "eval_dir": "--eval"})


def evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="ImageFolder (class folders, or a dataset with val/)")
    p.add_argument("--model", action="append", required=True, metavar="PATH", help="a deployed model; repeat to compare")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images, spread over the classes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the trained model (a finetune best.pt)")
    p.add_argument("--data", required=True, help="ImageFolder dataset (train/ for calibration and fine-tuning, val/ for the budget)")
    p.add_argument("-o", "--output", required=True, help="output folder (the winner is OUT/model.onnx or OUT/model.xml)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points a candidate may lose against the checkpoint (default: 1.0)")
    p.add_argument("--target-macs", type=float, default=None, help="also prune to this share of MACs, e.g. 0.5 (default: no pruning)")
    p.add_argument("--prune-steps", type=int, default=2, help="pruning rounds (default: 2)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs per pruning round (default: 1)")
    p.add_argument("--engines", default="ort,openvino,torch", help="comma-separated: ort, openvino, torch (default: all)")
    p.add_argument("--calib-images", type=int, default=128, help="training images to calibrate INT8 on (default: 128)")
    p.add_argument("--eval-images", type=int, default=None, help="val images to score on (default: all)")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the checkpoint's crop)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every engine (default: their own)")
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 calls per candidate (default: 30)")
    p.add_argument("--no-mixed-precision", action="store_true", help="do not try NNCF accuracy control when INT8 loses too much")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch (default: 32)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes for fine-tuning (default: 0)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue a killed run in OUT (same options)")
    g.add_argument("--overwrite", action="store_true", help="replace what OUT holds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_optimize)


def bench_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, default_weights="random")
    p.add_argument("--model", action="append", metavar="PATH",
                   help="time deployed models (.onnx / .xml) instead, round-robin; repeat the flag to compare several")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for torch, ORT and OpenVINO")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per path (at least; default: 30)")
    p.add_argument("--calib", help="calibration images for the INT8 rows (default: crops of the bundled photo)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--compile-timeout", type=int, default=300, help="seconds to allow torch.compile (default: 300)")
    p.add_argument("-o", "--output", help="bar chart PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench, option_flags={"batches": "--batch", "compile_timeout_s": "--compile-timeout", "calib_dir": "--calib"})
