"""Deployed models are models: classify/evaluate --model on ONNX FP32, ONNX INT8 and OpenVINO INT8;
failed checks leave nothing behind; sidecars and --opset are validated (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_xray.cli import main
from resnet_xray.deploy.onnx import ExportOptions, export_onnx, sidecar_path
from resnet_xray.image import ImageStream, Preprocessing
from resnet_xray.model import ModelMeta, build_model, save_checkpoint

from .test_deploy_quantize import TinyResNet

PRE = Preprocessing(resize=36, crop=32, source="test 32 px")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    from resnet_xray.deploy.bench import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference task (4 classes, 32 px) and a tiny ResNet trained on it for a few seconds, exported to ONNX."""
    root = tmp_path_factory.mktemp("ref")
    assert main(["make-dataset", str(root / "data"), "--classes", "4", "--per-class", "12", "--val-per-class", "6", "--size", "40"]) == 0
    names = sorted(p.name for p in (root / "data" / "train").iterdir())
    t = PRE.transform()
    xs, ys = [], []
    for p, img in ImageStream([root / "data" / "train"]):
        xs.append(t(img))
        ys.append(names.index(p.parent.name))
    x, y = torch.stack(xs), torch.tensor(ys)
    torch.manual_seed(0)
    model = TinyResNet(len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = ModelMeta("resnet18", "trained in test", names, PRE, True)
    fp32 = export_onnx(model, root / "fp32.onnx", ExportOptions(dynamic_batch=True, exporter="torchscript", openvino=True), meta)
    return model, fp32, root / "data", root


def _accuracy_from_classify(payload: dict) -> float:
    hits = [Path(r["image"]).parent.name == r["topk"][0]["label"] for r in payload["results"]]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_classify_and_evaluate_model_for_each_artefact_type(reference, capsys) -> None:
    model, fp32, data, root = reference
    calib = str(data / "train")
    assert main(["quantize", str(fp32), "--calib", calib, "-o", str(root / "int8.onnx"), "--min-agreement", "0", "--no-time-check", "--json"]) == 0
    json.loads(capsys.readouterr().out)  # pure stdout: the calibrator's prints went to stderr
    assert main(["quantize", str(fp32), "--calib", calib, "--engine", "openvino", "-o", str(root / "int8.xml"),
                 "--min-agreement", "0", "--no-time-check", "--json"]) == 0
    json.loads(capsys.readouterr().out)
    models = [fp32, root / "int8.onnx", root / "int8.xml"]
    assert main(["evaluate", str(data), *[a for m in models for a in ("--model", str(m))], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 24 and report["labels"].startswith("folder names")
    assert [m["precision"] for m in report["models"]] == ["fp32", "int8", "int8"]
    for m, row in zip(models, report["models"]):
        assert main(["classify", str(data / "val"), "--model", str(m), "--json", "--topk", "2"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert len(out["results"]) == 24 and out["results"][0]["topk"][0]["label"] in model_names(reference)
        # classify's labels and evaluate's accuracy come from the same model: they must agree exactly
        assert _accuracy_from_classify(out) == pytest.approx(row["accuracy"])
        # a model that answers one class everywhere would make these equalities trivial
        assert len({r["topk"][0]["label"] for r in out["results"]}) > 1
    with torch.inference_mode():  # and the FP32 artefact scores what the eager model scores
        t = PRE.transform()
        pairs = [(t(img), p.parent.name) for p, img in ImageStream([data / "val"])]
        logits = [model(x[None])[0] for x, _ in pairs]
        eager = sum(model_names(reference)[int(z.argmax())] == n for z, (_, n) in zip(logits, pairs)) / len(pairs)
    # ONNX Runtime and torch round differently (by CPU and kernel): only an image whose top two
    # logits lie within that rounding may change its answer, so only those may move the accuracy.
    close = sum(float(v[0] - v[1]) < 1e-3 for v in (z.topk(2).values for z in logits))
    assert abs(report["models"][0]["accuracy"] - eager) * len(pairs) <= close + 1e-9


def model_names(reference) -> list[str]:
    return sorted(p.name for p in (reference[2] / "train").iterdir())


def test_model_files_carry_their_description_without_a_sidecar(reference, tmp_path, capsys) -> None:
    _, fp32, data, _ = reference
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(fp32.read_bytes())  # no sidecar beside it: metadata_props must do
    assert main(["classify", str(data / "val" / model_names(reference)[0]), "--model", str(lone), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["topk"][0]["label"] in model_names(reference)


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s["preprocessing"].update(crop=48, resize=52), "crops to 48 px but the model takes 32x32"),
    (lambda s: s["preprocessing"].pop("mean"), "preprocessing.mean"),
    (lambda s: s.update(class_names=["a", "b"]), "2 class names but the model has 4 outputs"),
])
def test_quantize_and_classify_refuse_a_bad_sidecar(reference, tmp_path, capsys, edit, needle) -> None:
    _, fp32, data, _ = reference
    model = tmp_path / "m.onnx"
    import onnx

    proto = onnx.load(str(fp32))
    del proto.metadata_props[:]  # only the sidecar describes it now
    onnx.save(proto, str(model))
    side = json.loads(sidecar_path(fp32).read_text())
    edit(side)
    sidecar_path(model).write_text(json.dumps(side))
    assert main(["quantize", str(model), "--calib", str(data / "train"), "-o", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "m.onnx.json" in err[0] and "calibration images" not in err[0]
    assert not (tmp_path / "q.onnx").exists()
    assert main(["classify", str(data / "val"), "--model", str(model)]) == 2
    assert needle in capsys.readouterr().err
    sidecar_path(model).write_text("{not json")
    assert main(["classify", str(data / "val"), "--model", str(model)]) == 2
    assert "unreadable sidecar" in capsys.readouterr().err


@pytest.mark.parametrize("opset", ["1", "99"])
def test_export_bad_opset_is_one_line_exit_2(tmp_path, capsys, opset) -> None:
    assert main(["export", "--arch", "resnet18", "--weights", "random", "--opset", opset, "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--opset {opset}" in err[0]
    assert list(tmp_path.iterdir()) == []


def _nan_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=3).eval()
    with torch.no_grad():
        m.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    meta = ModelMeta("resnet18", "nan test", ["a", "b", "c"], Preprocessing(resize=72, crop=64), True)
    return save_checkpoint(path, m, meta)


def test_fuse_refuses_nan_weights_and_writes_nothing(tmp_path, capsys) -> None:
    src = _nan_checkpoint(tmp_path / "nan.pt")
    assert main(["fuse", "--weights", str(src), "-o", str(tmp_path / "fused.pt")]) == 2  # refused at load
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "fused.pt").exists()
    # loaded anyway, to inspect it: the check fails instead of printing "100% agreement"
    assert main(["fuse", "--weights", str(src), "--allow-nonfinite", "-o", str(tmp_path / "fused.pt"), "--json"]) == 1
    cap = capsys.readouterr()
    out = json.loads(cap.out)  # strict JSON: the NaN figures are null
    assert out["check"]["passed"] is False and out["output"] is None and out["max_abs_diff"] is None
    assert len(cap.err.strip().splitlines()) == 1 and "non-finite" in cap.err
    assert not (tmp_path / "fused.pt").exists()


@pytest.mark.slow
def test_export_of_nan_model_leaves_nothing_behind(tmp_path, capsys) -> None:
    src = _nan_checkpoint(tmp_path / "nan.pt")
    out = tmp_path / "exp"
    assert main(["export", "--weights", str(src), "--allow-nonfinite", "--exporter", "torchscript", "-o", str(out / "nan.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DIVERGES" in err[0] and "non-finite" in err[0]
    assert not out.exists()  # not even the folder -o named: a failed command leaves no half-made folder


def test_openvino_converts_an_onnx_file_whose_path_has_a_comma(tmp_path) -> None:
    """OpenVINO's convert_model reads "a, b" as two paths; the file must still convert and compute the same logits."""
    import numpy as np

    from resnet_xray.deploy.onnx import inspect_onnx, ort_runner
    from resnet_xray.deploy.openvino import open_ir, write_ir

    torch.manual_seed(0)
    folder = tmp_path / "runs, december"
    folder.mkdir()
    meta = ModelMeta("resnet18", "random (seed 0)", [f"class_{k}" for k in range(4)], PRE, False)
    fp32 = export_onnx(TinyResNet(4).eval(), folder / "tiny, fp32.onnx", ExportOptions(exporter="torchscript"), meta)
    run, precision = open_ir(write_ir(fp32, folder / "tiny, fp32.xml", {}))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert precision == "f32"
    np.testing.assert_allclose(run(x), ort_runner(fp32, inspect_onnx(fp32))(x), rtol=1e-4, atol=1e-4)
