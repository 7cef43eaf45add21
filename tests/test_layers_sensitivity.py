"""Sensitivity: a synthetic outlier in one layer is found first, and keeping that layer in float restores agreement.

ResNet-18 with random weights at 64 px. A random network gives every input the same class, so
its classifier is centred on the calibration images' features (logits = W (f - mean f)): its
decisions then depend on the input, as a trained model's do. One weight of ``layer2.0.conv1``
is then made 100x the layer's largest: per-tensor INT8 crushes that layer's other weights to zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnet_xray import api
from resnet_xray.cli import main
from resnet_xray.deploy.data import list_images
from resnet_xray.deploy.onnx import ExportOptions, export_onnx
from resnet_xray.deploy.qdq import QdqSettings
from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
from resnet_xray.deploy.sensitivity import block_of, rank_sensitivity
from resnet_xray.errors import XrayError
from resnet_xray.image import load_batch

SIZE = 64
OUTLIER = "layer2.0.conv1"

pytestmark = pytest.mark.slow


def write_images(d: Path, n: int, seed: int) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sens")
    calib, score = write_images(root / "calib", 12, 1), write_images(root / "score", 24, 2)
    m = api.load_model("resnet18", "random", progress=False)
    module = m.module.eval()
    _, x, _ = load_batch(list_images(calib, "--calib"), m.meta.preprocessing.scaled_to(SIZE))
    with torch.no_grad():
        fc, module.fc = module.fc, nn.Identity()
        features = module(x)
        module.fc = fc
        fc.bias.copy_(-fc.weight @ features.mean(0))  # centred: the decision depends on the input
        w = module.get_submodule(OUTLIER).weight
        w[0, 0, 0, 0] = 100 * w.abs().max()
    fp32 = export_onnx(module, root / "fp32.onnx", ExportOptions(input_size=SIZE, exporter="torchscript"), m.meta)
    return {"root": root, "calib": calib, "score": score, "fp32": fp32}


def test_the_outlier_layer_ranks_first_and_keeping_it_float_restores_agreement(case, tmp_path) -> None:
    calib, score = list_images(case["calib"], "--calib"), list_images(case["score"], "--images")
    opts = QdqSettings("percentile", False, "uint8", reduce_range=False)
    rep = rank_sensitivity(case["fp32"], calib, score, opts, tmp_path, unit="layer", threads=1)
    first, second = rep.ranking[:2]
    assert first.name == OUTLIER and first.layers == [OUTLIER]
    assert first.agreement > rep.int8_agreement and first.gain > 0
    assert first.kl < rep.int8_kl / 5  # most of the INT8 error was that one layer's
    assert second.agreement < first.agreement or second.kl > 5 * first.kl
    assert rep.images == 24 and rep.calibration_images == 12
    (tmp_path / "blocks").mkdir()
    blocks = rank_sensitivity(case["fp32"], calib, score, opts, tmp_path / "blocks", unit="block", threads=1)
    assert blocks.ranking[0].name == block_of(OUTLIER) == "layer2.0"
    assert OUTLIER in blocks.ranking[0].layers and blocks.ranking[0].agreement > blocks.int8_agreement


def test_scoring_on_the_calibration_images_is_refused(case, tmp_path) -> None:
    calib = list_images(case["calib"], "--calib")
    with pytest.raises(XrayError, match="both calibration and scoring images"):
        rank_sensitivity(case["fp32"], calib, calib[:3], QdqSettings("minmax", False, "uint8", False), tmp_path)


def test_layers_sensitivity_uses_the_int8_models_settings_and_calibration(case, capsys) -> None:
    int8 = case["root"] / "int8.onnx"
    quantize_onnx(case["fp32"], case["calib"], int8, QuantizeOptions(min_agreement=0.0, time_check=False, progress=False,
                                                                      holdout_every=0))
    rc = main(["layers", str(int8), "--against", str(case["fp32"]), "--images", str(case["score"]), "--sensitivity", "layer",
               "--runs", "1", "--warmup", "0", "--threads", "1", "--max-images", "8", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    sens = doc["sensitivity"]
    assert sens["unit"] == "layer" and sens["calibration_images"] == 12 and sens["images"] == 8
    assert sens["ranking"][0]["name"] == OUTLIER
    row = next(r for r in doc["rows"] if r["name"] == OUTLIER)
    assert row["sensitivity"]["rank"] == 1
    errors = [(r["name"], r["error"]["rel_l2"]) for r in doc["rows"] if r["error"]]  # network order
    jumps = {name: e / before for (_, before), (name, e) in zip(errors, errors[1:])}
    assert max(jumps, key=jumps.get) == OUTLIER, errors  # the error grows most at that layer
