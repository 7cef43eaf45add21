"""Which channels pruning removed: recorded per BatchNorm against the unpruned model, composed over rounds,
kept through checkpoints and shown by the explorer."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from torch import nn

import resnet_xray as rx
from resnet_xray.explorer import views
from resnet_xray.explorer.workspace import Workspace
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model, changes_of, load_model, save_checkpoint
from resnet_xray.pruning.kept import kept_after, match, recorded_kept
from resnet_xray.pruning.loop import STATE_FILE, PruneOptions, prune
from resnet_xray.pruning.spec import PrunedWidths
from resnet_xray.pruning.structured import prune_channels
from resnet_xray.spec import SpecError

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _model_and_meta():
    """resnet18 whose BatchNorms differ channel by channel, as trained ones do (a fresh one's are all alike)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    meta = ModelMeta("resnet18", "tiny-test-weights", ["blue", "red"], Preprocessing(resize=SIZE, crop=SIZE), True,
                     changes=changes_of(model, "resnet18"))
    return model, meta


def _bns(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def assert_indexes_original(kept: dict[str, list[int]], original: nn.Module, pruned: nn.Module) -> None:
    """Every pruned BatchNorm is the original one's rows at the recorded indices, exactly."""
    before, after = _bns(original), _bns(pruned)
    assert set(kept) == set(after)
    for name, bn in after.items():
        idx = torch.tensor(kept[name])
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(before[name], attr)[idx], getattr(bn, attr)), (name, attr)
    assert any(len(kept[n]) < before[n].num_features for n in after)  # something was removed


def _run(tmp_path, steps: int):
    model, meta = _model_and_meta()
    opts = PruneOptions(target_macs=0.5, steps=steps, input_size=SIZE, latency_repeats=1, measure_ort=False, out=str(tmp_path))
    return model, meta, opts, prune(model, meta, opts, None, log=lambda s: None)


def _recorded(path) -> tuple[nn.Module, dict[str, list[int]]]:
    module, meta = load_model(None, path)
    return module, meta.find("pruned_widths").kept


def test_one_pruning_step_records_the_kept_channels():
    model, meta = _model_and_meta()
    pruned = prune_channels(model, "l1", 0.3, global_pruning=False, round_to=8)
    assert_indexes_original(kept_after(recorded_kept(meta, model), model, pruned), model, pruned)


def test_channels_that_cannot_be_told_apart_are_not_guessed():
    assert match([(1,), (2,), (3,)], [(1,), (3,)]) == [0, 2]
    assert match([(1,), (1,), (3,)], [(1,), (3,)]) is None  # channel 0 or 1: either could be the one kept
    assert match([(1,), (2,)], [(3,)]) is None
    model, meta = _model_and_meta()
    with torch.no_grad():
        model.layer1[0].bn1.reset_parameters()  # every channel alike, as in an untrained model
        model.layer1[0].bn1.reset_running_stats()
    pruned = prune_channels(model, "l1", 0.3, global_pruning=False, round_to=8)
    assert pruned.layer1[0].bn1.num_features < 64
    kept = kept_after(recorded_kept(meta, model), model, pruned)
    assert set(kept) == set(_bns(pruned)) - {"layer1.0.bn1"}  # left out, not guessed; the others are recorded
    doc = views.pruned_doc(types.SimpleNamespace(model=rx.LoadedModel(pruned, meta.with_change(PrunedWidths.of(pruned, kept)))))
    notes = {x["name"]: x["note"] for x in doc["layers"]}
    assert doc["recorded"] and "could not be told apart" in notes.pop("layer1.0.bn1") and not any(notes.values())


def test_one_round_of_the_loop_records_indices_into_the_original(tmp_path):
    model, _, _, _ = _run(tmp_path, steps=1)
    for name in ("round_01.pt", "pruned.pt"):
        pruned, kept = _recorded(tmp_path / name)
        assert_indexes_original(kept, model, pruned)


def test_two_rounds_compose_and_a_resumed_run_reads_them_from_its_checkpoint(tmp_path):
    model, meta, opts, result = _run(tmp_path, steps=2)
    pruned, kept = _recorded(tmp_path / "round_02.pt")
    first, kept1 = _recorded(tmp_path / "round_01.pt")
    assert_indexes_original(kept, model, pruned)
    assert any(len(kept[n]) < len(kept1[n]) for n in kept)  # round 2 pruned again, and still indexes round 0
    # Resume after round 1: round 2 starts from round_01.pt, so its record has to come from that file.
    state = json.loads((tmp_path / STATE_FILE).read_text())
    state["rounds"] = state["rounds"][:1]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    (tmp_path / "round_02.pt").unlink()
    (tmp_path / "pruned.pt").unlink()
    lines: list[str] = []
    prune(model, meta, opts, None, log=lines.append)
    assert any("resuming after round 1/2" in s for s in lines)
    again, kept2 = _recorded(tmp_path / "round_02.pt")
    assert_indexes_original(kept2, model, again)


