"""The report: one self-contained HTML file and a JSON file whose numbers match the model's own forward."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re

import pytest
import torch
from PIL import Image

from resnet_xray.cli import main
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing, bundled_cat, load_image
from resnet_xray.model import load_model
from resnet_xray.report import ReportOptions, build_report


@pytest.fixture(scope="module")
def small():
    """ResNet-18 with random weights on a 64 px crop: every section, at a fraction of the cost."""
    model, meta = load_model("resnet18", "random")
    meta = dataclasses.replace(meta, preprocessing=Preprocessing(resize=64, crop=64))
    return model, meta


@pytest.fixture(scope="module")
def report(small, tmp_path_factory):
    model, meta = small
    out = tmp_path_factory.mktemp("report")
    res = build_report(bundled_cat(), model, meta, ReportOptions(out_dir=out, gradflow_batch=2, gradflow_size=64))
    return res, json.loads(res.json.read_text()), res.html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_is_self_contained(report):
    _, _, html = report
    markup = re.sub(r"<script\b.*?</script>", "", html, flags=re.S)  # the navigator's JS builds <img> from data URIs too
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', markup)
    assert len(srcs) >= 8 and all(s.startswith("data:image/") for s in srcs)
    assert not re.search(r'<(script|link|iframe)[^>]+(src|href)=', html)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "url(http" not in html and "@import" not in html
    assert "default-src 'none'" in html  # the page may not fetch anything even if a future edit tries


@pytest.mark.slow
def test_report_numbers_match_a_plain_forward(report, small):
    _, doc, _ = report
    model, meta = small
    x = meta.preprocessing(load_image(bundled_cat())).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
        conv1 = model.conv1(x)
    top = probs.topk(5)
    assert [p["index"] for p in doc["prediction"]] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([p["prob"] for p in doc["prediction"]]), top.values, rtol=1e-5, atol=1e-7)
    st = next(layer for layer in doc["layers"] if layer["name"] == "conv1")["stats"]
    got = torch.tensor([st["mean"], st["std"], st["min"], st["max"], st["l2"]], dtype=torch.float64)
    want = torch.tensor([conv1.mean(), conv1.std(unbiased=False), conv1.min(), conv1.max(), conv1.norm()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert doc["cam"]["class_index"] == int(probs.argmax()) and doc["cam"]["predicted"]


@pytest.mark.slow
def test_report_covers_every_layer_and_block(report, small):
    _, doc, html = report
    model, _ = small
    layers = doc["layers"]
    assert len(layers) == 69 and all(layer["stats"] is not None for layer in layers)  # resnet18's 69 traced operations
    assert len(doc["blocks"]) == 8
    assert [s["stage"] for s in doc["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    drawn = [layer for layer in layers if layer["type"] in ("conv", "relu", "add", "maxpool")]
    assert len(drawn) == 20 + 17 + 8 + 1 and all("grid" in layer for layer in drawn)
    assert not any("grid" in layer for layer in layers if layer not in drawn)
    assert all("grid_note" in layer for layer in layers if layer["type"] == "bn")
    assert sum("kernel_picture" in layer for layer in layers) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    data = json.loads(re.search(r'<script type="application/json" id="xray-data">(.*?)</script>', html, re.S).group(1))
    grid = data["grids"]["layer1.0.relu"]
    with Image.open(io.BytesIO(base64.b64decode(grid.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.size == (8 * 28 + 7, 8 * 28 + 7)
    for sid in ("overview", "architecture", "navigator", "kernels", "stages", "residual", "cam", "gradflow", "breakdown", "walkthrough"):
        assert f'<section id="{sid}">' in html
    assert doc["walkthrough"]["block"] == "layer1.0" and set(doc["gradflow"]["explanations"]["init"]) == {"batch", "running"}
    assert doc["anatomy"]["totals"]["params"] == sum(p.numel() for p in model.parameters())


def test_report_refuses_bad_class_before_writing(small, tmp_path):
    model, meta = small
    with pytest.raises(XrayError, match="--class 1000"):
        build_report(bundled_cat(), model, meta, ReportOptions(out_dir=tmp_path / "r", cam_class=1000))
    assert not (tmp_path / "r" / "report.html").exists()


def test_report_cli_bad_output_dir_and_image(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", str(bundled_cat()), "--arch", "resnet18", "--weights", "random", "-o", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["report", str(blocker / "nope.png"), "--arch", "resnet18", "--weights", "random", "-o", str(tmp_path / "r")]) == 2
    assert "nope.png" in capsys.readouterr().err
