"""Options dataclasses are the one place values are checked: refused, never clamped, named by flag."""

from __future__ import annotations

import pytest

from resnet_xray.cli import main
from resnet_xray.options import OptionError


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["classify", "{cat}", "--arch", "resnet18", "--weights", "random", "--batch-size", "0"], "--batch-size 0"),
        (["classify", "{cat}", "--arch", "resnet18", "--weights", "random", "--topk", "-3"], "--topk -3"),
        (["bench", "--arch", "resnet18", "--repeats", "-5"], "--repeats -5"),
        (["bench", "--arch", "resnet18", "--batch", "1,0"], "--batch 0"),
        (["finetune", "{tmp}", "--out", "{tmp}/o", "--weights", "random", "--warmup-epochs", "-1"], "--warmup-epochs -1.0"),
        (["quantize", "{tmp}/m.onnx", "--calib", "{tmp}", "-o", "{tmp}/q.onnx", "--max-images", "0"], "--max-images 0"),
        (["prune", "--arch", "resnet18", "--weights", "random", "--input-size", "7", "--out", "{tmp}/p"], "--input-size 7"),
        (["anatomy", "--arch", "resnet18", "--input-size", "8"], "--input-size 8"),
        (["gradflow", "--arch", "resnet18", "--batch-size", "1"], "--batch-size 1"),
        (["bench-data", "{tmp}", "--steps", "0"], "--steps 0"),
    ],
)
def test_out_of_range_flags_are_refused_by_name(argv, flag, cat_path, tmp_path, capsys):
    argv = [a.format(cat=cat_path, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: {flag}:" in err[0], err
    assert not list(tmp_path.rglob("*.pt")) and not (tmp_path / "q.onnx").exists()


def test_api_errors_name_the_option_not_a_flag(cat_path):
    import resnet_xray as rx

    model = rx.load_model("resnet18", weights="random")
    with pytest.raises(OptionError) as e:
        rx.classify(model, [cat_path], topk=0)
    assert str(e.value).startswith("topk 0:") and e.value.option == "topk"


def test_options_dataclasses_validate_on_construction():
    from resnet_xray.deploy.bench import BenchOptions
    from resnet_xray.deploy.quantize import QuantizeOptions
    from resnet_xray.pruning.loop import PruneOptions
    from resnet_xray.train.recipe import FinetuneOptions

    for make, field in [
        (lambda: BenchOptions(repeats=-5), "repeats"),
        (lambda: QuantizeOptions(max_calib_images=0), "max_calib_images"),
        (lambda: PruneOptions(input_size=7), "input_size"),
        (lambda: FinetuneOptions(warmup_epochs=-1), "warmup_epochs"),
    ]:
        with pytest.raises(OptionError) as e:
            make()
        assert e.value.option == field


def test_generated_flags_carry_the_dataclass_fields():
    from resnet_xray.classification import ClassifyOptions
    from resnet_xray.cli import build_parser
    from resnet_xray.train.bench import DataBenchOptions

    args = build_parser("classify").parse_args(["classify", "x.png"])
    assert (args.topk, args.batch_size) == (ClassifyOptions().topk, ClassifyOptions().batch_size)
    args = build_parser("bench-data").parse_args(["bench-data", "d", "--amp", "--steps", "3"])
    from resnet_xray.train.commands import BENCH_DATA_FLAGS

    opts = DataBenchOptions(**{n: getattr(args, n) for n in BENCH_DATA_FLAGS})
    assert opts == DataBenchOptions(amp=True, steps=3)


def test_flags_of_every_converted_command_build_their_options_with_the_dataclass_defaults(tmp_path):
    """No flag carries a default of its own: parsing nothing gives the dataclass's defaults."""
    from resnet_xray.cli import build_parser
    from resnet_xray.deploy import commands as deploy
    from resnet_xray.deploy.bench import BenchOptions
    from resnet_xray.deploy.quantize import QuantizeOptions
    from resnet_xray.pruning import commands as prune
    from resnet_xray.pruning.loop import PruneOptions
    from resnet_xray.reporting import commands as report
    from resnet_xray.reporting.assemble import ReportOptions
    from resnet_xray.train import commands as train
    from resnet_xray.train.recipe import FinetuneOptions

    def parse(*argv):
        return build_parser(argv[0]).parse_args(list(argv))

    assert deploy.bench_flags().build(parse("bench")) == BenchOptions()
    assert deploy.quantize_flags().build(parse("quantize", "m.onnx", "--calib", "c", "-o", "q.onnx")) == QuantizeOptions()
    assert prune.prune_flags().build(parse("prune")) == PruneOptions()
    assert report._flags().build(parse("report", "x.png")) == ReportOptions()
    args = parse("finetune", "d", "--out", "o")
    assert train.finetune_flags(False).build(args, arch="resnet50", weights="imagenet") == FinetuneOptions()


def test_generated_flags_spell_and_convert_values():
    from resnet_xray.cli import build_parser
    from resnet_xray.deploy import commands as deploy
    from resnet_xray.tracing import commands as trace

    args = build_parser("quantize").parse_args(["quantize", "m.onnx", "--calib", "c", "-o", "q.onnx", "--reduce-range", "on",
                                                 "--max-images", "7", "--no-time-check", "--eval", "held"])
    q = deploy.quantize_flags().build(args)
    assert (q.reduce_range, q.max_calib_images, q.time_check, q.eval_dir) == (True, 7, False, "held")
    b = deploy.bench_flags().build(build_parser("bench").parse_args(["bench", "--batch", "1,8", "--no-compile"]))
    assert (b.batches, b.compile) == ((1, 8), False)
    g = trace.gradflow_flags().build(build_parser("gradflow").parse_args(["gradflow", "--regime", "running"]))
    assert g.regimes == ("running",)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["bench", "--arch", "resnet18", "--batch", "1,x"], "--batch 1,x"),
        (["optimize", "ck.pt", "--data", "{tmp}", "-o", "{tmp}/o", "--engines", "ort,tflite"], "--engines tflite"),
        (["make-dataset", "{tmp}/d", "--classes", "11"], "--classes 11"),
        (["report", "{cat}", "-o", "{tmp}/r", "--sections", "cost,nope"], "--sections cost,nope"),
        (["show", "cam", "{cat}", "--class", "-1", "-o", "{tmp}/c.png"], "--class -1"),
        (["evaluate", "{tmp}", "--model", "{tmp}/m.onnx", "--limit", "0"], "--limit 0"),
        (["export", "--arch", "resnet18", "--weights", "random", "--opset", "3", "-o", "{tmp}/m.onnx"], "--opset 3"),
    ],
)
def test_generated_flags_refuse_by_the_flag_the_user_typed(argv, flag, cat_path, tmp_path, capsys):
    argv = [a.format(cat=cat_path, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: {flag}:" in err[0], err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
