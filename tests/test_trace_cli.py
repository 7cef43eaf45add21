"""`resnet-xray trace` and `resnet-xray gradflow` from the command line: JSON smoke and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from resnet_xray.cli import main
from resnet_xray.image import bundled_cat, load_image
from resnet_xray.model import load_model


@pytest.mark.slow
def test_trace_json(capsys):
    rc = main(["trace", str(bundled_cat()), "--arch", "resnet18", "--weights", "random", "--json", "--walkthrough"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["input_shape"] == [1, 3, 224, 224]
    assert len(doc["blocks"]) == 8 and doc["blocks"][0]["name"] == "layer1.0"
    assert {"name", "residual_norm", "shortcut_norm", "ratio", "cosine"} <= set(doc["blocks"][0])
    fc = next(r for r in doc["layers"] if r["name"] == "fc")
    # The CLI's numbers are the model's: the fc row's max is the top-1 logit of a plain forward.
    model, meta = load_model("resnet18", "random")
    with torch.no_grad():
        logits = model(meta.preprocessing(load_image(bundled_cat())).unsqueeze(0))
    assert doc["top1"]["index"] == int(logits.argmax())
    assert_close(fc["max"], float(logits.max()), rtol=1e-6, atol=0)
    assert doc["walkthrough"]["block"] == "layer1.0"


def test_trace_text_and_bad_image(capsys, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["trace", str(bad), "--arch", "resnet18", "--weights", "random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0]


@pytest.mark.slow
def test_gradflow_json_and_plot(capsys, tmp_path):
    out = tmp_path / "gf.png"
    rc = main(["gradflow", "--arch", "resnet18", "--input-size", "32", "--batch-size", "2", "--regime", "running",
               "--json", "-o", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["init"]) == {"running"}
    blocks = doc["init"]["running"]["resnet"]["blocks"]
    assert len(blocks) == 8 and all(b["rel_error"] < 1e-5 for b in blocks)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "running statistics" in doc["explanations"]["init"]["running"]


def test_gradflow_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["gradflow", "--arch", "resnet18", "--input-size", "32", "--batch-size", "2", "-o", str(blocker / "gf.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-o" in err[0]
