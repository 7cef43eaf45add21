"""The public API: the README's Python section runs as written, and results match the CLI's --json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import resnet_xray as rx
from resnet_xray.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
VERBS = ("load_model", "classify", "anatomy", "trace", "gradflow", "report", "fuse", "export", "quantize", "bench",
         "finetune", "prune")


def python_section() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python API section has no python block"
    return "\n".join(blocks)


def test_readme_python_section_runs_and_matches_the_cli(cat_path, tmp_path, monkeypatch, capsys):
    shutil.copy(cat_path, tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(python_section(), str(README), "exec"), ns)  # noqa: S102 - the README's own example
    capsys.readouterr()
    doc = ns["result"].to_dict()
    assert main(["classify", "cat.png", "--arch", "resnet18", "--weights", "random", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert doc.keys() == cli.keys()
    assert doc["weights"] == cli["weights"] and doc["results"][0]["image"] == cli["results"][0]["image"]
    assert [t["index"] for t in doc["results"][0]["topk"]] == [t["index"] for t in cli["results"][0]["topk"]]


def test_one_verb_per_capability():
    for name in VERBS:
        assert callable(getattr(rx, name)), name
    assert "optimize" in rx.__all__


def test_verbs_survive_importing_their_same_named_modules(cat_path):
    import resnet_xray.classification  # noqa: F401 - binds the module on the package
    import resnet_xray.pruning  # noqa: F401
    import resnet_xray.tracing.capture  # noqa: F401

    model = rx.load_model("resnet18", weights="random")
    res = rx.trace(model, cat_path)
    assert res.to_dict()["top1"] == res.top1 and len(res.blocks) == 8
    assert resnet_xray.tracing.capture.TraceOptions.__module__ == "resnet_xray.tracing.capture"
    assert rx.classify(model, [cat_path], topk=1).results[0].topk


def test_loaded_model_is_one_object_that_still_unpacks():
    model = rx.load_model("resnet18", weights="random")
    module, meta = model
    assert model.module is module and model.meta is meta and model.arch == "resnet18"
    assert model.weights.pretrained is False and model.to_dict()["weights"]["source"] == "random (seed 0)"


def test_verbs_take_a_pair_or_a_path(tmp_path, cat_path):
    from resnet_xray.model import load_model, save_checkpoint

    module, meta = load_model("resnet18", "random")
    a = rx.anatomy((module, meta), input_size=64)
    ckpt = save_checkpoint(tmp_path / "m.pt", module, meta)
    b = rx.anatomy(ckpt, input_size=64)
    assert a.totals.params == b.totals.params
    # a saved random init stays marked untrained: the checkpoint carries its provenance
    assert b.to_dict()["weights"]["source"] == str(ckpt) and b.to_dict()["weights"]["trained"] is False
    with pytest.raises(TypeError, match="bare nn.Module"):
        rx.anatomy(module)


def test_fuse_result_matches_cli_json(tmp_path, capsys):
    res = rx.fuse(rx.load_model("resnet18", weights="random"), tmp_path / "f.pt")
    capsys.readouterr()
    assert main(["fuse", "--arch", "resnet18", "--weights", "random", "-o", str(tmp_path / "g.pt"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    mine = res.to_dict()
    assert mine.keys() == cli.keys() and mine["folded"] == cli["folded"] == 20
    assert rx.anatomy(tmp_path / "f.pt", input_size=64).totals.params < 11_689_512  # BN gone, fused model reloads


def test_prune_returns_a_reloadable_checkpoint(tmp_path):
    model = rx.load_model("resnet18", weights="random")
    res = rx.prune(model, None, target_macs=0.7, steps=1, finetune_epochs=0, latency_repeats=1, measure_ort=False,
                   input_size=64, out=str(tmp_path))
    doc = res.to_dict()
    assert doc["weights"]["source"] == "random (seed 0)" and doc["final_checkpoint"] == str(res.final_checkpoint)
    assert rx.load_model(weights=res.final_checkpoint).weights.trained is False  # never a training step: untrained
    pruned = rx.anatomy(res.final_checkpoint, input_size=64).totals.macs
    assert pruned < rx.anatomy(model, input_size=64).totals.macs
