"""Hostile input: flag values and files that once ate memory, hung, or gave a traceback or a wrong figure.

Every size, count and thread option has an upper bound that follows from this machine (its cores,
its memory, the renderer's picture limit); models and weights files whose declared sizes or outputs
cannot be run are refused in one line before anything large is allocated.
"""

from __future__ import annotations

import pytest

from resnet_xray import options
from resnet_xray.cli import main
from resnet_xray.options import MAX_IMAGE_SIDE, OptionError

# --- options: upper bounds ---


@pytest.mark.parametrize("argv, flag", [
    (["make-dataset", "{tmp}/ds", "--size", "100000", "--quiet"], "--size 100000"),
    (["finetune", "{tmp}", "--out", "{tmp}/ft", "--arch", "resnet18", "--image-size", "100000"], "--image-size 100000"),
    (["gradflow", "--arch", "resnet18", "--input-size", "10000", "--batch-size", "2"], "--input-size 10000"),
    (["evaluate", "{tmp}", "--model", "m.onnx", "--threads", "100000"], "--threads 100000"),
    (["show", "stages", "{cat}", "--arch", "resnet18", "--weights", "random", "--channels", "100000", "-o", "{tmp}/s.png"],
     "--channels 100000"),
    (["bench", "--model", "m.onnx", "--threads", "100000"], "--threads 100000"),
    (["bench", "--arch", "resnet18", "--threads", "100000"], "--threads 100000"),
    (["optimize", "{tmp}/c.pt", "--data", "{tmp}", "-o", "{tmp}/opt", "--timing-size", "100000"], "--timing-size 100000"),
    (["optimize", "{tmp}/c.pt", "--data", "{tmp}", "-o", "{tmp}/opt", "--workers", "100000"], "--workers 100000"),
    (["prune", "--arch", "resnet18", "--input-size", "100000", "--out", "{tmp}/p"], "--input-size 100000"),
    (["prune", "--arch", "resnet18", "--threads", "100000", "--out", "{tmp}/p"], "--threads 100000"),
    (["bench-data", "{tmp}", "--arch", "resnet18", "--image-size", "100000"], "--image-size 100000"),
    (["anatomy", "--arch", "resnet18", "--input-size", "100000"], "--input-size 100000"),
    (["classify", "{cat}", "--arch", "resnet18", "--weights", "random", "--batch-size", "1000000000"], "--batch-size 1000000000"),
    (["bench", "--arch", "resnet18", "--batch", "1,100000"], "--batch 100000"),
], ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else None)
def test_size_count_and_thread_flags_have_an_upper_bound(argv, flag, tmp_path, cat_path, capsys):
    """Each of these passed 6 GB, hung, or died in libgomp; now one line naming the flag and its range, exit 2."""
    rc = main([a.format(tmp=tmp_path, cat=cat_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"error: {flag}: must lie in [" in err, err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ft").exists() and not (tmp_path / "s.png").exists()


def test_the_bounds_themselves_are_allowed():
    from resnet_xray.datasets import ReferenceOptions
    from resnet_xray.deploy.runtime import EvaluateOptions
    from resnet_xray.tracing.gradflow import GradFlowOptions
    from resnet_xray.viz.stages import StagesOptions

    ReferenceOptions(size=MAX_IMAGE_SIDE)
    EvaluateOptions(threads=options.max_threads())
    GradFlowOptions(input_size=MAX_IMAGE_SIDE, batch_size=2)
    StagesOptions(channels=64)
    with pytest.raises(OptionError, match=r"threads \d+: must lie in \[1, \d+\]"):
        EvaluateOptions(threads=options.max_threads() + 1)


def test_thread_bound_follows_the_cores(monkeypatch):
    monkeypatch.setattr(options.os, "cpu_count", lambda: 2)
    options.thread_count("threads", 8)
    with pytest.raises(OptionError, match=r"threads 9: must lie in \[1, 8\]"):
        options.thread_count("threads", 9)
    monkeypatch.setattr(options.os, "cpu_count", lambda: 64)
    options.thread_count("threads", 256)


def test_batch_bound_follows_memory_and_image_side(monkeypatch):
    from resnet_xray.tracing.gradflow import GradFlowOptions

    monkeypatch.setattr(options, "memory_bytes", lambda: 4 << 30)
    # training keeps every layer's output: 600 bytes per pixel, 30 MB per 224 px image
    most = (4 << 30) // (224 * 224 * options.TRAIN_BYTES_PER_PIXEL)
    GradFlowOptions(input_size=224, batch_size=most)
    with pytest.raises(OptionError, match=rf"batch_size {most + 1}: must lie in \[1, {most}\] \(at 224 px .* 4.29 GB of memory\)"):
        GradFlowOptions(input_size=224, batch_size=most + 1)
    GradFlowOptions(input_size=64, batch_size=most + 1)  # smaller images: more of them fit


# --- weights files: a zip member's declared size is checked before torch.load allocates it ---


def _zip_bomb(path, claim: int) -> None:
    """A torch.save archive whose one storage member inflates from ~claim/1000 bytes to ``claim`` zero bytes."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                out.writestr(info, src.read(info))
                continue
            member = zipfile.ZipInfo(info.filename)
            member.compress_type = zipfile.ZIP_DEFLATED
            with out.open(member, "w", force_zip64=True) as f:
                for _ in range(claim >> 20):
                    f.write(bytes(1 << 20))


def test_zip_member_claiming_more_than_it_holds_is_refused_unread(tmp_path, monkeypatch, cat_path, capsys):
    """A 1 MB .pth whose member claimed 1 GiB made torch.load allocate the 1 GiB (4 GiB: 6.7 GB of RSS)."""
    import torch

    bomb = tmp_path / "bomb.pth"
    _zip_bomb(bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20

    def never(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", never)
    rc = main(["classify", str(cat_path), "--weights", str(bomb)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"--weights {bomb}: member 'archive/data/0' claims 67,108,864 bytes" in err and "refused unread" in err


def test_zip_members_must_fit_in_memory_and_real_checkpoints_pass(tmp_path, monkeypatch):
    import torch

    from resnet_xray import checkpoint
    from resnet_xray.errors import XrayError

    good = tmp_path / "good.pt"
    torch.save({"fc.weight": torch.randn(1000, 16)}, good)
    checkpoint.check_zip_sizes(good, "--weights")  # torch.save stores members as they are
    assert checkpoint.safe_load(good, "--weights")["fc.weight"].shape == (1000, 16)
    monkeypatch.setattr(options, "memory_bytes", lambda: 32 << 10)
    with pytest.raises(XrayError, match=r"members claim \d+\.\d+ kB, more than this machine.s 32\.77 kB of memory"):
        checkpoint.check_zip_sizes(good, "--weights")


# --- deployed models that declare what cannot run, or give what is no class score ---


def _onnx(path, in_shape, *, out="2d", classes=3, nan=False):
    """A tiny classifier: GlobalAveragePool -> Flatten -> Gemm; ``out`` 1d/4d gives a misshapen output instead.

    Nothing is allocated at the declared input size unless the model is run.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper

    nodes, inits, batch = [h.make_node("GlobalAveragePool", ["x"], ["p"])], [], in_shape[0]
    if out == "4d":
        nodes.append(h.make_node("Identity", ["p"], ["y"]))
        out_shape = [batch, 3, 1, 1]
    else:
        w = np.ones((classes, 3), np.float32)
        if nan:
            w[0, 0] = np.nan
        inits.append(numpy_helper.from_array(w, "w"))
        nodes += [h.make_node("Flatten", ["p"], ["f"]), h.make_node("Gemm", ["f", "w"], ["g"], transB=1)]
        if out == "1d":
            inits.append(numpy_helper.from_array(np.array([-1], np.int64), "s"))
            nodes.append(h.make_node("Reshape", ["g", "s"], ["y"]))
            out_shape = [-1]
        else:
            nodes.append(h.make_node("Identity", ["g"], ["y"]))
            out_shape = [batch, classes]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("labelled")
    for i, c in enumerate(("a", "b", "c")):
        (root / c).mkdir()
        for j in range(2):
            Image.new("RGB", (40, 40), (80 * i, 40 * j, 99)).save(root / c / f"{j}.png")
    return root


def _run(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def _run_out(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err.strip()


COMMANDS = {"classify": lambda m, d, cat: ["classify", cat, d, "--model", m],
            "evaluate": lambda m, d, cat: ["evaluate", d, "--model", m],
            "bench": lambda m, d, cat: ["bench", "--model", m, "--repeats", "1"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_declared_huge_input_is_refused_before_anything_that_size(command, tmp_path, labelled, cat_path, capsys):
    """An ONNX declaring 1x3x20000x20000 sent bench past 6 GB; classify and evaluate gave a DecompressionBombError."""
    m = _onnx(tmp_path / "huge.onnx", [1, 3, 20000, 20000])
    rc, err = _run(COMMANDS[command](m, labelled, cat_path), capsys)
    assert rc == 2 and "\n" not in err, err
    assert err.endswith(f"--model {m}: declares a 20000x20000 px input; at most {MAX_IMAGE_SIDE} px is supported "
                        "(one image would hold 30.4 GB of activations)")


def test_quantize_names_the_declared_size_not_the_images(tmp_path, labelled, capsys):
    """quantize said "none of the 29 calibration images could be read" of a 20000 px model."""
    m = _onnx(tmp_path / "huge.onnx", [1, 3, 20000, 20000])
    rc, err = _run(["quantize", m, "--calib", labelled, "-o", tmp_path / "q.onnx"], capsys)
    assert rc == 2 and "\n" not in err and "declares a 20000x20000 px input" in err, err
    assert not (tmp_path / "q.onnx").exists()


def test_openvino_ir_declaring_a_huge_input_is_refused(tmp_path):
    ov = pytest.importorskip("openvino")
    from resnet_xray.deploy.runtime import load_deployed
    from resnet_xray.errors import XrayError

    ov.save_model(ov.convert_model(str(_onnx(tmp_path / "huge.onnx", [1, 3, 20000, 20000]))), str(tmp_path / "huge.xml"))
    with pytest.raises(XrayError, match="huge.xml: declares a 20000x20000 px input"):
        load_deployed(tmp_path / "huge.xml")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind, rc_want, message", [
    ("batch0", 2, "declares a batch of 0 images; export it with a batch of 1 or --dynamic-batch"),
    ("out1d", 1, "gives an output of shape [3] for 1 image(s); a classifier gives [images, classes]"),
    ("out4d", 1, "gives an output of shape [1, 3, 1, 1] for 1 image(s); a classifier gives [images, classes]"),
    ("empty", 1, "gives no class scores (an output of 0 values per image)"),
])
def test_misshapen_models_give_one_line(command, kind, rc_want, message, tmp_path, labelled, cat_path, capsys):
    """InvalidArgument, IndexError (deploy/runtime.py) and TypeError (classify.py) tracebacks before."""
    shape = {"batch0": [0, 3, 32, 32]}.get(kind, [1, 3, 32, 32])
    m = _onnx(tmp_path / f"{kind}.onnx", shape, out={"out1d": "1d", "out4d": "4d"}.get(kind, "2d"), classes=0 if kind == "empty" else 3)
    rc, err = _run(COMMANDS[command](m, labelled, cat_path), capsys)
    assert rc == rc_want and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("resnet-xray: error: ") and err.endswith(message) and str(m) in err, err


def test_a_fixed_batch_of_four_is_honoured(tmp_path, labelled, cat_path, capsys):
    """A model exported for batch 4 met batches of 1 (and a last partial one): ONNX Runtime's InvalidArgument."""
    m = _onnx(tmp_path / "b4.onnx", [4, 3, 32, 32])
    rc, out, err = _run_out(["evaluate", labelled, "--model", m, "--model", _onnx(tmp_path / "dyn.onnx", ["N", 3, 32, 32])], capsys)
    assert rc == 0, err
    assert "6 image(s)" in out and "top-1 agreement 100.0%" in out
    rc, err = _run(["classify", cat_path, "--model", m], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_nonfinite_outputs_fail_with_exit_1(command, tmp_path, labelled, cat_path, capsys):
    """classify printed "nan%" and evaluate "accuracy 33.3%" (argmax over NaN), both exit 0."""
    m = _onnx(tmp_path / "nan.onnx", ["N", 3, 32, 32], nan=True)
    rc, out, err = _run_out(COMMANDS[command](m, labelled, cat_path), capsys)
    assert rc == 1 and "\n" not in err, err
    assert "its outputs hold NaN or Inf for" in err and "no prediction can be read from them" in err
    assert "nan%" not in out and "accuracy" not in out


def test_nonfinite_outputs_of_a_pytorch_model_fail_classify(cat_path):
    import torch

    from resnet_xray import api
    from resnet_xray.classification import OutputError
    from resnet_xray.image import Preprocessing
    from resnet_xray.model import ModelMeta, build_model

    model = build_model("resnet18", num_classes=3).eval()
    with torch.no_grad():
        model.fc.bias[1] = float("inf")
    meta = ModelMeta("resnet18", "inf-bias", ["a", "b", "c"], Preprocessing(resize=36, crop=32), True)
    with pytest.raises(OutputError, match=r"inf-bias: its outputs hold NaN or Inf for 1 of 1 image\(s\)") as e:
        api.classify((model, meta), [cat_path])
    assert e.value.exit_code == 1


def test_a_model_file_without_description_has_unknown_not_random_weights(tmp_path, cat_path, capsys):
    """An ONNX with no description was told "using RANDOM weights ... Pass --weights imagenet"."""
    import json

    m = _onnx(tmp_path / "bare.onnx", ["N", 3, 32, 32])
    rc, err = _run(["classify", cat_path, "--model", m], capsys)
    assert rc == 0 and "WARNING: unknown weights" in err and "RANDOM" not in err and "--weights imagenet" not in err, err
    assert main(["classify", str(cat_path), "--model", str(m), "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)["weights"]
    assert weights["warning"].startswith("WARNING: unknown weights")


def test_bench_model_refuses_a_batch_it_would_not_time(tmp_path, capsys):
    """bench --model ... --batch 100000 timed batch 1 without a word."""
    m = _onnx(tmp_path / "m.onnx", ["N", 3, 32, 32])
    rc, err = _run(["bench", "--model", m, "--batch", "100000"], capsys)
    assert rc == 2 and err.endswith("--batch 100000: bench --model times batch 1 only; drop --batch, "
                                    "or bench the checkpoint (--weights) at other batch sizes"), err


def test_int8_weights_are_refused_not_cast_to_float(tmp_path, cat_path, capsys):
    """An int8 safetensors file loaded as float weights (codes without scales): confident nonsense."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.resnet18(num_classes=3).state_dict()
    save_file({k: (v.mul(100).round().clamp(-128, 127).to(torch.int8) if v.is_floating_point() else v) for k, v in state.items()},
              str(tmp_path / "q.safetensors"))
    rc, err = _run(["classify", cat_path, "--weights", tmp_path / "q.safetensors"], capsys)
    assert rc == 2 and "\n" not in err, err
    assert "102 tensor(s) hold int8 values where the model takes float32 (first: conv1.weight); refused" in err
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp_path / "h.safetensors"))
    assert _run(["classify", cat_path, "--weights", tmp_path / "h.safetensors"], capsys)[0] == 0  # float16 widens exactly


def test_progressive_sizes_have_the_same_bound():
    from resnet_xray.errors import XrayError
    from resnet_xray.train.recipe import parse_sizes

    assert parse_sizes(f"64,{MAX_IMAGE_SIDE}") == [64, MAX_IMAGE_SIDE]
    with pytest.raises(XrayError, match=r"--progressive '64,100000': sizes must lie in \[16, 4096\] and increase"):
        parse_sizes("64,100000")


@pytest.mark.parametrize("description, pretrained, warning", [
    (None, None, "WARNING: unknown weights"),
    ({"weights": "random (seed 0)"}, False, "WARNING: using RANDOM weights"),
    ({"weights": "random (seed 0)", "pretrained": True}, True, None),  # what export records wins over the name
    ({"weights": "ft/best.pt", "pretrained": False}, False, "WARNING: using RANDOM weights"),
    ({"weights": "ft/best.pt"}, True, None),  # an older sidecar, without "pretrained"
])
def test_deployed_weights_provenance_from_the_description(description, pretrained, warning, tmp_path):
    import json

    from resnet_xray.deploy.runtime import load_deployed
    from resnet_xray.provenance import WeightsInfo

    m = _onnx(tmp_path / "m.onnx", ["N", 3, 32, 32])
    if description is not None:
        (tmp_path / "m.onnx.json").write_text(json.dumps(description))
    meta = load_deployed(m)[1]
    assert meta.pretrained is pretrained
    info = WeightsInfo.of(meta)
    if warning is None:  # trained by what the file says: never the random-weights warning
        assert not (info.warning or "").startswith("WARNING: using RANDOM weights"), info
    else:
        assert info.warning.startswith(warning), info


def test_bench_refuses_a_fixed_batch_it_would_time_as_one_image(tmp_path, capsys):
    """Padded to its batch of 4, one image's latency would be four images' (ONNX Runtime's InvalidArgument before)."""
    m = _onnx(tmp_path / "b4.onnx", [4, 3, 32, 32])
    rc, err = _run(["bench", "--model", m, "--repeats", "1"], capsys)
    assert rc == 2 and err.endswith(f"--model {m}: has a fixed batch of 4; bench --model times batch 1 "
                                    "(export it with a batch of 1 or --dynamic-batch)"), err
