"""The deploy subcommands: ``fuse``, ``export``, ``quantize``, ``bench``, ``evaluate`` and ``optimize``.

Each parses its flags, calls one verb of :mod:`resnet_xray.api` (or the deploy module that
has no verb of its own yet), and renders the result; a failed equivalence check exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cliutil import add_model_args, model_from_args, print_json, refuse_batch_flags_without_out, report_skipped
from ..errors import XrayError
from ..options import Flags, fields_of
from ..units import pct, si


# --- which options-dataclass fields are flags, and how the few that differ are spelled ---


def export_flags() -> Flags:
    from .onnx import ExportOptions

    return Flags(ExportOptions, ("opset", "dynamic_batch", "exporter", "cam_output"), choices={"exporter": ("dynamo", "torchscript")})


def quantize_flags() -> Flags:
    from .quantize import METHODS, QuantizeOptions

    return Flags(
        QuantizeOptions,
        ("method", "per_channel", "reduce_range", "eval_dir", "control_dir", "max_calib_images", "engine", "min_agreement",
         "float_layers", "time_check"),
        spelling={"eval_dir": "--eval", "control_dir": "--control", "max_calib_images": "--max-images"},
        choices={"method": METHODS, "engine": ("ort", "openvino"), "reduce_range": {"auto": None, "on": True, "off": False},
                 "float_layers": ("auto", "f32", "bf16")},
    )


def bench_flags() -> Flags:
    from .bench import BenchOptions

    return Flags(BenchOptions, ("batches", "threads", "repeats", "calib_dir", "compile", "compile_timeout_s"),
                 spelling={"batches": "--batch", "calib_dir": "--calib", "compile_timeout_s": "--compile-timeout"})


def evaluate_flags() -> Flags:
    from .runtime import EvaluateOptions

    return Flags(EvaluateOptions, ("limit", "threads"))


def layers_flags() -> Flags:
    from .layers import LayersOptions

    return Flags(LayersOptions, ("engines", "images", "max_images", "sort", "threads", "runs", "warmup", "input_size",
                                   "sensitivity", "calib"),
                 spelling={"engines": "--engine"}, repeat=("engines",), metavar={"engines": "ENGINE[,ENGINE]"},
                 choices={"sensitivity": ("layer", "block")})


OPTIMIZE_FLAGS = ("data", "out", "max_drop", "target_macs", "search", "prune_steps", "finetune_epochs", "importance", "distill", "engines", "calib_images",
                  "eval_images", "input_size", "timing_size", "threads", "repeats", "objective", "mixed_precision", "min_agreement", "control",
                  "batch_size", "workers", "seed")


def optimize_flags(names: tuple[str, ...] = OPTIMIZE_FLAGS) -> Flags:
    from ..pruning.importance import CRITERIA
    from .optimize_spec import OBJECTIVES, OptimizeOptions

    return Flags(
        OptimizeOptions, names, spelling={"out": ("-o", "--output")}, required=("data", "out"),
        choices={"importance": CRITERIA, "objective": OBJECTIVES},
    )


def _g(v) -> str:
    return "nan" if v is None else f"{v:.3g}"


def cmd_fuse(args: argparse.Namespace) -> int:
    from .. import api
    from ..atomic import check_writable, refuse_inputs

    refuse_inputs(args.output, {"--weights": args.weights})  # -o ft/best.pt would replace the trained checkpoint
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

    from ..atomic import check_suffix

    flags = export_flags()
    flags.build(args)  # bad flags fail before the model is built
    check_suffix(args.output, "-o", (".onnx",))  # export -o m.txt wrote ONNX that --model then refused
    res = api.export(model_from_args(args), args.output, **flags.values(args), openvino=not args.no_openvino,
                     check=args.check or [], tensorrt=args.tensorrt, calib=args.calib)
    report_skipped(res.check["skipped"])
    if args.json:
        print_json(res.to_dict())
    else:
        if res.output:
            from .artefact import artefact_bytes

            ir = f", {res.openvino.name} + .bin ({si(artefact_bytes(res.openvino))}B, OpenVINO IR)" if res.openvino else ""
            print(f"wrote {res.output} ({si(artefact_bytes(res.output))}B, {args.exporter} exporter){ir} and sidecars; "
                  "onnx.checker passed")
        checks = [(n, r) for n, r in (("ONNX Runtime", res.check), ("OpenVINO", res.check_openvino), ("TensorRT", res.check_tensorrt))
                  if r is not None]
        for name, r in checks:
            print(f"{name} vs eager on {r['images']} image(s): max abs diff {_g(r['max_abs_diff'])} "
                  f"(tolerance {r['tolerance']:.3g}), top-1 agreement {pct(r['top1_agreement'])}, "
                  f"top-5 agreement {pct(r['top5_agreement'])}")
        if res.engine:
            print(f"wrote TensorRT {args.tensorrt} engine {res.engine}")
    if res.failed:
        name, r = res.failed[0]
        kept = (f"engine removed; {res.output} (which passed its own check) kept" if res.output
                else f"nothing written to {args.output} (what was there is unchanged)")
        print(f"resnet-xray: error: {name} output DIVERGES from eager PyTorch ({r.get('reason')}); {kept}", file=sys.stderr)
        return 1
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .. import api
    options = fields_of(quantize_flags().build(args, progress=not args.json))  # refuse bad flags before anything is loaded
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
    rep = res.to_dict()
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
    route = (f"QDQ, {c['method']} calibration, {_weights(c)} weights, "
             f"U8S8 reduce_range={c['reduce_range']}") if args.engine == "ort" else c["format"]
    print(f"{route}; calibrated on {rep['calibration']['images_used']} image(s), {len(rep['calibration']['skipped'])} skipped")
    print(f"size: {si(rep['size_fp32_bytes'])}B -> {si(rep['size_int8_bytes'])}B ({rep['compression']:.2f}x smaller)")
    if c.get("repair"):
        _print_repair(c["repair"])
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


def _print_repair(r: dict) -> None:
    """What the INT8 repair tried and kept: settings, then layers in float, chosen on control images."""
    ch = r.get("chosen") or r  # ONNX Runtime's repair names its chosen candidate; NNCF's is the repair itself
    kept = ", ".join(ch["kept_float"]) or "none"
    how = f"{ch['method']}, {_weights(ch)} weights" if "per_channel" in ch else r["why"]
    print(f"repair: below {pct(r['target'])} agreement, so chosen on {r['control_images']} control image(s) (calibrated on "
          f"{r['calibration_images']} others): {how}; kept in float: {kept}; control agreement {pct(ch['agreement'])}")
    if r.get("float_layers"):
        print(f"repair: float layers in {r['float_layers']['precision']} ({r['float_layers']['why']})")
    if not r["reached"] and "pareto" in r:
        print("repair: no candidate met the target; agreement against speed (Pareto front):")
        for p in r["pareto"]:
            print(f"  {pct(p['agreement'])} at {p['latency_ms']:.2f} ms: {p['method']}, {_weights(p)}, "
                  f"{len(p['kept_float'])} layer(s) in float")
    elif not r["reached"]:  # NNCF's: each setting, then accuracy control with at most its float layers
        tried = "; ".join(f"{t['setting']} {pct(t['control_agreement'])}" for t in r["tried"])
        print(f"repair: no candidate met the target; control agreement of each: {tried}; "
              f"{len(r['kept_float'])} layer(s) in float {pct(r['agreement'])}")


def _weights(choice: dict) -> str:
    """How a QDQ choice quantised the weights, e.g. ``per-channel`` or ``per-tensor (cross-layer equalised)``."""
    return ("per-channel" if choice["per_channel"] else "per-tensor") + (" (cross-layer equalised)" if choice.get("equalized") else "")


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import api

    opts = bench_flags().build(args, progress=not args.json)  # refuse bad flags before the model is built
    if args.output:
        from ..atomic import check_writable

        check_writable(args.output)
    if args.model:
        return _bench_models(args, opts)
    model = model_from_args(args)
    res = api.bench(model, opts, output=args.output)
    if args.json:
        print_json(res.to_dict())
        return 0
    meta = model.meta
    m = res.machine
    print(f"{meta.arch} ({meta.weights}), {si(res.macs)} MACs per image at {opts.input_size or meta.preprocessing.crop} px")
    print(f"CPU: {m['cpu']}, {m['threads']} thread(s) of {m['logical_cores']}, VNNI: {'yes' if m['vnni'] else 'no'}"
          + (f"; GPU: {m['cuda']}" if m.get("cuda") else ""))
    print(f"CPU FP32 peak: {res.peak_gflops:.0f} GFLOP/s ({res.peak_method()}); % peak for FP32 CPU rows only")
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
    from .. import api

    if args.out:
        return _evaluate_to_file(args)
    refuse_batch_flags_without_out(args, "--ray", "--workers", "--overwrite")

    res = api.evaluate(args.model, args.data, **evaluate_flags().values(args))
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"{res.images} image(s); labels: {res.labels}")
    for m in res.models:
        acc = f"accuracy {pct(m.accuracy)}" if m.accuracy is not None else "no labels"
        agree = f"; {m.check.summary()}" if m.check else " (reference)"
        print(f"  {m.path} [{m.engine} {m.precision}]: {acc}{agree}")
    return 0


def _bench_models(args: argparse.Namespace, opts) -> int:
    """bench --model A [--model B ...]: deployed artefacts timed round-robin at batch 1 after warm-up."""
    import numpy as np

    from ..units import table
    from .bench import machine_info
    from .runtime import THROUGHPUT_METHOD, deployed_throughput, load_deployed
    from .timing import time_models

    if opts.batches != (1,):  # it times batch 1 alone; another --batch was once dropped without a word
        raise XrayError(f"--batch {','.join(map(str, opts.batches))}: bench --model times batch 1 only; "
                        "drop --batch, or bench the checkpoint (--weights) at other batch sizes")
    loaded = {str(p): load_deployed(p, opts.threads) for p in args.model}
    for p, (dm, _) in loaded.items():  # padded to its batch, one image would be timed as several
        if (dm.fixed_batch or 1) > 1:
            raise XrayError(f"--model {p}: has a fixed batch of {dm.fixed_batch}; bench --model times batch 1 "
                            "(export it with a batch of 1 or --dynamic-batch)")
    sizes = {m.preprocessing.crop for _, m in loaded.values()}
    if len(sizes) != 1:
        raise XrayError(f"--model: the models take different input sizes ({sorted(sizes)}); bench one network at a time")
    size = sizes.pop()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    stats = time_models({p: (lambda dm=dm: dm.run(x)) for p, (dm, _) in loaded.items()}, repeats=opts.repeats,
                        progress=None if args.json else (lambda s: print(f"bench: {s}", file=sys.stderr)))
    first = next(iter(stats.values())).median
    rows = [{"model": p, "engine": loaded[p][0].engine, "precision": loaded[p][0].precision, "median_ms": st.median_ms,
             "iqr_ms": st.iqr_ms, "speedup_vs_first": first / st.median,
             "throughput_img_s": deployed_throughput(p, opts.threads)} for p, st in stats.items()]
    m = machine_info(opts.threads)
    if args.output:
        from .charts import save_models_chart

        save_models_chart(stats, {p: (dm.engine, dm.precision) for p, (dm, _) in loaded.items()}, m, args.output)
    if args.json:
        print_json({"rows": rows, "machine": m, "method": f"batch 1, round-robin after warm-up; {THROUGHPUT_METHOD}",
                    "chart": str(args.output) if args.output else None})
        return 0
    print(f"CPU: {m['cpu']}, {m['threads']} thread(s), VNNI: {'yes' if m['vnni'] else 'no'}; batch 1, round-robin after warm-up")
    print(table(["model", "engine", "precision", "median ms", "IQR ms", "vs first", "tput img/s"],
                [[r["model"], r["engine"], r["precision"], f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}", f"{r['speedup_vs_first']:.2f}x",
                  f"{r['throughput_img_s']:.1f}"] for r in rows], "lllrrrr"))
    print(f"tput img/s: {THROUGHPUT_METHOD}")
    if args.output:
        print(f"chart: {args.output}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from .optimize import optimize

    opts = optimize_flags(OPTIMIZE_FLAGS + ("resume", "overwrite")).build(args, progress=not args.json)
    res = optimize(args.checkpoint, opts)
    if args.json:
        print_json(res.to_dict())
    else:
        m = res.machine
        print(f"CPU: {m['cpu']}, {m['threads']} thread(s), VNNI: {'yes' if m['vnni'] else 'no'}; FP32 checkpoint accuracy "
              f"{pct(res.baseline_accuracy)}, budget {res.max_drop} points; latency at {res.timing_size} px, batch 1")
        print(res.table())
        for c in res.candidates:
            if c.fp32_layers:
                print(f"{c.name}: layers kept in FP32: {', '.join(c.fp32_layers)}")
            if c.kept_float and c.engine == "onnxruntime":  # the QDQ IR on OpenVINO inherits the same layers
                print(f"{c.name}: the INT8 repair kept in float: {', '.join(c.kept_float)}")
        for c in res.candidates:
            if c.precision != "fp32" and not c.pruned and c.deployable and c.check and c.check.get("finite") and c.disagreements:
                print(f"{c.name}: differs from FP32 on {c.check['images'] - round(c.agreement * c.check['images'])} of "
                      f"{c.check['images']} val images (logit error per image: median {c.check['median_input_diff']:.3g}, "
                      f"max {c.check['max_abs_diff']:.3g}), e.g. {', '.join(c.disagreements[:3])}")
        if res.winner:
            tput = f", {res.winner.throughput_img_s:.1f} img/s in throughput mode" if res.winner.throughput_img_s else ""
            print(f"winner: {res.winner.name}, {res.winner.speedup:.2f}x eager FP32{tput} -> {res.winner_path} "
                  f"(resnet-xray classify --model {res.winner_path} IMAGES)")
        print(f"wrote {res.out / 'optimize.json'}" + (f" and {res.chart}" if res.chart else ""))
    if res.winner is None:
        print(f"resnet-xray: error: no candidate within {res.max_drop} points of the FP32 checkpoint; see {res.out / 'optimize.json'}",
              file=sys.stderr)
        return 1
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .. import api

    opts = layers_flags().build(args, progress=not args.json)  # refuse bad flags before any model is loaded
    res = api.layers(_layers_model(args, args.model), opts, against=_layers_model(args, args.against) if args.against else None,
                     output=args.output)
    report_skipped(res.skipped)
    if args.json:
        print_json(res.to_dict())
        return 0
    m = res.machine
    print(f"{res.model}" + (f" against {res.reference}" if res.reference else "") + f"; CPU: {m['cpu']}, {m['threads']} thread(s)")
    print(res.table())
    for key, c in res.sum_check.items():
        verdict = "adds up" if c["passed"] else f"does NOT add up (beyond +-{c['tolerance']:.0%})"
        print(f"{key}: end to end {c['end_to_end_ms']:.2f} ms, layers sum to {c['layer_sum_ms']:.2f} ms "
              f"({c['ratio']:.0%}): {verdict}")
    if res.error_engine:
        print(f"error: {res.error_engine}, each row's output against the reference's, mean over {res.images} image(s)")
    sens = res.sensitivity
    if sens:
        print(f"sensitivity: top-1 agreement with FP32 on {sens.images} scoring image(s) with one {sens.unit} kept in float "
              f"(all INT8: {pct(sens.int8_agreement)}; calibrated on {sens.calibration_images} other image(s)):")
        for i, u in enumerate(sens.ranking[:5]):
            print(f"  {i + 1}. {u.name}: {pct(u.agreement)} ({100 * u.gain:+.1f} points), mean KL {u.kl:.3g}")
    if res.chart:
        print(f"chart: {res.chart}")
    return 0


def _layers_model(args: argparse.Namespace, path: str | None):
    """A deployed file as its path; a checkpoint path or none (then --arch/--weights) as a loaded PyTorch model."""
    from ..api import load_model

    if path and Path(path).suffix.lower() in (".onnx", ".xml"):
        return path
    return load_model(args.arch, path or args.weights, seed=args.seed)


def layers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a deployed .onnx / .xml (FP32 or INT8), or a checkpoint; none: --arch/--weights (torch engine)")
    p.add_argument("--against", metavar="REF", help="the reference (the FP32 parent, the dense model): errors and speed-ups")
    layers_flags().add(p)
    add_model_args(p, default_weights="random")
    p.add_argument("-o", "--output", metavar="CHART.png", help="draw time and error along the network")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)


def fuse_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, allow_nonfinite=True)  # such a model then fails the check: exit 1, nothing written
    p.add_argument("-o", "--output", required=True, help="fused checkpoint (.pt) to write")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="images/folders to check on, besides the bundled photo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fuse)


def export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, allow_nonfinite=True)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (plus a .onnx.json sidecar)")
    export_flags().add(p)
    p.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO IR (model.xml/.bin) written beside the .onnx")
    p.add_argument("--check", nargs="*", metavar="IMAGES", help="more images/folders to compare on (the bundled photo is always used)")
    p.add_argument("--tensorrt", choices=("fp16", "int8"), help="also build a TensorRT engine (needs tensorrt and a CUDA GPU)")
    p.add_argument("--calib", help="calibration images for --tensorrt int8")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="FP32 .onnx file (from resnet-xray export)")
    p.add_argument("--calib", required=True, help="folder of calibration images (ImageFolder layout also gives accuracy)")
    p.add_argument("-o", "--output", required=True, help="INT8 .onnx to write (plus a .onnx.json with every choice)")
    quantize_flags().add(p)
    p.add_argument("--compare-torch", action="store_true",
                   help="also build PyTorch's FX INT8 (x86) from --weights (default: those the sidecar names)")
    add_model_args(p, default_weights="sidecar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)


def _evaluate_batch_flags() -> Flags:
    from ..batch.options import BatchOptions

    return Flags(BatchOptions, ("workers", "overwrite"))


def evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="ImageFolder (class folders, or a dataset with val/)")
    p.add_argument("--model", action="append", required=True, metavar="PATH", help="a deployed model; repeat to compare")
    evaluate_flags().add(p)
    p.add_argument("--json", action="store_true")
    big = p.add_argument_group("large validation sets (with --out, one --model)")
    big.add_argument("--out", metavar="FILE", help="classify into FILE (.jsonl or .parquet) through the batch pipeline, "
                     "then score it; running again resumes")
    big.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="run as a Ray Data pipeline (no ADDRESS: local)")
    _evaluate_batch_flags().add(big)
    p.set_defaults(func=cmd_evaluate)


def _evaluate_to_file(args: argparse.Namespace) -> int:
    """evaluate --out: one model's accuracy through the resumable batch pipeline (resnet_xray.batch)."""
    from .. import api
    from ..batch.records import check_out

    if len(args.model) != 1:
        raise XrayError("--out: evaluate one --model at a time into a results file")
    if args.limit is not None:
        raise XrayError(f"--limit {args.limit}: not with --out, which scores every image (and resumes)")
    opts = _evaluate_batch_flags().build(args, threads=args.threads, progress=not args.json)
    check_out(args.out)  # before the model loads
    res = api.evaluate_batch(args.model[0], args.data, args.out, opts, ray=args.ray)
    if args.json:
        print_json(res.to_dict())
        return 0
    acc = "no image lies in a class folder" if res.top1 is None else f"top-1 {pct(res.top1)}, top-5 {pct(res.top5)}"
    print(f"{args.model[0]} on {res.data}: {acc} over {res.scored} image(s) ({res.unlabelled} outside any class folder, "
          f"{res.errors} unreadable); records in {res.job.out} ({res.job.written} added this run, {res.job.already} already there)")
    return 0


def optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the trained model (a finetune best.pt)")
    optimize_flags().add(p)
    optimize_flags(("resume", "overwrite")).add(p.add_mutually_exclusive_group())
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_optimize)


def bench_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, default_weights="random")
    p.add_argument("--model", action="append", metavar="PATH",
                   help="time deployed models (.onnx / .xml) instead, round-robin; repeat the flag to compare several")
    bench_flags().add(p)
    p.add_argument("-o", "--output", help="bar chart PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
