"""Conv-BN folding: against torch's own fuse_conv_bn_eval, against the unfused model, and its checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import Bottleneck, ResNet

from resnet_xray.deploy.fuse import FusedBatchNorm, conv_bn_pairs, count_batchnorm, fold_conv_bn, fuse_model, fusion_report
from resnet_xray.interface import ReplacedClassifier
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model, build_model_on_meta, load_model, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run 20x slower."""
    from resnet_xray.deploy.bench import torch_threads

    with torch_threads(1):
        yield


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters; with the defaults folding is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def odd_width_resnet(num_classes: int = 3) -> nn.Module:
    """A ResNet-like model with non-standard widths and class count, like a pruned or fine-tuned one."""
    torch.manual_seed(1)
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes, width_per_group=24).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_fold_matches_torch_fuse_conv_bn_eval(bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=bias).eval()
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(10)))[0]
    ours = fold_conv_bn(conv, bn)
    ref = fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(ours(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    # the folding really changed the weights, so the comparisons above could fail
    assert (ours.weight - conv.weight).abs().max() > 0.1


def test_fused_resnet18_matches_unfused_with_random_bn() -> None:
    torch.manual_seed(0)
    model = randomise_bn(build_model("resnet18", num_classes=10))
    fused = fuse_model(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert count_batchnorm(fused) == 0
    assert count_batchnorm(model) == 20  # the original is untouched
    assert len(fused.fused_pairs) == 20
    # same structure otherwise: every module name survives, BN slots hold Identity
    assert [n for n, _ in model.named_modules()] == [n for n, _ in fused.named_modules()]
    assert isinstance(fused.layer1[0].bn1, nn.Identity) and fused.layer1[0].conv1.bias is not None
    rep = fusion_report(model, fused, x)
    assert rep["top1_agreement"] == 1.0 and rep["max_abs_diff"] < 1e-4 and rep["folded"] == 20


def test_resnet50_has_53_foldable_pairs_on_meta() -> None:
    model = build_model_on_meta("resnet50")
    pairs = conv_bn_pairs(model)
    assert len(pairs) == 53
    assert ("layer1.0.downsample.0", "layer1.0.downsample.1") in pairs
    fused = fuse_model(model)
    assert count_batchnorm(fused) == 0
    assert sum(isinstance(m, nn.Conv2d) and m.bias is not None for m in fused.modules()) == 53


def test_odd_widths_and_class_count_fuse() -> None:
    model = randomise_bn(odd_width_resnet(), seed=3)
    fused = fuse_model(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    assert fused(x).shape == (2, 3)


def test_fused_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_bn(build_model("resnet18", num_classes=4))
    meta = ModelMeta("resnet18", "test", ["a", "b", "c", "d"], Preprocessing(resize=72, crop=64), True)
    fused = fuse_model(model)
    meta = meta.with_change(ReplacedClassifier(4)).with_change(FusedBatchNorm.of(fused))
    path = save_checkpoint(tmp_path / "fused.pt", fused, meta)
    loaded, lmeta = load_model(None, path)
    assert count_batchnorm(loaded) == 0 and lmeta.class_names == ["a", "b", "c", "d"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fuse_cli_prints_the_check(tmp_path, capsys) -> None:
    from resnet_xray.cli import main

    torch.manual_seed(0)
    model = randomise_bn(build_model("resnet18", num_classes=5))
    meta = ModelMeta("resnet18", "test", [str(i) for i in range(5)], Preprocessing(resize=72, crop=64), True)
    src = save_checkpoint(tmp_path / "m.pt", model, meta)
    assert main(["fuse", "--weights", str(src), "-o", str(tmp_path / "f.pt")]) == 0
    out = capsys.readouterr().out
    assert "folded 20 BatchNorm" in out and "top-1 agreement 100.0%" in out
    assert (tmp_path / "f.pt").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["fuse", "--weights", str(src), "-o", str(blocker / "f.pt")]) == 2
