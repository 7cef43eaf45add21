"""The TensorRT route is gated by the one equivalence check, like ONNX Runtime and INT8.

No GPU or TensorRT here: ``build_engine`` and ``TensorRTRunner`` are replaced by fakes that
write a file and return the eager model's logits (a faithful engine) or different ones (a
broken engine). What is under test is everything around them: the check, the removal of a
failed engine, the one-line error and the exit status.
"""

from __future__ import annotations

import json

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy import tensorrt

R18 = ["--arch", "resnet18", "--weights", "random", "--exporter", "torchscript", "--no-openvino"]


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Install a fake TensorRT whose engine answers with ``state['logits'](x)``."""
    from resnet_xray.model import load_model

    eager, _ = load_model("resnet18", "random", seed=0)
    eager.eval()
    state = {"logits": eager, "eager": eager, "built": []}

    def build_engine(onnx_path, engine_path, options=None):
        engine_path.write_bytes(b"fake engine")
        state["built"].append((engine_path, options.precision))
        return engine_path

    class FakeRunner:
        def __init__(self, engine_path):
            assert open(engine_path, "rb").read() == b"fake engine"

        def __call__(self, x):
            with torch.no_grad():
                return state["logits"](x)

    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: None)
    monkeypatch.setattr(tensorrt, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt, "TensorRTRunner", FakeRunner)
    return state


def test_a_faithful_engine_is_kept_and_its_check_reported(fake_tensorrt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", *R18, "-o", str(out), "--tensorrt", "fp16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    engine = tmp_path / "m.fp16.engine"
    assert fake_tensorrt["built"] == [(engine, "fp16")]
    assert doc["engine"] == str(engine) and engine.exists() and out.exists()
    check = doc["check_tensorrt"]
    assert check["passed"] and check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-3


def test_a_diverging_engine_fails_the_command_and_is_removed(fake_tensorrt, tmp_path, capsys):
    fake_tensorrt["logits"] = lambda x: -fake_tensorrt["eager"](x)  # the top-1 class becomes the least likely one
    out = tmp_path / "m.onnx"
    assert main(["export", *R18, "-o", str(out), "--tensorrt", "fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnet-xray: error: TensorRT output DIVERGES from eager PyTorch"), err
    assert "engine removed" in err[0] and "top-1" in err[0]
    assert not (tmp_path / "m.fp16.engine").exists()  # the artefact that failed is gone
    assert out.exists()  # the ONNX file passed its own check and stays


def test_an_engine_whose_check_crashes_is_removed(fake_tensorrt, tmp_path):
    def boom(x):
        raise RuntimeError("CUDA error")

    fake_tensorrt["logits"] = boom
    with pytest.raises(RuntimeError, match="CUDA error"):
        main(["export", *R18, "-o", str(tmp_path / "m.onnx"), "--tensorrt", "fp16"])
    assert not (tmp_path / "m.fp16.engine").exists()
