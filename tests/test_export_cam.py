"""``export --cam-output``: a second output with each class's map from layer4, and the explorer drawing it.

resnet18 with seeded random weights at 64 px (a 2x2 layer4 map): every export here takes seconds.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import resnet_xray as rx
from resnet_xray.cli import main
from resnet_xray.deploy.export import export_model
from resnet_xray.deploy.onnx import CAM_NAME, ExportOptions, export_onnx, ort_session, sidecar_path
from resnet_xray.deploy.runtime import cam_runner
from resnet_xray.errors import XrayError
from resnet_xray.explorer.views import EXPORTED_CAM
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta

pytest.importorskip("onnxruntime")
fastapi_testclient = pytest.importorskip("fastapi.testclient")
PRE = Preprocessing(resize=72, crop=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run 20x slower."""
    from resnet_xray.deploy.bench import torch_threads

    with torch_threads(1):
        yield


def small() -> rx.LoadedModel:
    m = rx.load_model("resnet18", weights="random", seed=0)
    return rx.LoadedModel(m.module, dataclasses.replace(m.meta, preprocessing=PRE))


def own_cam(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The PyTorch model's CAM: fc's weights over its layer4 activations, read with a hook."""
    seen = {}
    hook = model.layer4.register_forward_hook(lambda mod, inp, out: seen.update(a=out))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        hook.remove()
    return torch.einsum("ck,nkhw->nchw", model.fc.weight.detach(), seen["a"]).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """FP32 .onnx + .xml with the cam output, an ORT INT8 file quantized from it, and a plain export."""
    d = tmp_path_factory.mktemp("cam")
    m = small()
    res = rx.export(m, d / "m.onnx", cam_output=True, exporter="torchscript")
    assert res.passed and res.check["cam_max_abs_diff"] < 1e-4
    rx.export(m, d / "plain.onnx", exporter="torchscript", openvino=False)
    rng = np.random.default_rng(0)
    (d / "calib").mkdir()
    for i in range(10):
        img = rng.normal(128, 60, (48, 48, 3)) + np.linspace(0, 80, 48)[:, None, None]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / "calib" / f"{i}.png")
    q = rx.quantize(d / "m.onnx", d / "calib", d / "m.int8.onnx", min_agreement=0.0, time_check=False, progress=False)
    assert q.passed and q.int8_model is not None
    return m, d


def test_fp32_cam_output_equals_the_models_own_cam(exported):
    m, d = exported
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = own_cam(m.module, x)
    sess = ort_session(d / "m.onnx")
    assert [o.name for o in sess.get_outputs()] == ["logits", CAM_NAME]  # the logits stay first
    for f in ("m.onnx", "m.xml"):
        got = cam_runner(d / f)(x.numpy())
        assert got.shape == (3, 1000, 2, 2)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    logits = sess.run(None, {"input": x[:1].numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(logits, m.module(x[:1]).numpy(), rtol=1e-4, atol=1e-4)
    for side in (sidecar_path(d / "m.onnx"), sidecar_path(d / "m.xml")):
        desc = json.loads(side.read_text())
        assert desc["cam_output"]["name"] == CAM_NAME and desc["cam_output"]["shape"] == [1, 1000, 2, 2]
        assert desc["export_options"]["cam_output"] is True
    assert cam_runner(d / "plain.onnx") is None


def test_dynamo_export_keeps_a_free_batch_on_both_outputs(tmp_path):
    m = small()
    path = export_onnx(m.module, tmp_path / "m.onnx", ExportOptions(dynamic_batch=True, cam_output=True), m.meta)
    sess = ort_session(path)
    assert [o.shape for o in sess.get_outputs()] == [["batch", 1000], ["batch", 1000, 2, 2]]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(sess.run(["cam"], {"input": x.numpy()})[0], own_cam(m.module, x), rtol=1e-4, atol=1e-4)


def test_int8_cam_exists_and_follows_fp32(exported):
    _, d = exported
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    fp32, int8 = cam_runner(d / "m.onnx")(x), cam_runner(d / "m.int8.onnx")(x)
    assert int8.shape == fp32.shape == (1, 1000, 2, 2)
    assert cosine(fp32, int8) > 0.9
    assert json.loads(sidecar_path(d / "m.int8.onnx").read_text())["cam_output"]["name"] == CAM_NAME


def test_explorer_draws_each_artefacts_own_cam_beside_gradcam(exported):
    m, d = exported
    ex = rx.explore(m, artefacts=[d / "m.onnx", d / "m.int8.onnx", d / "plain.onnx"])
    ws = ex.workspace
    with fastapi_testclient.TestClient(ex.app, base_url="http://127.0.0.1") as c:
        drift = c.get("/api/p/cat/drift", params={"layer": "layer4"}).json()
        main_cam, fp32, int8, plain = drift["cams"]
        assert main_cam["caption"].startswith("Grad-CAM on layer4")
        for doc in (fp32, int8):
            assert doc["caption"].startswith(EXPORTED_CAM) and doc["class_index"] == drift["class_index"]
            r = c.get(doc["url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert "url" not in plain and "--cam-output" in plain["note"]
        assert c.get("/api/m/3/p/cat/cam", params={"cls": 1}).status_code == 404
        # another stage for the PyTorch model; the file's map stays its layer4 one
        assert c.get("/api/p/cat/drift", params={"layer": "layer2"}).json()["cams"][1]["layer"] == "layer4"
    cat, cls = ws.photo("cat"), drift["class_index"]
    # on layer4 Grad-CAM's weights are fc's divided by h*w: drawn the same way, the FP32 file's map is Grad-CAM's
    grad = ws.cam(ws.slots[0], cat, cls, "layer4").maps["gradcam"]
    np.testing.assert_allclose(ws.cam(ws.slots[1], cat, cls, "layer4").maps["cam"], grad, atol=1e-4)
    assert cosine(ws.cam(ws.slots[2], cat, cls, "layer4").maps["cam"], grad) > 0.9


def test_a_head_that_is_not_pooling_then_fc_is_refused(tmp_path):
    m = small()
    m.module.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 1000))
    with pytest.raises(XrayError, match="^--cam-output: .*not fc over layer4"):
        export_onnx(m.module, tmp_path / "m.onnx", ExportOptions(exporter="torchscript", cam_output=True), m.meta)
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(XrayError, match="^--cam-output: not with --tensorrt"):
        export_model(small(), tmp_path / "t.onnx", ExportOptions(cam_output=True), [], tensorrt="fp16")


def test_cli_flag_writes_the_cam_output(tmp_path, capsys):
    from resnet_xray.model import build_model, save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ft.pt", build_model("resnet18", num_classes=7).eval(),
                         ModelMeta("resnet18", "t", [f"k{i}" for i in range(7)], PRE, True))
    out = tmp_path / "ft.onnx"
    assert main(["export", "--weights", str(ck), "--exporter", "torchscript", "--no-openvino", "--cam-output", "--json",
                 "-o", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["check"]["cam_max_abs_diff"] < 1e-4
    assert [o.shape for o in ort_session(out).get_outputs()] == [[1, 7], [1, 7, 2, 2]]
