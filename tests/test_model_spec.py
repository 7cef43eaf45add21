"""The typed model spec: every combination of changes survives save -> load -> anatomy -> ONNX,
and prune -> finetune -> anatomy/export works from the command line."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnet_xray.dissect import AnatomyOptions, analyze
from resnet_xray.cli import main
from resnet_xray.deploy.fuse import FusedBatchNorm, fuse_model
from resnet_xray.image import Preprocessing
from resnet_xray.interface import (
    ClassLogits,
    ReplacedClassifier,
    class_logits,
    forward_features,
    forward_head,
    get_classifier,
    num_features,
    reset_classifier,
)
from resnet_xray.model import ModelMeta, build_model, load_model, save_checkpoint
from resnet_xray.pruning.spec import PrunedWidths
from resnet_xray.pruning.structured import count_macs, prune_to_macs
from resnet_xray.spec import changes_from_data
from resnet_xray.train.heads import Heads, MultiTaskResNet, attach_heads, multitask_spec

SIZE = 32
CLASSES = ["blue", "green", "red"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _busy_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    # Default BN statistics make folding a no-op; these make a wrong reload visible in the logits.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_pair():
    torch.manual_seed(0)
    model = _busy_bn(reset_classifier(build_model("resnet18"), len(CLASSES)))
    shrink = prune_to_macs(model, int(count_macs(model, SIZE) * 0.6), criterion="l1", input_size=SIZE)
    return model, shrink.model.eval()


def _build(pruned_pair, pruned: bool, heads: bool, fused: bool) -> tuple[nn.Module, ModelMeta]:
    plain, small = pruned_pair
    meta = ModelMeta("resnet18", "test", list(CLASSES), Preprocessing(resize=SIZE, crop=SIZE), True)
    meta = meta.with_change(ReplacedClassifier(len(CLASSES)))  # the fine-tuning step's new classifier
    model = copy.deepcopy(small if pruned else plain)
    if pruned:
        meta = meta.with_change(PrunedWidths.of(model, round=1))
    if heads:
        torch.manual_seed(1)
        model = attach_heads(model, multitask_spec(len(CLASSES), box_hidden=16)).eval()
        meta = meta.with_change(Heads.of(model))
    if fused:
        model = fuse_model(model)
        meta = meta.with_change(FusedBatchNorm.of(model))
    return model.eval(), meta


COMBOS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("pruned,heads,fused", COMBOS, ids=[f"pruned{int(p)}-heads{int(h)}-fused{int(f)}" for p, h, f in COMBOS])
def test_every_combination_round_trips_save_load_anatomy_onnx(pruned_pair, tmp_path, pruned, heads, fused):
    model, meta = _build(pruned_pair, pruned, heads, fused)
    path = save_checkpoint(tmp_path / "m.pt", model, meta)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert [c["kind"] for c in raw["changes"]] == [c.kind for c in meta.changes]
    assert changes_from_data(raw["changes"]) == meta.changes

    loaded, lmeta = load_model(None, path)
    assert lmeta.changes == meta.changes and lmeta.class_names == CLASSES
    assert isinstance(loaded, MultiTaskResNet) == heads
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), loaded(x)
    torch.testing.assert_close(class_logits(got), class_logits(want), rtol=0, atol=0)
    if heads:
        torch.testing.assert_close(got["box"], want["box"], rtol=0, atol=0)

    # anatomy measures the reloaded structure: the same MACs and parameters as the model that was saved
    a, b = analyze(loaded, "resnet18", AnatomyOptions(input_size=SIZE)), analyze(model, "resnet18", AnatomyOptions(input_size=SIZE))
    assert (a.totals.macs, a.totals.params) == (b.totals.macs, b.totals.params)
    if pruned:
        assert a.totals.macs < analyze(pruned_pair[0], "resnet18", AnatomyOptions(input_size=SIZE)).totals.macs

    # A second save of the loaded model writes the same list again (nothing lost on the way).
    again = save_checkpoint(tmp_path / "again.pt", loaded, lmeta)
    assert torch.load(again, weights_only=True)["changes"] == raw["changes"]

    import onnxruntime as ort

    from resnet_xray.deploy.onnx import ExportOptions, export_onnx

    onnx_path = export_onnx(loaded, tmp_path / "m.onnx", ExportOptions(exporter="torchscript", input_size=SIZE), lmeta)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    onnx_logits = np.concatenate([sess.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    torch.testing.assert_close(torch.from_numpy(onnx_logits), class_logits(want), rtol=1e-4, atol=1e-4)


def test_interface_is_uniform_over_plain_pruned_and_multitask(pruned_pair):
    plain, small = pruned_pair
    multi = attach_heads(copy.deepcopy(small), multitask_spec(3, box_hidden=8)).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for m in (plain, small, multi):
            feats = forward_features(m, x)
            assert feats.dim() == 4 and feats.shape[1] == num_features(m)
            torch.testing.assert_close(class_logits(forward_head(m, feats)), class_logits(m(x)))
            assert forward_head(m, feats, pre_logits=True).shape == (1, num_features(m))
            torch.testing.assert_close(ClassLogits(m)(x), class_logits(m(x)))
            assert get_classifier(m).out_features == 3
    assert num_features(small) < num_features(plain)
    reset_classifier(multi, 5)
    assert multi(x)["class"].shape == (1, 5) and multi.heads_spec["class"]["out"] == 5


def test_save_refuses_changes_that_do_not_rebuild_the_model(pruned_pair, tmp_path):
    _, small = pruned_pair
    meta = ModelMeta("resnet18", "t", list(CLASSES), Preprocessing(), True, changes=[ReplacedClassifier(3)])
    with pytest.raises(ValueError, match="do not rebuild it"):
        save_checkpoint(tmp_path / "x.pt", small, meta)  # the widths were not recorded
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(TypeError, match="meta.changes"):
        save_checkpoint(tmp_path / "x.pt", small, meta, pruned_spec={})
    # Hand-made metadata with no changes at all gets them read off the model.
    bare = ModelMeta("resnet18", "t", list(CLASSES), Preprocessing(), True)
    path = save_checkpoint(tmp_path / "y.pt", small, bare)
    assert [c.kind for c in load_model(None, path)[1].changes] == ["classifier", "pruned_widths"]


def test_format_1_checkpoints_still_load(pruned_pair, tmp_path):
    _, small = pruned_pair
    fused = fuse_model(small)
    legacy = {
        "format_version": 1, "arch": "resnet18", "class_names": CLASSES, "preprocessing": Preprocessing().to_dict(),
        "state_dict": fused.state_dict(), "pruned_spec": PrunedWidths.of(small).as_spec(),
        "fused_pairs": [list(p) for p in fused.fused_pairs], "options": {"epochs": 1},
    }
    torch.save(legacy, tmp_path / "v1.pt")
    model, meta = load_model(None, tmp_path / "v1.pt")
    assert [c.kind for c in meta.changes] == ["classifier", "pruned_widths", "fused_batchnorm"]
    assert meta.options == {"epochs": 1}
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused(x))


def test_format_1_multitask_checkpoint_loads_with_its_old_key_names(tmp_path):
    torch.manual_seed(0)
    model = attach_heads(build_model("resnet18", 3), multitask_spec(3, box_hidden=8)).eval()
    old = {k.replace("heads.class_.", "heads.class."): v for k, v in model.state_dict().items()}
    assert "heads.class.weight" in old  # how files were written before heads were fx-traceable
    torch.save({"format_version": 1, "arch": "resnet18", "class_names": CLASSES, "state_dict": old,
                "heads": model.heads_spec}, tmp_path / "mt1.pt")
    loaded, meta = load_model(None, tmp_path / "mt1.pt")
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["class"], model(x)["class"])
    assert analyze(loaded, "resnet18", AnatomyOptions(input_size=SIZE)).totals.macs > 0  # traceable now


def _folder(root, classes=CLASSES, per_class=6):
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
            px[..., k] += 150
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_prune_then_finetune_then_anatomy_fuse_and_export(pruned_pair, tmp_path, capsys):
    """The chain that used to fail with '101 shape mismatches': the fine-tuned checkpoints keep the widths."""
    _, small = pruned_pair
    data = _folder(tmp_path / "data")
    meta = ModelMeta("resnet18", "test", list(CLASSES), Preprocessing(resize=SIZE, crop=SIZE), True)
    pruned = save_checkpoint(tmp_path / "pruned.pt", small, meta.with_change(ReplacedClassifier(3)).with_change(PrunedWidths.of(small)))
    out = tmp_path / "ft"
    code = main(["finetune", str(data), "--weights", str(pruned), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--image-size", str(SIZE), "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("best.pt", "last.pt"):
        kinds = [c["kind"] for c in torch.load(out / name, weights_only=True)["changes"]]
        assert kinds == ["classifier", "pruned_widths"], name
    capsys.readouterr()
    assert main(["anatomy", "--weights", str(out), "--input-size", str(SIZE), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["macs"] == count_macs(small, SIZE)
    assert main(["fuse", "--weights", str(out), "-o", str(tmp_path / "fused.pt")]) == 0
    fused, fmeta = load_model(None, tmp_path / "fused.pt")
    assert [c.kind for c in fmeta.changes] == ["classifier", "pruned_widths", "fused_batchnorm"]
    capsys.readouterr()
    assert main(["export", "--weights", str(tmp_path / "fused.pt"), "--exporter", "torchscript", "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").exists()
    # Fine-tuning the pruned checkpoint on other classes records the new classifier after the widths.
    data2 = _folder(tmp_path / "data2", classes=("a", "b"))
    assert main(["finetune", str(data2), "--weights", str(out / "best.pt"), "--epochs", "1", "--batch-size", "4",
                 "--workers", "0", "--image-size", str(SIZE), "--no-progress", "--out", str(tmp_path / "ft2")]) == 0
    m2, meta2 = load_model(None, tmp_path / "ft2")
    assert [c.kind for c in meta2.changes] == ["classifier", "pruned_widths", "classifier"]
    assert m2.fc.out_features == 2 and m2.fc.in_features == small.fc.in_features
