"""The deploy subcommands: ``fuse``, ``export``, ``quantize`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import XrayError
from ..units import pct, si


def _cli():
    from .. import cli

    return cli


def _images_batch(paths: list[str], meta):
    from ..image import bundled_cat
    from .onnx import load_batch

    names, x, skipped = load_batch([bundled_cat(), *paths], meta.preprocessing)
    for s in skipped:
        print(f"resnet-xray: skipped {s.path}: {s.reason}", file=sys.stderr)
    return names, x


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .runtime import evaluate_models

    if args.limit is not None and args.limit < 1:
        raise XrayError(f"--limit {args.limit}: must be at least 1")
    res = evaluate_models(args.model, args.data, limit=args.limit, threads=args.threads)
    if args.json:
        _cli().print_json(res.to_dict())
        return 0
    print(f"{res.images} image(s); labels: {res.labels}")
    for m in res.models:
        acc = f"accuracy {pct(m.accuracy)}" if m.accuracy is not None else "no labels"
        agree = f"; {m.check.summary()}" if m.check else " (reference)"
        print(f"  {m.path} [{m.engine} {m.precision}]: {acc}{agree}")
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from ..model import save_checkpoint
    from .fuse import FusedBatchNorm, fuse_model, fusion_report
    from .onnx import check_writable

    out = check_writable(args.output)
    model, meta = _cli().model_from_args(args)
    fused = fuse_model(model)
    names, x = _images_batch(args.check or [], meta)
    rep = fusion_report(model, fused, x)
    eq = rep.pop("check")
    saved = None
    if eq.passed:  # a failed check writes nothing: no checkpoint that looks usable and is not
        saved = save_checkpoint(out, fused, meta.with_change(FusedBatchNorm.of(fused)))
    if args.json:
        _cli().print_json({**{k: _finite(v) for k, v in rep.items()}, "check": eq.to_dict(), "output": str(saved) if saved else None})
    else:
        print(f"folded {rep['folded']} BatchNorm layers into the convolutions before them "
              f"({rep['batchnorm_before']} before, {rep['batchnorm_after']} left)")
        print(f"check on {rep['images']} image(s): logits max abs diff {rep['max_abs_diff']:.3g}, "
              f"mean abs diff {rep['mean_abs_diff']:.3g} (max |logit| {rep['max_abs_logit']:.3g}); "
              f"top-1 agreement {pct(rep['top1_agreement'])}")
        if saved:
            print(f"saved {out}")
    if not eq.passed:
        print(f"resnet-xray: error: fused model fails its check ({eq.reason}); nothing written to {out}", file=sys.stderr)
        return 1
    return 0


def _finite(v):
    """NaN/Inf become None, so --json output stays JSON."""
    import math

    return None if isinstance(v, float) and not math.isfinite(v) else v


def cmd_export(args: argparse.Namespace) -> int:
    from .onnx import ExportOptions, check_onnx, export_onnx, remove_export

    opts = ExportOptions(opset=args.opset, dynamic_batch=args.dynamic_batch, exporter=args.exporter, openvino=not args.no_openvino)
    opts.check()  # a bad --opset is one line before any work
    if args.tensorrt:
        from .tensorrt import require_tensorrt

        require_tensorrt()  # fail in one line before the export, not after
    model, meta = _cli().model_from_args(args)
    path = export_onnx(model, args.output, opts, meta)
    try:
        rep = check_onnx(path, model, args.check or [])
        checks = [("ONNX Runtime", rep)]
        if opts.openvino:
            from .onnx import check_openvino

            checks.append(("OpenVINO", check_openvino(path.with_suffix(".xml"), model, args.check or [])))
    except BaseException:
        remove_export(path)
        raise
    failed = [(name, r) for name, r in checks if not r["passed"]]
    if failed:  # nothing that diverges stays on disk looking usable
        remove_export(path)
    for s in rep["skipped"]:
        print(f"resnet-xray: skipped {s['image']}: {s['reason']}", file=sys.stderr)
    engine = None
    if args.tensorrt and not failed:
        from .tensorrt import TensorRTOptions, build_engine

        engine = build_engine(path, path.with_suffix(f".{args.tensorrt}.engine"), TensorRTOptions(args.tensorrt, args.calib))
    if args.json:
        _cli().print_json({"output": None if failed else str(path), "openvino": str(path.with_suffix(".xml")) if opts.openvino and not failed else None,
                           "engine": str(engine) if engine else None, "check": rep,
                           **({"check_openvino": checks[1][1]} if len(checks) > 1 else {})})
    else:
        if not failed:
            ir = f", {path.with_suffix('.xml').name} + .bin (OpenVINO IR)" if opts.openvino else ""
            print(f"wrote {path} ({si(path.stat().st_size)}B, {args.exporter} exporter){ir} and sidecars; onnx.checker passed")
        for name, r in checks:
            print(f"{name} vs eager on {r['images']} image(s): max abs diff {_g(r['max_abs_diff'])} "
                  f"(tolerance {r['tolerance']:.3g}), top-1 agreement {pct(r['top1_agreement'])}, "
                  f"top-5 agreement {pct(r['top5_agreement'])}")
        if engine:
            print(f"wrote TensorRT {args.tensorrt} engine {engine}")
    if failed:
        name, r = failed[0]
        print(f"resnet-xray: error: {name} output DIVERGES from eager PyTorch ({r['reason']}); nothing written to {path}", file=sys.stderr)
        return 1
    return 0


def _g(v) -> str:
    return "nan" if v is None else f"{v:.3g}"


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeOptions, quantize_onnx

    torch_model = None
    if args.compare_torch:
        if args.weights == "sidecar":
            from .onnx import inspect_onnx

            args.weights = inspect_onnx(args.model).sidecar.get("weights")
            if not args.weights:
                raise XrayError(f"--compare-torch: {args.model} has no sidecar naming its weights; pass --weights")
        torch_model, _ = _cli().model_from_args(args)
    rr = {"auto": None, "on": True, "off": False}[args.reduce_range]
    opts = QuantizeOptions(method=args.method, per_channel=args.per_channel, reduce_range=rr, eval_dir=args.eval,
                           max_calib_images=args.max_images, progress=not args.json, engine=args.engine,
                           min_agreement=args.min_agreement, time_check=not args.no_time_check)
    want = ".xml" if args.engine == "openvino" else ".onnx"
    if Path(args.output).suffix.lower() != want:
        raise XrayError(f"-o {args.output}: --engine {args.engine} writes a {want} file; name it so")
    rep = quantize_onnx(args.model, args.calib, args.output, opts, torch_model=torch_model)
    skipped = rep["calibration"]["skipped"] + rep["agreement"]["skipped"]
    for s in skipped:
        print(f"resnet-xray: skipped {s['path']}: {s['reason']}", file=sys.stderr)
    failed = not rep["passed"]
    if failed:
        bad = next(r["check"] for r in rep["agreement"]["paths"].values() if r.get("check") and not r["check"]["passed"])
        fail_line = f"resnet-xray: error: INT8 model fails its check ({bad['reason']}); nothing written to {args.output}"
    if args.json:
        _cli().print_json(rep)
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
    from .bench import BenchOptions, run_bench, save_chart

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise XrayError(f"--batch {args.batch}: expected comma-separated integers such as 1,8") from None
    if args.output:
        from .onnx import check_writable

        check_writable(args.output)
    if args.model:
        return _bench_models(args)
    model, meta = _cli().model_from_args(args)
    opts = BenchOptions(batches=batches, threads=args.threads, repeats=args.repeats, compile=not args.no_compile,
                        compile_timeout_s=args.compile_timeout, calib_dir=args.calib, progress=not args.json)
    res = run_bench(model, meta, opts)
    if args.output:
        save_chart(res, args.output)
    if args.json:
        _cli().print_json(res.to_dict())
        return 0
    m = res.machine
    print(f"{meta.arch} ({meta.weights}), {si(res.macs)} MACs per image at {opts.input_size or meta.preprocessing.crop} px")
    print(f"CPU: {m['cpu']}, {m['threads']} thread(s) of {m['logical_cores']}, VNNI: {'yes' if m['vnni'] else 'no'}"
          + (f"; GPU: {m['cuda']}" if m.get("cuda") else ""))
    from .bench import peak_method

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
        _cli().print_json({"rows": rows, "machine": machine_info(args.threads), "method": "batch 1, round-robin after warm-up"})
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
        _cli().print_json(res.to_dict())
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


def register(sub) -> None:
    cli = _cli()

    p = sub.add_parser("fuse", help="fold every BatchNorm into the conv before it, and check against the unfused model")
    cli.add_model_args(p, allow_nonfinite=True)  # such a model then fails the check: exit 1, nothing written
    p.add_argument("-o", "--output", required=True, help="fused checkpoint (.pt) to write")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="images/folders to check on, besides the bundled photo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("export", help="export to ONNX (onnx.checker + ONNX Runtime vs eager check); TensorRT engines")
    cli.add_model_args(p, allow_nonfinite=True)
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

    p = sub.add_parser("quantize", help="static INT8 (ONNX Runtime QDQ) calibrated on an image folder, with an agreement report")
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
    cli.add_model_args(p, default_weights="sidecar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy of deployed models (.onnx / .xml) on a labelled folder, and agreement with the first")
    p.add_argument("data", help="ImageFolder (class folders, or a dataset with val/)")
    p.add_argument("--model", action="append", required=True, metavar="PATH", help="a deployed model; repeat to compare")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images, spread over the classes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("optimize", help="prune -> fuse -> export -> INT8 on every engine -> measure -> the fastest model within an accuracy budget")
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

    p = sub.add_parser("bench", help="every inference path side by side: latency, throughput, GFLOP/s vs measured peak")
    cli.add_model_args(p, default_weights="random")
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
    p.set_defaults(func=cmd_bench)
