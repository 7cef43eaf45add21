"""The trace against the model's own forward, and block residual numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from resnet_xray.dissect.layers import layer_table
from resnet_xray.model import build_model
from resnet_xray.tracing import TraceOptions, trace_model

from .trace_reference import reference_trace, trace_with


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_model("resnet18").eval()


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.randn(1, 3, 64, 64)


def test_traced_logits_equal_plain_forward(resnet18, image):
    with torch.no_grad():
        expected = resnet18(image)
    tr = trace_model(resnet18, image)
    assert_close(tr.logits, expected, rtol=0, atol=0)


def test_traced_logits_equal_forward_resnet50_batch():
    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    tr = trace_model(model, x)
    assert_close(tr.logits, expected, rtol=0, atol=0)
    assert [b.name for b in tr.blocks] == [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for i in range(n)]
    assert [b.projection for b in tr.blocks if b.name.endswith(".0")] == [True] * 4
    assert not any(b.projection for b in tr.blocks if not b.name.endswith(".0"))
    assert tr.blocks[0].residual_from == "layer1.0.bn3" and tr.blocks[0].shortcut_from == "layer1.0.downsample.1"
    # The bottleneck's three ReLUs appear separately, as in the anatomy table.
    names = [r.name for r in tr.layers]
    assert names == [r.name for r in layer_table(model, 32)]
    assert {"layer1.0.relu", "layer1.0.relu_1", "layer1.0.relu_2", "layer1.0.add"} <= set(names)
    assert tr.layer("layer4.2.relu_2").shape == (2, 2048, 1, 1)


def test_layer_stats_match_torch(resnet18, image):
    keep = {"layer1.0.bn2", "layer1.0.relu_1", "fc", "maxpool"}
    tr = trace_model(resnet18, image, TraceOptions(keep_maps=keep))
    assert set(tr.maps) == keep  # only what was asked for is held
    for name in keep:
        m, s = tr.maps[name].double(), tr.layer(name)
        assert s.shape == tuple(m.shape)
        assert_close(s.mean, m.mean().item(), rtol=1e-5, atol=1e-6)
        assert_close(s.std, m.std(correction=0).item(), rtol=1e-4, atol=1e-6)
        assert s.min == pytest.approx(m.min().item()) and s.max == pytest.approx(m.max().item())
        if s.type in ("relu", "maxpool"):
            assert s.zero_frac == pytest.approx((m == 0).double().mean().item())
        else:
            assert s.zero_frac is None  # zeros are only counted where they mean "switched off"
        assert_close(s.l2, torch.linalg.vector_norm(m).item(), rtol=1e-5, atol=0)
    assert 0.2 < tr.layer("layer1.0.relu_1").zero_frac < 0.8  # a ReLU switches units off


def test_block_numbers_computed_by_hand(resnet18, image):
    m = resnet18
    tr = trace_model(m, image, TraceOptions(keep_maps={"layer1.0.bn2"}))
    with torch.no_grad():
        x = m.maxpool(m.relu(m.bn1(m.conv1(image))))
        b = m.layer1[0]
        f = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
        y = torch.relu(f + x)
    # The kept map is F(x) as it was before torchvision's in-place add.
    assert_close(tr.maps["layer1.0.bn2"], f)
    blk = tr.blocks[0]
    assert blk.name == "layer1.0" and not blk.projection
    fn, xn = f.norm().item(), x.norm().item()
    assert_close(blk.residual_norm, fn, rtol=1e-5, atol=0)
    assert_close(blk.shortcut_norm, xn, rtol=1e-5, atol=0)
    assert_close(blk.ratio, fn / xn, rtol=1e-5, atol=0)
    assert_close(blk.cosine, (f * x).sum().item() / (fn * xn), rtol=1e-4, atol=1e-6)
    assert_close(blk.active_frac, (y > 0).double().mean().item(), rtol=0, atol=1e-12)
    assert_close(blk.output_norm, (f + x).norm().item(), rtol=1e-5, atol=0)


def test_constant_residual_block_by_hand(image):
    """With bn2's scale 0 and shift 0.5, F(x) is 0.5 everywhere: every number follows on paper."""
    torch.manual_seed(0)
    m = build_model("resnet18").eval()
    with torch.no_grad():
        m.layer2[1].bn2.weight.zero_()
        m.layer2[1].bn2.bias.fill_(0.5)
        m.layer3[1].bn2.weight.zero_()  # zero-init residual: the block passes its input through
        m.layer3[1].bn2.bias.zero_()
    tr = trace_model(m, image, TraceOptions(keep_maps={"layer2.0.relu_1", "layer3.0.relu_1"}))
    x = tr.maps["layer2.0.relu_1"].double()  # the input of layer2.1
    n = x.numel()
    blk = next(b for b in tr.blocks if b.name == "layer2.1")
    assert blk.shortcut_from == "layer2.1 input (layer2.0.relu_1)"
    assert_close(blk.residual_norm, 0.5 * math.sqrt(n), rtol=1e-6, atol=0)
    assert_close(blk.shortcut_norm, x.norm().item(), rtol=1e-5, atol=0)
    assert_close(blk.cosine, x.sum().item() / (math.sqrt(n) * x.norm().item()), rtol=1e-5, atol=0)
    assert blk.active_frac == 1.0  # x >= 0 after a ReLU, so x + 0.5 > 0 everywhere
    zero = next(b for b in tr.blocks if b.name == "layer3.1")
    assert zero.residual_norm == 0.0 and zero.ratio == 0.0 and math.isnan(zero.cosine)
    assert_close(zero.output_norm, zero.shortcut_norm, rtol=1e-6, atol=0)


