"""--optimizer muon: Muon on the hidden convs, AdamW on the rest (train/muon.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.errors import XrayError
from resnet_xray.model import build_model
from resnet_xray.train.data import make_loaders
from resnet_xray.train.finetune import fit
from resnet_xray.train.optim import make_optimizer, muon_params
from resnet_xray.train.recipe import FinetuneOptions
from resnet_xray.train.muon import NS_COEFFICIENTS, Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24)])
def test_muon_matches_torch_muon_on_matrices(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    ref_w, our_w = w.clone().requires_grad_(), w.clone().requires_grad_()
    ref = torch.optim.Muon([ref_w], lr=0.02, weight_decay=0.1)
    ours = Muon([{"params": [our_w], "muon": True}], lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    for _ in range(4):
        g = torch.randn(*shape)
        ref_w.grad, our_w.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.equal(ref_w, our_w)  # same arithmetic: bit for bit
    assert not torch.equal(our_w, w)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    ps = [torch.randn(5, 3), torch.randn(7)]
    ref_p = [p.clone().requires_grad_() for p in ps]
    our_p = [p.clone().requires_grad_() for p in ps]
    ref = torch.optim.AdamW([{"params": ref_p[:1], "weight_decay": 0.05}, {"params": ref_p[1:], "weight_decay": 0.0}], lr=1e-3)
    ours = Muon([{"params": our_p[:1], "weight_decay": 0.05}, {"params": our_p[1:], "weight_decay": 0.0}], lr=1e-3)
    for _ in range(5):
        for a, b in zip(ref_p, our_p):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ref.step()
        ours.step()
    for a, b in zip(ref_p, our_p):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_float32_iteration_orthogonalises():
    torch.manual_seed(0)
    g = torch.randn(32, 144)
    o = orthogonalize(g, steps=5)
    s = torch.linalg.svdvals(o)
    # The quintic trades exactness for speed: singular values land near 1 (about 0.7 to 1.2), not at 1.
    assert o.dtype == torch.float32 and s.min() > 0.5 and s.max() < 1.5
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 2  # the input was not already orthogonal


def _plain_newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = NS_COEFFICIENTS
    x = g.T if g.size(0) > g.size(1) else g
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.size(0) > g.size(1) else x


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (40, 100), (48, 64)])
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_gram_form_is_the_same_polynomial(shape, steps):
    """Wide float matrices take the Gram form: in float64 it equals the plain iteration to rounding,
    and in float32 it stays within 1e-4 of float64: over 10x closer than torch.optim.Muon's bfloat16 iteration."""
    torch.manual_seed(0)
    g = torch.randn(*shape, dtype=torch.float64) @ torch.diag(torch.logspace(-3, 0, shape[1], dtype=torch.float64))
    ref = _plain_newton_schulz(g, steps)
    torch.testing.assert_close(orthogonalize(g, steps, torch.float64), ref, rtol=0, atol=1e-12)
    err = lambda y: ((y.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    ours, bf16 = err(orthogonalize(g.float(), steps)), err(_plain_newton_schulz(g.bfloat16(), steps))
    assert ours < 1e-4 and 10 * ours < bf16


def test_conv_kernels_update_in_their_own_layout():
    """A channels-last kernel is updated as an out x (in*kh*kw) matrix, the same numbers as a contiguous one."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    g = torch.randn(8, 4, 3, 3)
    got = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        p = nn.Parameter(w.clone().to(memory_format=fmt))
        p.grad = g.clone().to(memory_format=fmt)
        Muon([{"params": [p], "muon": True}], lr=0.1, ns_dtype=torch.float32).step()
        got.append(p.detach().contiguous())
    torch.testing.assert_close(got[1], got[0], rtol=1e-5, atol=1e-6)
    assert (got[0] - w).abs().max() > 1e-3


def test_muon_group_refuses_vectors():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "muon": True}])


def test_make_optimizer_gives_muon_the_stage_convs_only():
    model = build_model("resnet18", num_classes=3)
    opts = FinetuneOptions(arch="resnet18", weights="random", optimizer="muon", muon_stages="layer1,layer2", muon_lr=0.03)
    opt = make_optimizer(model, opts, 1e-3)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    convs = {id(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(("layer1.", "layer2."))}
    assert muon == convs and len(convs) == 9  # layer1: 2 blocks x 2 convs; layer2: the same + its downsample
    assert {g["lr"] for g in opt.param_groups if g["muon"]} == {0.03}
    assert {g["lr"] for g in opt.param_groups if not g["muon"]} == {1e-3}
    # the stem, fc, norms and biases stay with AdamW; norms and biases without decay
    other = {id(p): g["weight_decay"] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert id(model.conv1.weight) in other and id(model.fc.weight) in other and other[id(model.bn1.weight)] == 0.0
    assert {id(p) for p in muon_params(model, "all")} >= convs


def test_bad_muon_options_are_one_line_errors():
    with pytest.raises(XrayError, match="muon_stages|muon-stages"):
        FinetuneOptions(optimizer="muon", muon_stages="layer5")
    with pytest.raises(XrayError, match="ns_steps|ns-steps"):
        FinetuneOptions(optimizer="muon", ns_steps=0)


@pytest.mark.slow
def test_muon_run_resumes_to_the_same_weights(tmp_path):
    root = tmp_path / "data"
    make_reference_dataset(root, ReferenceOptions(classes=3, per_class=6, val_per_class=3, size=32, seed=2))
    opts = FinetuneOptions(arch="resnet18", weights="random", epochs=2, batch_size=4, workers=0, seed=0, progress=False,
                           lr=1e-3, warmup_epochs=0.5, optimizer="muon", muon_stages="all", ns_steps=3)

    def model():
        torch.manual_seed(0)
        return build_model("resnet18", num_classes=3)

    def data():
        return make_loaders(root, batch_size=4, workers=0, seed=0)

    straight = model()
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    fit(straight, data(), opts, out_dir=tmp_path / "a")
    fit(model(), data(), dataclasses.replace(opts, stop_after_steps=3), out_dir=tmp_path / "b")
    resumed = build_model("resnet18", num_classes=3)
    fit(resumed, data(), opts, out_dir=tmp_path / "b", resume=True)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert (straight.layer1[0].conv1.weight - start["layer1.0.conv1.weight"]).abs().max() > 1e-3


# --- --stem-init whiten (train/stem.py) ---


def test_whitened_stem_decorrelates_patches():
    from resnet_xray.train.stem import whiten_stem

    torch.manual_seed(0)
    # Smooth, channel-correlated images: neighbouring pixels and colours move together, as in photos.
    base = nn.functional.avg_pool2d(torch.randn(64, 1, 70, 70), 5, stride=1)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn_like(base), base.roll(1, dims=3)], dim=1)
    conv = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False).requires_grad_(False)
    evals = whiten_stem(conv, images, eps=1e-6)
    assert torch.all(evals[:-1] >= evals[1:])  # largest variance first
    out = nn.functional.conv2d(images, conv.weight[:8], stride=4).permute(1, 0, 2, 3).reshape(8, -1)
    cov = torch.cov(out)
    torch.testing.assert_close(cov, torch.eye(8), atol=0.05, rtol=0)  # unit variance, uncorrelated
    torch.testing.assert_close(conv.weight[8:], -conv.weight[:8])  # each filter and its negative
    before = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False).requires_grad_(False)
    out0 = nn.functional.conv2d(images, before.weight[:8], stride=4).permute(1, 0, 2, 3).reshape(8, -1)
    assert (torch.corrcoef(out0) - torch.eye(8)).abs().max() > 0.2  # the default init's outputs correlate


@pytest.mark.slow
def test_finetune_whitens_the_stem_of_random_weights_only(tmp_path):
    from resnet_xray.train.job import finetune

    root = tmp_path / "data"
    make_reference_dataset(root, ReferenceOptions(classes=3, per_class=6, val_per_class=3, size=32, seed=2))
    kw = dict(arch="resnet18", epochs=1, batch_size=4, workers=0, seed=0, progress=False, stop_after_steps=1, lr=1e-9,
              optimizer="adamw", weight_decay=0.0)
    finetune(root, FinetuneOptions(weights="random", stem_init="whiten", **kw), tmp_path / "w")
    finetune(root, FinetuneOptions(weights="random", stem_init="default", **kw), tmp_path / "d")
    w = torch.load(tmp_path / "w" / "last.pt", weights_only=True)["state_dict"]["conv1.weight"]
    d = torch.load(tmp_path / "d" / "last.pt", weights_only=True)["state_dict"]["conv1.weight"]
    torch.testing.assert_close(w[32:], -w[:32], atol=1e-6, rtol=1e-4)  # lr 1e-9: one step leaves the init
    assert not torch.allclose(d[32:], -d[:32], atol=1e-3)
    assert w.flatten(1).norm(dim=1)[:32].std() > 0  # scaled per direction, not a copy of the default


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_finetune_steps_fused_and_a_resume_stays_fused(name):
    """finetune's SGD/AdamW step with torch's fused kernel, the same numbers as the foreach path, and a
    checkpoint saved by a foreach optimizer (before fusing) resumes on the fused path with its state."""
    from resnet_xray.train.finetune import load_optimizer_state

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    ours = make_optimizer(model, FinetuneOptions(optimizer=name), 1e-3)
    assert all(g["fused"] for g in ours.param_groups)
    old = type(ours)([dict(g, fused=None) for g in ours.param_groups])  # what a pre-fusing run saved
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    old.step()
    foreach_result = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    ours.step()
    for p, want in zip(model.parameters(), foreach_result):
        torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
    load_optimizer_state(ours, old.state_dict())
    assert all(g["fused"] for g in ours.param_groups)
    key = "momentum_buffer" if name == "sgd" else "exp_avg"
    p0 = next(model.parameters())
    torch.testing.assert_close(ours.state[p0][key], old.state[p0][key])
