"""Every "weights" object says whether the weights are known to be trained (true, false or "unknown"), and why.

A file is never assumed trained: a random-init state_dict is found out by its BatchNorm
statistics, this project's checkpoints carry the record of their training through fuse,
prune and export, and anything else is "unknown", with a warning.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from resnet_xray.cli import main
from resnet_xray.errors import XrayError
from resnet_xray.model import load_model, save_checkpoint
from resnet_xray.provenance import Provenance, TrainingStage, WeightsInfo


@pytest.fixture(scope="module")
def random_sd(tmp_path_factory):
    """The issue's example, with resnet18: a freshly initialised model's state_dict saved as a plain file."""
    path = tmp_path_factory.mktemp("prov") / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _json(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def _untrained(w: dict, path) -> None:
    assert w["trained"] is False and w["pretrained"] is False, w
    assert "BatchNorm" in w["trained_evidence"] and "initial statistics" in w["trained_evidence"]
    assert path.name in w["warning"] and "UNTRAINED" in w["warning"] and "BatchNorm" in w["warning"]


def test_random_init_state_dict_is_untrained_in_classify_and_trace(random_sd, capsys, cat_path):
    _untrained(_json(capsys, ["classify", str(cat_path), "--weights", str(random_sd)])["weights"], random_sd)
    _untrained(_json(capsys, ["trace", str(cat_path), "--weights", str(random_sd)])["weights"], random_sd)


def test_random_init_state_dict_is_untrained_in_the_report(random_sd, tmp_path, capsys, cat_path):
    out = tmp_path / "rep"
    doc = _json(capsys, ["report", str(cat_path), "--weights", str(random_sd), "-o", str(out), "--no-gradflow",
                         "--sections", "input,conv1", "--quiet"])
    _untrained(doc["weights"], random_sd)
    saved = json.loads((out / "report.json").read_text())
    _untrained(saved["weights"], random_sd)
    assert "measured" not in saved["conv1_kernels"]  # no interpretive reading of random filters
    html = (out / "report.html").read_text()
    assert "NOT trained" in html and "UNTRAINED" in html


def test_interpretive_readings_appear_only_for_weights_known_trained(tmp_path, capsys, cat_path):
    model, meta = load_model("resnet18", "random")
    known = tmp_path / "known.pt"
    save_checkpoint(known, model, meta.__class__(**{**meta.__dict__, "provenance": Provenance(True, "a test says so")}))
    doc = _json(capsys, ["report", str(cat_path), "--weights", str(known), "-o", str(tmp_path / "rep"), "--no-gradflow",
                         "--sections", "conv1", "--quiet"])
    assert doc["weights"]["trained"] is True and doc["weights"]["warning"] is None
    assert "measured" in json.loads((tmp_path / "rep" / "report.json").read_text())["conv1_kernels"]


def test_moved_batchnorm_statistics_are_unknown_never_trained(tmp_path):
    torch.manual_seed(0)
    m = torchvision.models.resnet18()
    m.train()(torch.randn(2, 3, 32, 32))  # a training-mode pass moves the running statistics, without any learning
    path = tmp_path / "seen.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    _, meta = load_model(None, path)
    w = WeightsInfo.of(meta)
    assert w.trained == "unknown" and "moved" in w.trained_evidence
    assert w.warning and "unknown" in w.warning and str(path) in w.warning


def test_a_file_named_like_torchvisions_is_checked_by_its_hash(tmp_path):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = tmp_path / url.rsplit("/", 1)[-1]  # resnet18-f37072fd.pth, with random weights in it
    torch.save(torchvision.models.resnet18().state_dict(), path)
    _, meta = load_model(None, path)
    assert WeightsInfo.of(meta).trained is False


def test_random_weights_stay_untrained_through_fuse_and_export(tmp_path, capsys):
    import resnet_xray as rx

    fused = tmp_path / "fused.pt"
    assert rx.fuse(load_model("resnet18", "random"), fused).output == fused
    _, meta = load_model(None, fused)  # no BatchNorm left to inspect: only the record can say
    w = WeightsInfo.of(meta)
    assert w.trained is False and "never trained" in w.trained_evidence and "UNTRAINED" in w.warning
    doc = _json(capsys, ["export", "--weights", str(fused), "-o", str(tmp_path / "m.onnx"), "--exporter", "torchscript", "--no-openvino"])
    assert doc["weights"]["trained"] is False
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    import onnx

    from resnet_xray.deploy.artefact import onnx_embedded

    assert onnx_embedded(onnx.load(str(tmp_path / "m.onnx")))["trained"] is False  # the .onnx alone says it too
    assert side["trained"] is False and side["trained_evidence"]
    from resnet_xray.deploy.runtime import load_deployed

    _, dmeta = load_deployed(tmp_path / "m.onnx")
    assert WeightsInfo.of(dmeta).trained is False


def test_older_checkpoints_without_a_record(tmp_path):
    """Before the record: untrained when the BatchNorms say so, else unknown (never trained)."""
    model, meta = load_model("resnet18", "random")
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, meta)
    ck = torch.load(path, weights_only=True)
    del ck["provenance"]
    torch.save(ck, path)
    assert WeightsInfo.of(load_model(None, path)[1]).trained is False
    with torch.no_grad():
        ck["state_dict"]["bn1.running_mean"] += 0.5
    torch.save(ck, path)
    w = WeightsInfo.of(load_model(None, path)[1])
    assert w.trained == "unknown" and "older resnet-xray checkpoint" in w.trained_evidence and w.warning


def test_provenance_round_trips_and_a_training_step_makes_it_trained():
    start = Provenance.random_init("random (seed 0)")
    none = start.after(TrainingStage("prune", "ds", ("a", "b"), 0, 0, None, "random (seed 0)"))
    assert none.trained is False and len(none.history) == 1  # no step: still untrained
    done = none.after(TrainingStage("finetune", "ds", ("a", "b"), 2, 10, 0.75, "p.pt"))
    assert done.trained is True and "on ds" in done.evidence and "75.0%" in done.evidence
    assert Provenance.from_data(done.to_data()) == done
    with pytest.raises(ValueError, match="trained"):
        Provenance.from_data({"trained": "maybe", "evidence": ""})


def test_sidecars_older_than_the_record_are_unknown():
    w = WeightsInfo.of({"weights": "ft/best.pt", "pretrained": True})
    assert w.trained == "unknown" and w.warning
    assert WeightsInfo.of({"weights": "random (seed 0)"}).trained is False


@pytest.mark.slow
def test_finetune_after_one_epoch_says_trained_and_names_its_data(tmp_path, capsys, cat_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["make-dataset", "ds", "--classes", "3", "--per-class", "12", "--val-per-class", "6", "--size", "64", "--quiet"]) == 0
    assert main(["finetune", "ds", "--out", "ft", "--arch", "resnet18", "--weights", "random", "--epochs", "1", "--no-progress"]) == 0
    capsys.readouterr()
    w = _json(capsys, ["classify", str(cat_path), "--weights", "ft/best.pt"])["weights"]
    assert w["trained"] is True and w["warning"] is None, w
    (stage,) = w["training"]
    assert stage["data"] == "ds" and stage["epochs"] == 1 and stage["steps"] >= 1 and stage["started_from"] == "random"
    assert len(stage["classes"]) == 3 and 0 <= stage["best_val_accuracy"] <= 1
    assert "ds" in w["trained_evidence"]
    assert main(["classify", str(cat_path), "--weights", "ft/best.pt"]) == 0
    assert "trained: yes" in capsys.readouterr().out and "on ds" in w["trained_evidence"]
    with pytest.raises(XrayError):
        load_model(None, tmp_path / "nothing.pt")


@pytest.mark.slow
def test_prune_that_fine_tunes_adds_its_training(tmp_path, monkeypatch):
    import resnet_xray as rx

    monkeypatch.chdir(tmp_path)
    assert main(["make-dataset", "ds", "--classes", "3", "--per-class", "12", "--val-per-class", "6", "--size", "64", "--quiet"]) == 0
    model, meta = load_model("resnet18", "random")
    from resnet_xray.interface import ReplacedClassifier, reset_classifier

    model, meta = reset_classifier(model, 3), meta.with_change(ReplacedClassifier(3))
    res = rx.prune((model, meta), "ds", target_macs=0.8, steps=1, finetune_epochs=1, latency_repeats=1, measure_ort=False,
                   input_size=64, batch_size=16, out="pruned")
    w = rx.load_model(weights=res.final_checkpoint).weights
    assert w.trained is True and w.training[-1]["by"] == "prune" and w.training[-1]["data"] == "ds"


def test_verbs_that_load_the_weights_themselves_read_their_record(random_sd, cat_path, offline_hub):
    """preprocess, gradflow and finetune name the weights they were given by what the weights say, never assumed trained."""
    import resnet_xray as rx

    _untrained(rx.preprocess(cat_path, weights=str(random_sd), arch="resnet18").weights.to_dict(), random_sd)
    _untrained(rx.gradflow(arch="resnet18", weights=str(random_sd), batch_size=2, input_size=32, quiet=True)
               .weights.to_dict(), random_sd)
    w = rx.preprocess(cat_path, weights="imagenet", arch="resnet18").weights  # offline: known from the enum alone
    assert w.trained is True and w.warning is None and "ResNet18_Weights.IMAGENET1K_V1" in w.source