def test_chw_input_and_dict(resnet18, image):
    tr = trace_model(resnet18, image[0])
    d = tr.to_dict()
    assert set(d) == {"layers", "blocks"} and len(d["blocks"]) == 8
    assert {"name", "residual_norm", "shortcut_norm", "ratio", "cosine", "active_frac"} <= set(d["blocks"][0])
    assert {"name", "type", "shape", "mean", "std", "min", "max", "zero_frac", "l2"} <= set(d["layers"][0])
    assert d["layers"][-1]["name"] == "fc" and d["layers"][-1]["shape"] == [1, 1000]


def test_walkthrough_stage1_block_resnet50():
    from resnet_xray.tracing import walkthrough

    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.randn(1, 3, 64, 64)
    wt = walkthrough(model, x)
    names = [s.name.split(".", 2)[2] for s in wt.steps]
    assert names == ["conv1", "bn1", "relu", "conv2", "bn2", "relu_1", "conv3", "bn3", "downsample.0", "downsample.1", "add", "relu_2"]
    steps = {n: s for n, s in zip(names, wt.steps)}
    assert steps["conv1"].in_shape == (1, 64, 16, 16) and steps["conv1"].out_shape == (1, 64, 16, 16)
    assert steps["conv3"].out_shape == (1, 256, 16, 16) and steps["downsample.0"].params == 64 * 256
    assert steps["conv2"].macs == 16 * 16 * 64 * 64 * 9
    assert (wt.in_channels, wt.out_channels, wt.stride, wt.shortcut) == (64, 256, 1, "projection")
    assert wt.later_reduce == (256, 64)
    assert wt.shortcut_params == 64 * 256 + 2 * 256
    # The walkthrough's numbers agree with the one-pass trace of the same input.
    tr = trace_model(model, x)
    blk = tr.blocks[0]
    assert_close(wt.residual_norm, blk.residual_norm, rtol=1e-5, atol=0)
    assert_close(wt.shortcut_norm, blk.shortcut_norm, rtol=1e-5, atol=0)
    assert_close(steps["add"].l2, tr.layer("layer1.0.add").l2, rtol=1e-5, atol=0)
    assert steps["relu_2"].zero_frac == pytest.approx(tr.layer("layer1.0.relu_2").zero_frac)
    text = wt.text()
    assert "option B" in text and "192 zero channels" in text and "16,896 parameters" in text
    assert "256->64" in text
    assert wt.to_dict()["steps"][0]["out_shape"] == [1, 64, 16, 16]


def test_walkthrough_identity_block_resnet18(resnet18, image):
    from resnet_xray.tracing import walkthrough

    wt = walkthrough(resnet18, image)
    assert wt.shortcut == "identity" and wt.shortcut_params == 0
    assert [s.name for s in wt.steps][-2:] == ["layer1.0.add", "layer1.0.relu_1"]
    assert "identity" in wt.text() and "option B" not in wt.text()


