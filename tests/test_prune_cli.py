"""``resnet-xray prune``: bad input gives one line and exit 2; a real run's checkpoint works in other commands."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_xray.cli import main


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _folder(root, classes=("blue", "red"), per_class=8, bad=True):
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
            px[..., 2 if c == "blue" else 0] += 150
            Image.fromarray(px).save(root / c / f"{i}.png")
    if bad:
        (root / classes[0] / "broken.png").write_bytes(b"not a png at all")
    return root


def _one_error_line(err: str) -> str:
    lines = [s for s in err.strip().splitlines() if s]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.5"])
def test_target_macs_outside_zero_one_exits_2(value, tmp_path, capsys):
    assert main(["prune", "--weights", "random", "--arch", "resnet18", "--target-macs", value, "--out", str(tmp_path)]) == 2
    assert "--target-macs" in _one_error_line(capsys.readouterr().err)


def test_taylor_without_data_exits_2(tmp_path, capsys):
    assert main(["prune", "--weights", "random", "--arch", "resnet18", "--importance", "taylor", "--out", str(tmp_path)]) == 2
    assert "taylor" in _one_error_line(capsys.readouterr().err)


def test_data_with_one_class_exits_2(tmp_path, capsys):
    data = _folder(tmp_path / "data", classes=("only",), bad=False)
    code = main(["prune", "--weights", "random", "--arch", "resnet18", "--data", str(data), "--workers", "0", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "need at least 2" in _one_error_line(capsys.readouterr().err)


def test_analyze_only_prints_and_plots_what_would_be_dropped(tmp_path, capsys):
    out = tmp_path / "an"
    code = main(["prune", "--analyze-only", "--weights", "random", "--arch", "resnet18", "--ratio", "0.5", "--round-to", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "criterion l1" in text and "layer4.0.conv1" in text
    doc = json.loads((out / "importance.json").read_text())
    conv1 = next(g for g in doc["groups"] if g["name"] == "layer2.1.conv1")
    assert conv1["channels"] == 128 and len(conv1["dropped"]) == 64
    assert (out / "importance.png").stat().st_size > 0


@pytest.mark.slow
def test_prune_with_data_then_use_the_checkpoint_elsewhere(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "pruned"
    code = main([
        "prune", "--weights", "random", "--arch", "resnet18", "--data", str(data), "--input-size", "32",
        "--target-macs", "0.6", "--steps", "1", "--finetune-epochs", "1", "--batch-size", "4", "--workers", "0",
        "--latency-repeats", "2", "--no-ort", "--out", str(out),
    ])
    # The model has 1000 outputs and the data 2 classes: the user must fine-tune first.
    assert code == 2 and "fine-tune the model" in _one_error_line(capsys.readouterr().err)

    from resnet_xray.model import ModelMeta, build_model, save_checkpoint
    from resnet_xray.train.data import preprocessing_for

    torch.manual_seed(0)
    start = tmp_path / "two_class.pt"
    save_checkpoint(start, build_model("resnet18", num_classes=2), ModelMeta("resnet18", "random", ["blue", "red"], preprocessing_for(data, 32), False))
    code = main([
        "prune", "--weights", str(start), "--data", str(data), "--input-size", "32",
        "--target-macs", "0.6", "--steps", "1", "--finetune-epochs", "1", "--batch-size", "4", "--workers", "0",
        "--latency-repeats", "2", "--no-ort", "--out", str(out),
    ])
    cap = capsys.readouterr()
    assert code == 2, cap.err  # exit 2 because an image was skipped; the run itself completed
    assert "broken.png" in cap.err
    assert "round 1/1" in cap.out and "channels per stage" in cap.out
    # One eager speed-up per round, from the side-by-side timing, labelled: the progress lines once
    # printed a figure of their own (3.43x against the table's 1.51x for the same round).
    assert len(re.findall(r"\b\d+\.\d+x\b", cap.out)) == 2  # baseline (1.00x) and round 1, in the table
    assert "timed round-robin with the baseline" in cap.out
    pruned = out / "pruned.pt"
    assert pruned.exists() and (out / "prune_options.json").exists()

    assert main(["classify", str(data / "red" / "0.png"), "--weights", str(pruned), "--json", "--topk", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {t["label"] for t in doc["results"][0]["topk"]} == {"blue", "red"}
    assert main(["anatomy", "--weights", str(pruned), "--input-size", "32", "--json"]) == 0
    anatomy = json.loads(capsys.readouterr().out)
    state = json.loads((out / "prune_state.json").read_text())
    assert anatomy["totals"]["macs"] == state["rounds"][0]["macs"]
    assert state["rounds"][0]["macs"] / state["baseline"]["macs"] == pytest.approx(0.6, abs=0.04)
