"""The INT8 repair in `quantize`: below --min-agreement it chooses settings, then float layers, on control images.

The small ResNet of the quantisation tests, trained in seconds, with one weight of ``layer2.conv1``
made 30000x the layer's largest: its output channel then spikes far past the others, so no
calibration method or per-channel weights save the INT8 model (the spike is an activation),
and only leaving that block's layers in float does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnet_xray.deploy.nncf_onnx import NNCF_METHODS
from resnet_xray.deploy.onnx import ExportOptions, export_onnx, sidecar_path
from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
from resnet_xray.model import ModelMeta

from .test_deploy_quantize import COLOURS, PRE, train_tiny, write_dataset

pytestmark = pytest.mark.slow

TARGET = 0.95


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repair")
    data, val = write_dataset(root / "data", seed=0), write_dataset(root / "val", seed=1)
    model, _, _ = train_tiny(data)
    with torch.no_grad():
        w = model.eval().layer2.conv1.weight
        w[0, 0, 0, 0] = 30000 * w.abs().max()
    meta = ModelMeta("resnet18", "trained in test", [f"class_{k}" for k in range(len(COLOURS))], PRE, True)
    fp32 = export_onnx(model, root / "fp32.onnx", ExportOptions(exporter="torchscript"), meta)
    return {"root": root, "data": data, "val": val, "fp32": fp32}


def test_below_target_the_repair_keeps_the_outlier_block_in_float_and_reaches_it(outlier) -> None:
    out = outlier["root"] / "int8.onnx"
    rep = quantize_onnx(outlier["fp32"], outlier["data"], out, QuantizeOptions(
        min_agreement=TARGET, eval_dir=str(outlier["val"]), time_check=False, progress=False))
    r = rep["choices"]["repair"]
    first = r["candidates"][:6]  # step 1: every method, per-tensor and per-channel, measured
    assert {(c["method"], c["per_channel"]) for c in first} == {(m, pc) for m in ("minmax", "entropy", "percentile")
                                                                  for pc in (False, True)}
    assert all(c["kept_float"] == [] and c["agreement"] < TARGET for c in first)  # no setting alone is enough
    # step 2, NNCF's bias correction with two range estimators: measured (or its failure recorded), and no cure
    # for an activation spike either
    step2 = [c for c in r["candidates"] if c["method"] in NNCF_METHODS]
    assert {c["method"] for c in step2} | set(r["failed"]) == set(NNCF_METHODS)
    assert all(c["kept_float"] == [] and c["agreement"] < TARGET for c in step2)
    # and cross-layer equalisation under step 1's best settings, measured once with every layer INT8: it moves the
    # spike from conv1's output into conv2's weights, which still leaves too few levels for the rest
    cle = [c for c in r["candidates"] if c["equalized"] and c["method"] not in NNCF_METHODS and not c["kept_float"]]
    assert len(cle) == 1 and cle[0]["agreement"] < TARGET
    kept = rep["choices"]["kept_float"]
    assert rep["kept_float"] == kept  # quantize --json names them at the top level too
    assert kept and set(kept) <= {"layer2.conv1", "layer2.conv2", "layer2.downsample.0"}, kept  # the outlier's block only
    assert r["sensitivity"]["ranking"][0]["layers"][0].startswith("layer2.")
    assert r["reached"] and r["chosen"]["agreement"] >= TARGET > max(c["agreement"] for c in first)
    # chosen on a control split of the calibration folder; scored afresh on the held-out folder
    assert r["control_images"] == 15 and r["calibration_images"] == 45
    assert rep["agreement"]["paths"]["ort_int8"]["top1_agreement"] >= TARGET and rep["passed"]
    assert out.exists() and rep["int8_model"] == str(out)


def test_openvino_int8_repairs_itself_through_nncf_accuracy_control(outlier, tmp_path) -> None:
    out = tmp_path / "int8.xml"
    target = 0.99  # NNCF's plain INT8 of this model agrees on 96.7% of the held-out images: over TARGET, under this
    rep = quantize_onnx(outlier["fp32"], outlier["data"], out, QuantizeOptions(
        engine="openvino", min_agreement=target, eval_dir=str(outlier["val"]), time_check=False, progress=False))
    r = rep["choices"]["repair"]
    assert "accuracy_control" in r["method"] and "top-1 agreement" in r["method"]
    # the spiking block goes back to float, named as PyTorch names it, and the target is met on held-out images
    assert rep["kept_float"] == r["kept_float"] and rep["kept_float"]
    assert any(n.startswith("layer2.") for n in rep["kept_float"]), rep["kept_float"]
    assert [t["setting"] for t in r["tried"]] == ["full bias correction", "mixed preset"]  # measured first, not enough
    assert all(t["control_agreement"] < target for t in r["tried"])
    assert r["control_images"] == 15 and r["calibration_images"] == 45 and r["reached"]
    assert rep["agreement"]["paths"]["openvino_int8"]["top1_agreement"] >= target and rep["passed"] and out.exists()
    side = json.loads(sidecar_path(out).read_text())
    assert side["quantization"]["kept_float"] == rep["kept_float"]  # the file says what it keeps in float


def test_without_held_out_images_there_is_no_repair_and_nothing_is_written(outlier, tmp_path) -> None:
    out = tmp_path / "int8.onnx"
    rep = quantize_onnx(outlier["fp32"], outlier["data"], out, QuantizeOptions(
        min_agreement=TARGET, holdout_every=0, time_check=False, progress=False))
    assert "repair" not in rep["choices"]  # it would be scored on the images it was chosen on
    assert not rep["passed"] and rep["int8_model"] is None and not out.exists()


def test_optimize_route_repairs_from_lists_of_images_and_says_why(outlier, tmp_path) -> None:
    from resnet_xray.deploy.data import list_images
    from resnet_xray.deploy.quantize import quantize_from_files

    calib, held = list_images(outlier["data"], "--calib"), list_images(outlier["val"], "--eval")
    out = tmp_path / "int8.onnx"
    got = quantize_from_files(outlier["fp32"], calib, held, out, TARGET)
    assert got["reached"] and got["agreement"] >= TARGET and out.exists()
    assert got["kept_float"] and set(got["kept_float"]) <= {"layer2.conv1", "layer2.conv2", "layer2.downsample.0"}
    # why: each kept layer's measured gain in agreement, from the ranking the repair followed
    assert got["sensitivity"] and all(set(s["layers"]) <= set(got["kept_float"]) for s in got["sensitivity"])
    assert max(s["gain"] for s in got["sensitivity"]) > 0
    assert got["chosen_on_images"] == 15  # a control split of the calibration images, never the held-out ones


def test_a_model_short_of_the_target_is_written_only_when_asked_and_says_so(outlier, tmp_path) -> None:
    out = tmp_path / "int8.onnx"
    rep = quantize_onnx(outlier["fp32"], outlier["data"], out, QuantizeOptions(
        min_agreement=TARGET, holdout_every=0, time_check=False, progress=False, keep_below_target=True))
    assert not rep["passed"] and rep["int8_model"] == str(out) and out.exists()


def test_a_control_folder_is_what_the_repair_chooses_on(outlier, tmp_path) -> None:
    from resnet_xray.deploy.data import list_images

    control = write_dataset(tmp_path / "control", seed=2)  # drawn like the held-out folder, with another seed
    out = tmp_path / "int8.onnx"
    rep = quantize_onnx(outlier["fp32"], outlier["data"], out, QuantizeOptions(
        min_agreement=TARGET, eval_dir=str(outlier["val"]), control_dir=str(control), time_check=False, progress=False))
    r = rep["choices"]["repair"]
    # every calibration image calibrates (none is split off), every control image judges the choices
    assert r["control_images"] == len(list_images(control, "--control"))
    assert r["calibration_images"] == len(list_images(outlier["data"], "--calib"))
    assert rep["passed"] and set(rep["kept_float"]) <= {"layer2.conv1", "layer2.conv2", "layer2.downsample.0"}


def test_optimize_refuses_a_control_folder_without_images_before_any_work(tmp_path) -> None:
    from resnet_xray.deploy.optimize import OptimizeOptions
    from resnet_xray.errors import XrayError

    (tmp_path / "empty").mkdir()
    with pytest.raises(XrayError, match="--control"):
        OptimizeOptions(data=str(tmp_path), control=str(tmp_path / "empty"))