def test_residual_chart_written_and_unwritable_refused(resnet18, image, tmp_path):
    from resnet_xray.errors import XrayError
    from resnet_xray.viz.residual import plot_residual_contributions

    blocks = trace_model(resnet18, image).blocks
    out = plot_residual_contributions(blocks, tmp_path / "res.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(XrayError):
        plot_residual_contributions(blocks, blocker / "res.png")


def test_fused_model_still_has_block_numbers(resnet18, image):
    """Conv-BN folding leaves nn.Identity where bn2 was; the block numbers must survive it."""
    from resnet_xray.deploy.fuse import fuse_model

    plain = trace_model(resnet18, image)
    fused = trace_model(fuse_model(resnet18), image)
    assert [b.name for b in fused.blocks] == [b.name for b in plain.blocks]
    assert fused.blocks[0].residual_from == "layer1.0.conv2"
    for a, b in zip(fused.blocks, plain.blocks):
        assert a.projection == b.projection
        assert_close(a.ratio, b.ratio, rtol=1e-3, atol=0)


def test_trace_follows_plain_network_and_back(resnet18, image):
    """The cached graph must not outlive a swapped forward: plain-18 traces as plain-18, then ResNet-18 again."""
    from resnet_xray.tracing.gradflow import plain_network

    model = resnet18
    with torch.no_grad():
        normal = model(image)
        first = trace_model(model, image)  # fills the graph cache
        with plain_network(model):
            plain = model(image)
            traced_plain = trace_model(model, image)
        again = trace_model(model, image)
    assert_close(first.logits, normal, rtol=0, atol=0)
    assert_close(traced_plain.logits, plain, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(plain, normal, rtol=1e-3, atol=1e-3)
    assert traced_plain.blocks == []  # no add, no block numbers
    assert_close(again.logits, normal, rtol=0, atol=0)


@pytest.mark.parametrize("one_pass,threads", [(True, 1), (True, 2), (False, 2)],
                         ids=["numba-serial", "numba-parallel", "torch-reductions"])
@pytest.mark.parametrize("batch", [1, 2])
def test_engines_agree_and_logits_are_bit_identical(batch, one_pass, threads, monkeypatch):
    """The generated-code engine derives BatchNorm, add and post-add ReLU statistics; they must equal
    the read ones, whether its sums come from the one-pass kernels (serial or split over threads) or
    from PyTorch's reductions."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _engines_agree(batch, one_pass, monkeypatch)
    finally:
        torch.set_num_threads(before)


def _engines_agree(batch, one_pass, monkeypatch):
    from resnet_xray.tracing import kernels

    if one_pass:
        assert kernels.enabled(), "numba is a pinned dependency: the one-pass kernels must load"
    else:
        monkeypatch.setattr(kernels, "_kernels", False)

    torch.manual_seed(1)
    model = build_model("resnet18").eval()
    for m in model.modules():  # non-trivial BatchNorm maps, negative scales included
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(0, 1)
            m.bias.data.normal_(0, 0.3)
    x = torch.randn(batch, 3, 96, 96)  # layer1 maps of 24x24: per-channel mode; layer4's 3x3: read in full
    with torch.inference_mode():
        want = model(x)
    runs = {e: trace_with(model, x, e) for e in ("codegen", "codegen-full", "interpreter")}
    ref = runs["interpreter"]
    for engine, tr in runs.items():
        assert torch.equal(tr.logits, want), engine
        assert [r.name for r in tr.layers] == [r.name for r in ref.layers]
        for a, b in zip(tr.layers, ref.layers):
            assert a.shape == b.shape and a.zero_frac == b.zero_frac
            scale = max(abs(b.mean), b.std, 1e-3)
            assert_close(a.mean, b.mean, rtol=0, atol=1e-5 * scale)
            assert_close([a.std, a.min, a.max, a.l2], [b.std, b.min, b.max, b.l2], rtol=1e-5, atol=1e-6)
        for a, b in zip(tr.blocks, ref.blocks):
            assert_close([a.residual_norm, a.shortcut_norm, a.output_norm, a.cosine, a.active_frac],
                          [b.residual_norm, b.shortcut_norm, b.output_norm, b.cosine, b.active_frac], rtol=1e-5, atol=1e-6)
    # In training mode a BatchNorm normalises with batch statistics, not the fixed map of its buffers:
    # the engine must read its output, and still agree with the interpreter.
    if batch > 1:
        import copy

        a, b = copy.deepcopy(model).train(), copy.deepcopy(model).train()  # each forward moves the buffers
        with torch.no_grad():
            ta, tb = trace_model(a, x), reference_trace(b, x)
        for ra, rb in zip(ta.layers, tb.layers):
            assert_close([ra.std, ra.min, ra.max, ra.l2], [rb.std, rb.min, rb.max, rb.l2], rtol=1e-5, atol=1e-6)
        assert abs(ta.layer("layer1.0.bn1").mean - float(a.layer1[0].bn1.bias.detach().mean())) < 1e-4  # batch-normalised


def test_engine_must_be_known(resnet18, image):
    from resnet_xray.tracing import TraceOptions

    with pytest.raises(ValueError, match="engine"):
        trace_model(resnet18, image, TraceOptions(engine="hooks"))


def test_non_finite_activations_show_as_nan_not_a_crash(resnet18):
    """fastmath reassociation only: a NaN in the input must reach the statistics as NaN."""
    from resnet_xray.tracing import kernels

    assert kernels.enabled()
    x = torch.randn(1, 3, 64, 64)
    x[0, 0, 5, 5] = float("nan")
    for engine in ("codegen", "interpreter"):
        tr = trace_with(resnet18, x, engine)
        conv1 = tr.layer("conv1")
        assert math.isnan(conv1.mean) and math.isnan(conv1.l2), engine


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_one_pass_kernels_match_float64(parallel):
    import numpy as np

    from resnet_xray.tracing import kernels

    assert kernels.enabled()
    if parallel and kernels.threads(2) < 2:
        pytest.skip("numba cannot run its parallel loops on OpenMP here")
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 4095, 4096, 4097, 100_003):
        t = torch.randn(n, generator=g).relu_()
        t[: n // 3] = -0.0
        out = np.zeros(3)
        kernels.flat_stats(t, out, parallel)
        d = t.double()
        assert out[0] == pytest.approx(d.sum().item(), rel=1e-6, abs=1e-9)
        assert out[1] == pytest.approx((d * d).sum().item(), rel=1e-6, abs=1e-9)
        assert out[2] == int((t != 0).sum())  # -0.0 counts as zero here
    m = torch.randn(7, 5000, generator=g)
    m[1] = -m[1].abs()  # all negative: the order keys of negative floats run backwards
    m[2, :100] = -0.0
    m[2, 100:] = 0.0
    m[3, 17], m[3, 4999] = float("inf"), float("-inf")
    m[4] = m[4].abs() * 1e-40  # subnormals
    rows = np.stack([r.astype(np.float64) for r in kernels.row_extremes(m, parallel)], 1)
    finite = [0, 1, 2, 4, 5, 6]
    # A float32 sum's rounding error scales with the sum of |x|, not with the (cancelling) result; how it
    # splits over SIMD lanes differs between AVX2 and AVX-512 builds, so bound it by sum |x|.
    l1 = m.double().abs().sum(1).numpy()
    assert np.all(np.abs(rows[finite, 0] - m.double().sum(1).numpy()[finite]) <= 1e-6 * l1[finite])
    assert np.allclose(rows[finite, 1], (m.double() ** 2).sum(1).numpy()[finite], rtol=1e-6)
    assert np.array_equal(rows[:, 2], m.amax(1).double().numpy())  # extremes exact, bit for bit
    assert np.array_equal(rows[:, 3], m.amin(1).double().numpy())
    assert rows[2, 2] == 0 and rows[2, 3] == 0 and np.isnan(rows[3, 0])
    short = torch.randn(3, 49, generator=g)  # a 7x7 map: one short block per row
    _, _, hi, lo = kernels.row_extremes(short, parallel)
    assert np.array_equal(hi, short.amax(1).numpy()) and np.array_equal(lo, short.amin(1).numpy())


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_residual_kernel_is_the_add_and_relu_read_back(parallel):
    """kernels.residual reduces y = f + s and relu(y) from f and s alone: its extremes must be those of
    PyTorch's own add bit for bit, its sums those of float64, at ragged lengths and across blocks."""
    import numpy as np

    from resnet_xray.tracing import kernels

    assert kernels.enabled()
    if parallel and kernels.threads(2) < 2:
        pytest.skip("numba cannot run its parallel loops on OpenMP here")
    g = torch.Generator().manual_seed(0)
    for n in (1, 49, 4095, 4096, 4097, 100_003):
        f, s = torch.randn(n, generator=g), torch.randn(n, generator=g)
        s[: n // 4] = -f[: n // 4]  # exact zeros (+0.0): not counted as active
        out, hi, lo = kernels.residual(f, s, parallel)
        y = f + s
        r = y.relu().double()
        assert hi == y.max().item() and lo == y.min().item()
        d = y.double()
        fs = f.double() * s.double()
        l1 = [d.abs().sum(), (d * d).sum(), fs.abs().sum(), r.sum(), (r * r).sum()]
        want = [d.sum(), (d * d).sum(), fs.sum(), r.sum(), (r * r).sum()]
        for k in range(5):  # float32 partial sums: the error scales with the sum of |terms|
            assert abs(out[k] - want[k].item()) <= 1e-6 * l1[k].item() + 1e-9, (n, k)
        assert out[5] == int((y > 0).sum())
    f = torch.randn(5000, generator=g)
    f[17] = float("nan")
    out, _, _ = kernels.residual(f, torch.zeros(5000), parallel)
    assert np.isnan(out[0])  # the caller then reads the add's output instead


def test_relu6_is_read_not_derived():
    """A ReLU's max follows from its input's; a ReLU6's does not (it clamps at 6). The generated-code
    engine once derived both alike and reported a ReLU6 max of 100."""
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6()).eval()
    x = torch.randn(1, 3, 20, 20) * 50
    for engine in ("codegen", "interpreter"):
        tr = trace_with(m, x, engine)
        assert tr.layer("0").max > 6 and tr.layer("1").max == 6.0, engine
