"""evaluate --out: accuracy through the resumable batch pipeline agrees with classify, image by image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import resnet_xray as rx
from resnet_xray.cli import main
from resnet_xray.interface import ReplacedClassifier, reset_classifier
from resnet_xray.model import LoadedModel


@pytest.fixture(scope="module")
def model_of_tiny(tiny):
    """A resnet18 whose classes are the tiny dataset's folders, so its top-1 can be right or wrong."""
    m = rx.load_model("resnet18", weights="random", seed=0)
    classes = sorted(p.name for p in (tiny / "val").iterdir())
    module = reset_classifier(m.module, len(classes)).eval()
    meta = m.meta.with_change(ReplacedClassifier(len(classes)))
    meta.class_names = classes
    return LoadedModel(module, meta)


def test_accuracy_is_what_classify_gives_and_a_second_run_only_reads(tiny, model_of_tiny, tmp_path):
    out = tmp_path / "val.jsonl"
    res = rx.evaluate_batch(model_of_tiny, tiny, out, batch_size=4, progress=False)
    by_hand = rx.classify(model_of_tiny, [tiny / "val"], topk=5)
    hits1 = [p.topk[0]["label"] == Path(p.image).parent.name for p in by_hand.results]
    hits5 = [Path(p.image).parent.name in [t["label"] for t in p.topk] for p in by_hand.results]
    assert res.scored == len(by_hand.results) == 9 and res.unlabelled == 0 and res.errors == 0
    assert res.top1 == pytest.approx(sum(hits1) / 9) and res.top5 == pytest.approx(sum(hits5) / 9)
    assert res.data == tiny / "val" and res.job.written == 9
    again = rx.evaluate_batch(model_of_tiny, tiny, out, batch_size=4, progress=False)  # resumes: nothing left to classify
    assert again.job.written == 0 and again.job.already == 9 and (again.top1, again.top5) == (res.top1, res.top5)
    assert len(out.read_text().splitlines()) == 9


def test_the_command_scores_a_deployed_model_and_refuses_what_it_cannot_do(tiny, tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--arch", "resnet18", "--weights", "random", "-o", str(onnx), "--no-openvino",
                 "--exporter", "torchscript"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tiny), "--model", str(onnx), "--out", str(tmp_path / "r.jsonl"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # ImageNet's 1000 classes name none of the folders: every image is scored, and none can be right
    assert doc["scored"] == 9 and doc["top1_accuracy"] == 0.0 and doc["weights"]["trained"] is False
    for argv, words in ((["--workers", "2"], "--workers: only with --out"),
                        (["--out", str(tmp_path / "r2.jsonl"), "--model", str(onnx)], "one --model at a time"),
                        (["--out", str(tmp_path / "r3.jsonl"), "--limit", "3"], "--limit 3: not with --out"),
                        (["--out", str(tmp_path / "r.txt")], "choose a .jsonl or .parquet name")):
        assert main(["evaluate", str(tiny), "--model", str(onnx), *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
