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
from resnet_xray.reporting import ReportOptions, build_report
from resnet_xray.reporting.sections import SECTION_IDS


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
    assert doc["sections"] == [sid for sid in SECTION_IDS if sid != "deployed"]  # that one needs --layers
    positions = [html.index(f'<section id="{sid}">') for sid in doc["sections"]]
    assert positions == sorted(positions)  # every section, in the article's order
    assert [a for a in re.findall(r'<nav class="toc">(.*?)</nav>', html, re.S)[0].split('href="#')[1:]][0].startswith("input")
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


@pytest.mark.slow
def test_report_says_which_weights_made_it_and_interprets_nothing_for_random(report, small):
    _, doc, html = report
    _, meta = small
    assert doc["weights"]["source"] == meta.weights and doc["weights"]["pretrained"] is False
    assert "RANDOM" in doc["weights"]["warning"]
    assert 'class="interp"' not in html  # no interpretive caption for random weights
    assert "measured" not in doc["conv1_kernels"]
    assert "edge-like" not in html and "follow the cat" not in html


@pytest.mark.slow
def test_report_worked_numbers_match_the_real_layers(report):
    _, doc, _ = report
    k, f, p = doc["kernel_worked"], doc["fusion"], doc["preprocessing"]
    assert p["matches_pipeline"] is True
    assert p["crop"]["to"] == 64 and p["resize"]["size"][1] == 64
    assert k["abs_diff"] < 1e-4 * max(1.0, abs(k["real"])) and k["terms"] == 7 * 7 * 3
    assert abs(sum(k["per_channel"]) + k["bias"] - k["by_hand"]) < 1e-9
    assert f["max_abs_diff"] < 1e-4 * max(1.0, f["out_norm"]) and len(f["top"]) == 4
    s = doc["shortcuts"]
    assert s["torchvision_uses"] == "B" and s["block"] == "layer2.0" and not s["a_fits"]  # stride 2: A alone cannot match
    assert [p["block"] for p in s["projections"]] == ["layer2.0", "layer3.0", "layer4.0"]
    # The walkthrough reads its norms from the same trace as the layer table.
    l2 = {layer["name"]: layer["stats"]["l2"] for layer in doc["layers"]}
    assert all(step["l2"] == l2[step["name"]] for step in doc["walkthrough"]["steps"])


def test_report_sections_subset_and_subject_is_the_file_name(small, tmp_path):
    model, meta = small
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(bundled_cat().read_bytes())
    res = build_report(photo, model, meta, ReportOptions(out_dir=tmp_path / "r", sections=("cost", "kernel"), quiet=True))
    doc, html = json.loads(res.json.read_text()), res.html.read_text(encoding="utf-8")
    assert doc["sections"] == ["kernel", "cost"]  # the article's order, whatever order was asked
    assert re.findall(r'<section id="(\w+)">', html) == ["kernel", "cost"]
    assert "gradflow" not in doc["timings_s"] and "cam" not in doc["timings_s"]
    assert "looks at astronaut.jpg" in html and doc["subject"] == "astronaut.jpg"
    with pytest.raises(XrayError, match="sections kernels: unknown"):
        build_report(photo, model, meta, ReportOptions(out_dir=tmp_path / "bad", sections=("kernels",)))
    assert not (tmp_path / "bad" / "report.html").exists()


def test_interpretive_caption_only_for_trained_weights_and_measured(small, tmp_path):
    from resnet_xray.reporting.story import classify_kernels

    model, meta = small
    from resnet_xray.provenance import Provenance

    trained = dataclasses.replace(meta, weights="a trained checkpoint", pretrained=True, provenance=Provenance(True, "a test says so"))
    res = build_report(bundled_cat(), model, trained, ReportOptions(out_dir=tmp_path, sections=("conv1",), quiet=True))
    doc, html = json.loads(res.json.read_text()), res.html.read_text(encoding="utf-8")
    counts = classify_kernels(model.conv1.weight)
    caption = re.search(r'<p class="interp">(.*?)</p>', html).group(1)
    from resnet_xray.units import of_count

    assert f"{of_count(counts['oriented_edges'], 64, 'filters')} look like oriented edges" in caption
    assert doc["conv1_kernels"]["measured"]["oriented_edges"] == counts["oriented_edges"]
    assert {k: doc["weights"][k] for k in ("source", "pretrained", "trained", "warning")} == {
        "source": "a trained checkpoint", "pretrained": True, "trained": True, "warning": None}


def test_kernel_criterion_on_known_filters():
    from resnet_xray.reporting.story import classify_kernels

    w = torch.zeros(3, 3, 7, 7)
    w[0, :, :, :3], w[0, :, :, 4:] = -1.0, 1.0  # a grey vertical edge
    w[1, 0], w[1, 1] = 1.0, -1.0  # red against green, flat: colour-opponent
    w[2] = torch.randn(3, 7, 7, generator=torch.Generator().manual_seed(0))  # noise
    got = classify_kernels(w)
    assert got["edge_filters"] == [0] and got["oriented_edges"] == 1 and got["colour_opponent"] == 1


def test_a_full_disk_leaves_the_earlier_report_pair_whole(small, tmp_path, monkeypatch):
    """report.json and report.html are swapped in as a pair: a failed write keeps both old files, or neither new one."""
    import errno
    import pathlib

    model, meta = small
    opts = ReportOptions(out_dir=tmp_path / "r", sections=("cost",), quiet=True)
    first = build_report(bundled_cat(), model, meta, opts)
    before = {p.name: p.read_bytes() for p in (first.html, first.json)}
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    with pytest.raises(XrayError, match="No space left on device"):
        build_report(bundled_cat(), model, meta, dataclasses.replace(opts, sections=("cost", "kernel")))
    with pytest.raises(XrayError, match="No space left on device"):
        build_report(bundled_cat(), model, meta, dataclasses.replace(opts, out_dir=tmp_path / "fresh"))
    assert {p.name: p.read_bytes() for p in (first.html, first.json)} == before
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "report.json"]
    assert not (tmp_path / "fresh" / "report.json").exists()
