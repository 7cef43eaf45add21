"""ONNX export: checker, ONNX Runtime vs eager, sidecar, and the bad-input paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from resnet_xray.cli import main
from resnet_xray.deploy.fuse import fuse_model
from resnet_xray.deploy.onnx import ExportOptions, check_onnx, export_onnx, inspect_onnx, ort_session, sidecar_path
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta

PRE = Preprocessing(resize=72, crop=64, source="test 64 px")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run 20x slower."""
    from resnet_xray.deploy.bench import torch_threads

    with torch_threads(1):
        yield


def odd_model(num_classes: int = 3, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    m = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes, width_per_group=24).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.3)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m


def meta_for(n: int) -> ModelMeta:
    return ModelMeta("resnet50", "test", [f"class_{i}" for i in range(n)], PRE, True)


@pytest.fixture(scope="module")
def dynamo_export(tmp_path_factory):
    """The default (dynamo) exporter, dynamic batch, on a fused model with 3 classes."""
    model = fuse_model(odd_model())
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", ExportOptions(dynamic_batch=True), meta_for(3))
    return model, path


def test_dynamo_export_matches_eager_on_batches(dynamo_export) -> None:
    model, path = dynamo_export
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort_session(path)
    x = torch.randn(3, 3, 64, 64)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)
    rep = check_onnx(path, model)  # the bundled photo through the sidecar's preprocessing
    assert rep["passed"] and rep["top1_agreement"] == 1.0 and rep["max_abs_diff"] < 1e-4


def test_sidecar_records_preprocessing_and_classes(dynamo_export) -> None:
    _, path = dynamo_export
    side = json.loads(sidecar_path(path).read_text())
    assert side["num_classes"] == 3 and side["class_names"] == ["class_0", "class_1", "class_2"]
    assert side["preprocessing"]["crop"] == 64 and side["input_shape"] == ["batch", 3, 64, 64]
    info = inspect_onnx(path)
    assert info.preprocessing == PRE and info.fixed_batch is None


def test_check_fails_loudly_for_a_different_model(dynamo_export) -> None:
    _, path = dynamo_export
    rep = check_onnx(path, odd_model(seed=7), torch.randn(4, 3, 64, 64))
    assert not rep["passed"] and rep["max_abs_diff"] > rep["tolerance"]


def test_torchscript_exporter_fixed_batch_unfused(tmp_path) -> None:
    model = odd_model(num_classes=5)
    path = export_onnx(model, tmp_path / "ts.onnx", ExportOptions(exporter="torchscript", opset=17), meta_for(5))
    info = inspect_onnx(path)
    assert info.fixed_batch == 1 and json.loads(sidecar_path(path).read_text())["opset"] == 17
    x = torch.randn(2, 3, 64, 64)
    rep = check_onnx(path, model, x)  # fixed batch 1: run image by image
    assert rep["passed"] and rep["images"] == 2


def _write_model(path: Path, shape: list, elem=TensorProto.FLOAT) -> Path:
    inp = helper.make_tensor_value_info("x", elem, shape)
    out = helper.make_tensor_value_info("y", elem, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [inp], [out])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    ("shape", "elem", "needle"),
    [([1, 10], TensorProto.FLOAT, "NCHW"), ([1, 1, 64, 64], TensorProto.FLOAT, "NCHW"), ([1, 3, 64, 64], TensorProto.UINT8, "FLOAT")],
)
def test_non_image_onnx_inputs_are_refused(tmp_path, shape, elem, needle) -> None:
    path = _write_model(tmp_path / "bad.onnx", shape, elem)
    with pytest.raises(XrayError, match=needle):
        inspect_onnx(path)
    calib = tmp_path / "calib"
    calib.mkdir()
    assert main(["quantize", str(path), "--calib", str(calib), "-o", str(tmp_path / "q.onnx")]) == 2


def test_not_onnx_gives_exit_2(tmp_path, capsys) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is not a protobuf\n")
    assert main(["quantize", str(bogus), "--calib", str(tmp_path), "-o", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an ONNX model" in err[0] and str(bogus) in err[0]


def test_unwritable_output_and_atomic_write(tmp_path, monkeypatch) -> None:
    model = odd_model()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(XrayError, match="cannot"):
        export_onnx(model, blocker / "m.onnx", ExportOptions(exporter="torchscript"), meta_for(3))
    # a failure after the exporter ran leaves neither a half-written model nor temp files,
    # and an earlier good file at that path survives
    target = tmp_path / "out" / "m.onnx"
    target.parent.mkdir()
    target.write_bytes(b"previous good model")

    def broken_checker(*a, **k):
        raise RuntimeError("simulated crash during the check")

    monkeypatch.setattr(onnx.checker, "check_model", broken_checker)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(model, target, ExportOptions(exporter="torchscript"), meta_for(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.onnx"]
    assert target.read_bytes() == b"previous good model"


def test_export_cli_with_tensorrt_but_none_present(tmp_path, capsys) -> None:
    from resnet_xray.deploy.tensorrt import tensorrt_available

    if tensorrt_available()[0]:
        pytest.skip("TensorRT and a GPU are present here")
    assert main(["export", "--weights", "random", "--arch", "resnet18", "--tensorrt", "fp16", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorrt" in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_for_a_fine_tuned_checkpoint(tmp_path, capsys) -> None:
    from resnet_xray.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=7).eval()
    ck = save_checkpoint(tmp_path / "ft.pt", model, ModelMeta("resnet18", "t", [f"k{i}" for i in range(7)], PRE, True))
    out = tmp_path / "ft.onnx"
    assert main(["export", "--weights", str(ck), "--exporter", "torchscript", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement 100.0%" in text and "onnx.checker passed" in text
    sess = ort_session(out)
    assert sess.get_outputs()[0].shape[-1] == 7
    assert np.isfinite(sess.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})[0]).all()
