"""Gradient flow: the identity/residual split adds up to autograd's gradient, plain-N is ResNet-N minus its adds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from torch.testing import assert_close

from resnet_xray.model import build_model
from resnet_xray.tracing.gradflow import (
    BlockProbe,
    GradFlowOptions,
    GradFlowResult,
    NetGrad,
    measure_gradflow,
    plain_network,
)
from resnet_xray.units import num


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_model("resnet18").eval()


def _batch(n=4, size=64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g)


def _close_scaled(a: torch.Tensor, b: torch.Tensor) -> None:
    # Gradients can be tiny: the tolerance scales with the gradient, so the check cannot pass by default.
    scale = b.abs().max().item()
    assert scale > 0
    assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("train_mode", [True, False], ids=["batch-stats", "running-stats"])
def test_identity_plus_residual_equals_autograd_every_block(resnet18, train_mode):
    model = copy.deepcopy(resnet18).train(train_mode)
    x, y = _batch()
    with BlockProbe(model) as probe:
        loss = F.cross_entropy(model(x.requires_grad_(True)), y)
        recs = list(probe.records.values())
        assert len(recs) == 8
        # Autograd's own gradients at every block input and every add output, in one backward pass.
        grads = torch.autograd.grad(loss, [r.x for r in recs] + [r.s for r in recs], retain_graph=True)
        for i, r in enumerate(recs):
            total, g = grads[i], grads[len(recs) + i]
            (residual,) = torch.autograd.grad(r.f, r.x, g, retain_graph=True)
            if r.shortcut is r.x:
                shortcut = g  # identity: the add's output gradient passes unchanged
            else:
                (shortcut,) = torch.autograd.grad(r.shortcut, r.x, g, retain_graph=True)
            _close_scaled(shortcut + residual, total)
            # Neither term alone is the whole gradient: both paths carry some of it.
            assert (shortcut - total).norm() > 1e-3 * total.norm()
            assert (residual - total).norm() > 1e-3 * total.norm()


def test_probe_keeps_torchvision_forward_and_gradients(resnet18):
    model = copy.deepcopy(resnet18).train()
    x, y = _batch()
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    with BlockProbe(model):
        out = model(x)
        F.cross_entropy(out, y).backward()
    assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    _close_scaled(model.conv1.weight.grad, ref.conv1.weight.grad)
    assert "forward" not in model.layer1[0].__dict__  # the probe undid itself


def test_plain_network_removes_every_add_and_restores(resnet18):
    model = copy.deepcopy(resnet18)
    x, _ = _batch(2, 32)
    with torch.no_grad():
        before = model(x)
        with plain_network(model):
            plain = model(x)
            blk = model.layer1[1]
            h = torch.randn(2, 64, 8, 8)
            expected = F.relu(blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h))))))
            assert_close(blk(h), expected)  # y = relu(F(x)): no shortcut
        after = model(x)
    assert not torch.allclose(plain, before, rtol=1e-3, atol=1e-3)
    assert_close(after, before, rtol=0, atol=0)


def test_measure_gradflow_resnet18_both_regimes():
    res = measure_gradflow(GradFlowOptions(arch="resnet18", batch_size=4, input_size=32))
    for regime in ("batch", "running"):
        r, p = res.init[regime]["resnet"], res.init[regime]["plain"]
        assert [b["name"] for b in r.boundaries] == ["image", "stem->layer1", "layer1->layer2", "layer2->layer3", "layer3->layer4", "layer4->pool"]
        assert [b.shortcut for b in r.blocks] == ["identity", "identity", "projection", "identity"] * 1 + ["projection", "identity"] * 2
        assert all(b.rel_error < 1e-5 for b in r.blocks)
        assert p.blocks == []
        # plain-18 has no projection convs; its main-path convs match ResNet's one for one.
        assert not any("downsample" in c["name"] for c in p.convs)
        assert [c["name"] for c in p.convs] == [c["name"] for c in r.convs if "downsample" not in c["name"]]
        # The explanation's direction follows the measured ratio.
        ratio = p.rms("stem->layer1") / r.rms("stem->layer1")
        text = res.explanation(regime)
        assert ("larger gradient at the input side" in text) == (ratio > 1)
        assert num(r.rms("stem->layer1")) in text and num(p.rms("stem->layer1")) in text  # as written for people
    d = res.to_dict()
    assert set(d["init"]) == {"batch", "running"} and "explanations" in d


def _fake(rms_in: float, rms_out: float, network: str) -> NetGrad:
    bounds = [{"name": n, "shape": [1], "rms": v} for n, v in (("image", rms_in), ("stem->layer1", rms_in), ("layer4->pool", rms_out))]
    return NetGrad(network, "batch", 1.0, bounds, [{"name": "conv1", "norm": rms_in, "rms": rms_in}])


def test_explanation_is_derived_from_numbers_not_presumed():
    opts = GradFlowOptions(arch="resnet50", regimes=("batch",))
    grows = GradFlowResult(opts, {"batch": {"resnet": _fake(1.0, 1.0, "resnet"), "plain": _fake(30.0, 1.0, "plain")}})
    shrinks = GradFlowResult(opts, {"batch": {"resnet": _fake(1.0, 1.0, "resnet"), "plain": _fake(0.0025, 1.0, "plain")}})
    a, b = grows.explanation("batch"), shrinks.explanation("batch")
    assert "plain's is 30x resnet50's" in a and "grows 30x" in a and "larger gradient" in a
    assert "plain's is 1/400 of resnet50's" in b and "shrinks 400x" in b and "smaller gradient" in b


@pytest.mark.slow
def test_resnet50_decomposition_small_input():
    res = measure_gradflow(GradFlowOptions(arch="resnet50", batch_size=2, input_size=32, regimes=("running",)))
    blocks = res.init["running"]["resnet"].blocks
    assert len(blocks) == 16 and sum(b.shortcut == "identity" for b in blocks) == 12
    assert all(b.rel_error < 1e-5 for b in blocks)


@pytest.mark.slow
def test_steps_repeat_after_training():
    res = measure_gradflow(GradFlowOptions(arch="resnet18", batch_size=4, input_size=32, steps=2, lr=0.05, regimes=("batch",)))
    assert res.trained is not None and len(res.train_losses["resnet"]) == 2 and len(res.train_losses["plain"]) == 2
    # Training on one batch lowers its loss, and the second measurement sees the trained weights.
    assert res.train_losses["resnet"][-1] < res.train_losses["resnet"][0]
    assert res.trained["batch"]["resnet"].loss < res.init["batch"]["resnet"].loss
    assert "after 2 SGD steps" in res.explanation("batch", "trained")


def test_data_folder_batch_is_labelled_by_subfolder(tmp_path):
    from PIL import Image

    from resnet_xray.errors import XrayError
    from resnet_xray.image import Preprocessing
    from resnet_xray.tracing.gradflow import folder_batch

    for c, colour in (("cats", (200, 40, 40)), ("dogs", (40, 40, 200))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"no image")  # skipped, as everywhere else
    opts = GradFlowOptions(arch="resnet18", batch_size=4, input_size=32, data=str(tmp_path))
    x, y = folder_batch(opts, Preprocessing(resize=32, crop=32))
    assert x.shape == (4, 3, 32, 32)
    assert sorted(y.tolist()) == [0, 0, 1, 1]  # round-robin over the two class folders
    # Red images are labelled 0 (cats), blue ones 1 (dogs).
    red = x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))
    assert red.tolist() == (y == 0).tolist()
    with pytest.raises(XrayError):
        folder_batch(GradFlowOptions(data=str(tmp_path / "missing")), Preprocessing())