def test_the_record_survives_save_and_load(tmp_path):
    model, meta = _model_and_meta()
    pruned = prune_channels(model, "l1", 0.3, global_pruning=False, round_to=8)
    widths = PrunedWidths.of(pruned, kept_after(recorded_kept(meta, model), model, pruned), round=1)
    save_checkpoint(tmp_path / "p.pt", pruned, meta.with_change(widths))
    loaded, kept = _recorded(tmp_path / "p.pt")
    assert kept == widths.kept
    assert_indexes_original(kept, model, loaded)
    assert PrunedWidths.from_data(widths.to_data()) == widths


def test_a_bad_record_is_refused_naming_the_layer():
    model, _ = _model_and_meta()
    data = PrunedWidths.of(model).to_data()
    for kept, words in [({"conv1": [0]}, "names no BatchNorm"), ({"bn1": [0, 1]}, "64 increasing"),
                        ({"bn1": list(range(64))[::-1]}, "64 increasing"), ({"bn1": [-1, *range(1, 64)]}, "increasing")]:
        with pytest.raises(SpecError, match=words):
            PrunedWidths.from_data({**data, "kept": kept})


def _explorer_model(module: nn.Module, meta: ModelMeta) -> rx.LoadedModel:
    # the explorer's 64 px, like test_explore's models: every stage keeps a spatial map
    return rx.LoadedModel(module, dataclasses.replace(meta, preprocessing=Preprocessing(resize=72, crop=64)))


def test_an_old_checkpoint_loads_and_the_explorer_says_identities_are_not_recorded(tmp_path):
    model, meta = _model_and_meta()
    pruned = prune_channels(model, "l1", 0.3, global_pruning=False, round_to=8)
    old = {k: v for k, v in PrunedWidths.of(pruned, round=1).to_data().items() if k != "kept"}  # as written before the record
    assert PrunedWidths.from_data(old).kept == {}
    save_checkpoint(tmp_path / "old.pt", pruned, meta.with_change(PrunedWidths.from_data(old)))
    loaded = rx.LoadedModel(*load_model(None, tmp_path / "old.pt"))
    ws = Workspace([_explorer_model(model, meta), _explorer_model(loaded.module, loaded.meta)], [])
    assert views.pruned_doc(ws.slots[0]) is None
    doc = views.pruned_doc(ws.slots[1])
    assert not doc["recorded"] and "not recorded in this checkpoint" in doc["note"] and "pruned before resnet-xray" in doc["note"]
    bns = _bns(pruned)
    assert [x["name"] for x in doc["layers"]] == list(bns)
    for x in doc["layers"]:
        assert x["removed"] is None and x["kept"] == bns[x["name"]].num_features and x["summary"].startswith("kept ")


def test_the_explorer_compare_doc_lists_the_removed_channels(tmp_path):
    fastapi_testclient = pytest.importorskip("fastapi.testclient")
    model, meta, _, _ = _run(tmp_path, steps=1)
    pruned = rx.LoadedModel(*load_model(None, tmp_path / "pruned.pt"))
    kept = pruned.meta.find("pruned_widths").kept
    ex = rx.explore(_explorer_model(model, meta), compare=[_explorer_model(pruned.module, pruned.meta)])
    with fastapi_testclient.TestClient(ex.app, base_url="http://127.0.0.1:8765") as c:
        main, other = c.get("/api/p/cat/compare").json()["models"]
    assert main["pruned"] is None
    doc = other["pruned"]
    assert doc["recorded"] and doc["note"] is None
    widths = {n: m.num_features for n, m in _bns(model).items()}
    assert [x["name"] for x in doc["layers"]] == list(widths)
    for x in doc["layers"]:
        removed = sorted(set(range(widths[x["name"]])) - set(kept[x["name"]]))
        assert x["removed"] == removed and x["width"] == widths[x["name"]] and x["kept"] == len(kept[x["name"]])
        assert x["conv"] == x["name"].replace("bn", "conv").replace("downsample.1", "downsample.0")
        if removed:
            head = f"removed {len(removed)} of {x['width']}: " + ", ".join(map(str, removed[: views.SHOWN_REMOVED]))
            assert x["summary"].startswith(head) and x["summary"].endswith("…") == (len(removed) > views.SHOWN_REMOVED)
        else:
            assert x["summary"] == f"kept all {x['width']}"
    assert any(x["removed"] for x in doc["layers"])
