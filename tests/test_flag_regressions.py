"""Flag values the property-based suite found crashing, kept as plain regression tests."""

from __future__ import annotations

import math

import pytest

from resnet_xray.errors import XrayError
from resnet_xray.train.recipe import FinetuneOptions


def test_finetune_batch_size_one_is_refused_unless_batchnorm_is_frozen():
    with pytest.raises(XrayError, match="batch_size 1: BatchNorm"):
        FinetuneOptions(arch="resnet18", batch_size=1).validate()
    FinetuneOptions(arch="resnet18", batch_size=1, freeze="backbone").validate()


@pytest.mark.parametrize("kw, flag", [({"steps": 0}, "steps 0"), ({"batch_size": 1}, "batch.size 1")])
def test_bench_data_refuses_values_that_crashed(tmp_path, kw, flag):
    from resnet_xray.train.bench import DataBenchOptions, bench_data

    with pytest.raises(XrayError, match=flag):
        bench_data(tmp_path, DataBenchOptions(arch="resnet18", **kw))


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
@pytest.mark.parametrize("argv", [["classify", "{cat}", "--arch", "resnet18", "--weights", "random"],
                                  ["make-dataset", "{tmp}/ds", "--classes", "2", "--per-class", "1", "--size", "32"],
                                  ["bench-data", "{tmp}", "--arch", "resnet18"],
                                  ["finetune", "{tmp}", "--out", "{tmp}/ft", "--arch", "resnet18", "--weights", "random"],
                                  ["optimize", "{tmp}/c.pt", "--data", "{tmp}", "-o", "{tmp}/opt"]],
                         ids=lambda a: a[0] if isinstance(a, list) else None)
def test_seed_out_of_range_is_one_line(argv, seed, tmp_path, cat_path, capsys):
    """--seed 2**64 crashed torch.manual_seed, and -1 NumPy's default_rng (found by the flag properties)."""
    from resnet_xray.cli import main

    argv = [a.format(cat=cat_path, tmp=tmp_path) for a in argv]
    assert main([*argv, f"--seed={seed}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--seed {seed}: must lie in [0, 4294967295]") and "\n" not in err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("threads", [0, -1, -(2**63) - 1])
def test_deployed_model_threads_below_one_is_refused(threads):
    """ONNX Runtime took --threads 0 as its default and crashed with a TypeError on < -2**31 (bench --model, evaluate)."""
    from resnet_xray.deploy.runtime import load_deployed
    from resnet_xray.options import OptionError

    with pytest.raises(OptionError, match=rf"threads {threads}: must lie in \[1, "):
        load_deployed("missing.onnx", threads)


@pytest.mark.parametrize("argv", [["classify", "x.png", "--topk=--"], ["anatomy", "--input-size=--"], ["trace", "x.png", "--seed=--"],
                                  ["show", "kernels", "--count=--"], ["evaluate", "d", "--model", "m.onnx", "--limit=--"]])
def test_flag_equals_double_dash_is_refused_naming_the_flag(argv, capsys):
    """`--topk=--` reached the commands as [] (CPython 3.11 argparse) and crashed with a TypeError (flag properties)."""
    from resnet_xray.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    flag = argv[-1].split("=")[0]
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: argument {flag}: expected one value")


@pytest.mark.parametrize("lr", [1e300, 3.5e38, math.inf, math.nan, 0.0, -1.0])
def test_learning_rates_beyond_any_use_are_refused(lr):
    """--lr 1e300 passed the checks and crashed SGD ("cannot be converted to type float without overflow") in
    gradflow, finetune and prune (found by the flag properties)."""
    from resnet_xray.options import OptionError
    from resnet_xray.pruning.loop import PruneOptions
    from resnet_xray.tracing.gradflow import GradFlowOptions

    for make in (lambda: GradFlowOptions(lr=lr), lambda: FinetuneOptions(arch="resnet18", lr=lr), lambda: PruneOptions(lr=lr)):
        with pytest.raises(OptionError, match=r"lr .*: must lie in \(0, 100\]"):
            make()
    GradFlowOptions(lr=100.0), FinetuneOptions(arch="resnet18", lr=100.0), PruneOptions(lr=100.0)  # the bound itself is allowed


def test_gradflow_after_steps_that_kill_every_gradient(capsys, one_thread):
    """gradflow --steps 2 --lr 1 zeroes the gradients (dead ReLUs): 0/0 RMS ratios were a ZeroDivisionError."""
    from resnet_xray.cli import main

    assert main(["gradflow", "--arch", "resnet18", "--weights", "random", "--batch-size", "2", "--input-size", "32",
                 "--steps", "2", "--lr", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    # Whether every gradient dies depends on the CPU's rounding; the ratios it met do not.
    from resnet_xray.tracing.gradflow import rms_ratio
    from resnet_xray.units import times

    assert math.isnan(rms_ratio(0.0, 0.0)) and rms_ratio(1.0, 0.0) == math.inf and rms_ratio(0.0, 2.0) == 0.0
    assert times(rms_ratio(0.0, 0.0)) == "nanx" and times(0.0) == "0x" and times(math.inf) == "infx"


def test_too_few_evaluation_images_name_the_flag_not_the_folder(tmp_path):
    """optimize --eval-images 1 was told "--data ...: only one class folder" of a two-class folder (flag properties)."""
    from PIL import Image

    from resnet_xray.deploy.runtime import labelled_batches
    from resnet_xray.image import Preprocessing

    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        Image.new("RGB", (40, 40), (9, 99, 199)).save(tmp_path / "val" / c / "x.png")
    pre = Preprocessing(resize=40, crop=32)
    _, labels, how, _, _ = labelled_batches(tmp_path, pre, ["a", "b"], limit=1, limit_flag="--eval-images")
    assert labels is None and how == "only one class folder among the 1 image(s) that --eval-images 1 keeps"
    _, labels, _, _, _ = labelled_batches(tmp_path, pre, ["a", "b"], limit=2)
    assert labels.tolist() == [0, 1]
