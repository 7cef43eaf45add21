"""Structured pruning: MACs on target, channels really gone, residual coupling kept, export and reload exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model, load_model, save_checkpoint
from resnet_xray.pruning.analyze import analyze_importance, AnalyzeOptions
from resnet_xray.interface import ReplacedClassifier
from resnet_xray.pruning.spec import PrunedWidths, apply_pruned_spec, pruned_spec
from resnet_xray.pruning.structured import count_macs, prune_channels, prune_to_macs

SIZE = 32  # input side for MACs and forward passes: small enough for a 2-core CPU


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def resnet18_pair():
    """A random resnet18 (10 classes) and a copy pruned to about half its MACs."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    _randomize_bn(model)
    result = prune_to_macs(model, count_macs(model, SIZE) // 2, criterion="l1", input_size=SIZE, global_pruning=True)
    return model, result


def _randomize_bn(model: nn.Module) -> None:
    # Fresh BatchNorms are identities; random statistics make the outputs depend on every channel.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


@pytest.mark.slow
def test_pruned_model_has_requested_macs_and_fewer_channels(resnet18_pair):
    model, result = resnet18_pair
    base = count_macs(model, SIZE)
    assert result.macs == count_macs(result.model, SIZE)
    # The search stops within 1% of the MACs unless round_to's steps forbid it; 3% covers that.
    assert abs(result.macs / base - 0.5) < 0.03, result.trials
    widths = [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths) < sum(before)
    assert all(w % 8 == 0 for w in widths)  # round_to=8
    assert result.model.fc.out_features == 10  # classifier outputs never pruned
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    out = result.model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.slow
def test_pruned_model_exports_to_onnx_with_matching_outputs(resnet18_pair, tmp_path):
    from resnet_xray.deploy.onnx import ExportOptions, export_onnx, ort_session

    _, result = resnet18_pair
    path = export_onnx(result.model, tmp_path / "pruned.onnx", ExportOptions(input_size=SIZE, exporter="torchscript"))
    sess = ort_session(path)
    x = torch.randn(1, 3, SIZE, SIZE)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        want = result.model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pruned_checkpoint_reloads_to_identical_outputs(resnet18_pair, tmp_path):
    _, result = resnet18_pair
    meta = ModelMeta("resnet18", "test", [f"c{i}" for i in range(10)], Preprocessing(resize=SIZE, crop=SIZE), True)
    meta = meta.with_change(ReplacedClassifier(10)).with_change(PrunedWidths.of(result.model))
    path = save_checkpoint(tmp_path / "pruned.pt", result.model, meta, options={"note": "test"})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no code objects inside
    assert [c["kind"] for c in raw["changes"]] == ["classifier", "pruned_widths"]
    assert raw["changes"][1]["layers"]["fc"]["in_features"] == result.model.fc.in_features
    loaded, lmeta = load_model(None, path)
    assert lmeta.arch == "resnet18" and lmeta.changes == meta.changes and lmeta.options == {"note": "test"}
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model.eval()(x), atol=0, rtol=0)
    assert count_macs(loaded, SIZE) == result.macs


def test_apply_pruned_spec_rejects_widths_that_do_not_chain():
    model = build_model("resnet18", num_classes=4)
    spec = pruned_spec(model)
    spec["layers"]["layer1.0.conv1"]["out_channels"] = 40  # bn1 still says 64
    with pytest.raises(XrayError, match="do not fit together"):
        apply_pruned_spec(build_model("resnet18", num_classes=4), spec)
    spec = pruned_spec(model)
    spec["layers"]["layer9.conv"] = {"kind": "conv", "in_channels": 3, "out_channels": 8}
    with pytest.raises(XrayError, match="layer9.conv"):
        apply_pruned_spec(build_model("resnet18", num_classes=4), spec)
    spec = pruned_spec(model)
    spec["layers"]["fc"]["out_features"] = 3
    with pytest.raises(XrayError, match="outputs"):
        apply_pruned_spec(build_model("resnet18", num_classes=4), spec)


def _small_bottleneck_resnet() -> ResNet:
    # ResNet-50's block design (projection shortcuts, 4x expansion) at a fraction of its width and depth.
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [2, 2, 1, 1], num_classes=7, width_per_group=32).eval()
    _randomize_bn(model)
    return model


@pytest.mark.parametrize("global_pruning", [False, True])
def test_residual_coupled_channels_stay_consistent(global_pruning):
    model = _small_bottleneck_resnet()
    pruned = prune_channels(model, "l2", 0.4, global_pruning=global_pruning, round_to=8)
    stages = [pruned.layer1, pruned.layer2, pruned.layer3, pruned.layer4]
    width_in = pruned.bn1.num_features
    assert pruned.conv1.out_channels == width_in
    assert width_in < 64
    for stage in stages:
        for block in stage:
            assert block.conv1.in_channels == width_in
            assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels
            assert block.conv2.out_channels == block.bn2.num_features == block.conv3.in_channels
            out = block.conv3.out_channels
            assert block.bn3.num_features == out
            if block.downsample is not None:
                assert block.downsample[0].in_channels == width_in
                assert block.downsample[0].out_channels == block.downsample[1].num_features == out
            else:
                assert out == width_in  # identity shortcut: the add forces equal widths
            width_in = out
        original = getattr(model, f"layer{stages.index(stage) + 1}")[0].conv3.out_channels
        assert out < original  # every stage's residual width thinned
    assert pruned.fc.in_features == width_in and pruned.fc.out_features == 7
    x = torch.randn(2, 3, SIZE, SIZE)
    assert pruned(x).shape == (2, 7)
    # Pruning copies: the original is untouched and still runs.
    assert model.layer1[0].conv3.out_channels == 256 and model(x).shape == (2, 7)


def test_removed_channels_are_the_low_importance_ones():
    """Per-group ranking marks exactly the lowest-scored quarter of each group's channels."""
    model = _small_bottleneck_resnet()
    opts = AnalyzeOptions(importance="l1", ratio=0.25, round_to=1)
    groups = analyze_importance(model, opts)
    for g in groups:
        assert len(g.scores) == g.channels
        assert len(g.dropped) == g.channels - int(g.channels * 0.75)
        worst_kept = min(g.scores[c] for c in range(g.channels) if c not in g.dropped)
        assert max(g.scores[c] for c in g.dropped) <= worst_kept
    dropped = sum(len(g.dropped) for g in groups)
    total = sum(g.channels for g in groups)
    assert 0.2 <= dropped / total <= 0.3
    # The root conv of an inner group is tied to its BatchNorm and the next conv's inputs.
    inner = next(g for g in groups if g.name == "layer1.0.conv1")
    assert inner.members[:3] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]
    assert model.layer1[0].conv1.out_channels == 32  # analysis prunes nothing


def test_prune_to_macs_leaves_a_model_already_below_target_alone():
    model = build_model("resnet18", num_classes=3).eval()
    base = count_macs(model, SIZE)
    result = prune_to_macs(model, base + 1, criterion="l1", input_size=SIZE)
    assert result.macs == base and result.trials == []
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(result.model(x), copy.deepcopy(model)(x))
