"""The anatomy is measured, so it must agree with torchvision's metadata and PyTorch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from resnet_xray.dissect import AnatomyOptions, analyze
from resnet_xray.model import ARCHS, build_model, weights_enum


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    m = build_model("resnet50").eval()
    return m, analyze(m, "resnet50")


@pytest.mark.parametrize("arch", ARCHS)
def test_totals_match_torchvision_metadata(arch):
    meta = weights_enum(arch).DEFAULT.meta
    m = build_model(arch)
    a = analyze(m, arch)
    assert a.totals.params == meta["num_params"]
    # torchvision rounds its GMACs ("_ops") to three decimals.
    assert abs(a.totals.macs / 1e9 - meta["_ops"]) < 6e-4
    assert a.totals.flops == 2 * a.totals.macs


def test_conv_and_fc_rows_match_flop_counter(r50):
    model, a = r50
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    counts = counter.get_flop_counts()["Global"]
    conv_flops = counts[torch.ops.aten.convolution]
    fc_flops = counts[torch.ops.aten.addmm]
    assert conv_flops == 2 * a.breakdown.by_type["conv"].macs
    assert fc_flops == 2 * a.breakdown.by_type["fc"].macs


def test_resnet50_layer_counts(r50):
    t = r50[1].totals
    assert (t.conv_modules, t.main_path_convs, t.shortcut_convs, t.fc_layers, t.weighted_layers) == (53, 49, 4, 1, 50)
    assert t.params == 25_557_032


def test_resnet50_table1(r50):
    stages = r50[1].stages
    assert [s.name for s in stages] == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "pool_fc"]
    assert [s.output_size for s in stages] == [112, 56, 28, 14, 7, 1]
    assert [s.blocks for s in stages[1:5]] == [3, 4, 6, 3]
    assert [s.channels for s in stages[1:5]] == [[64, 64, 256], [128, 128, 512], [256, 256, 1024], [512, 512, 2048]]


def test_seed_share_claims_are_measured(r50):
    by_type = r50[1].breakdown.by_type
    # The article says conv 99.9% / fc 0.1% of parameters; measurement says otherwise.
    assert by_type["fc"].params == 2_049_000
    assert 0.079 < by_type["fc"].params_share < 0.081
    assert 0.917 < by_type["conv"].params_share < 0.919
    assert by_type["fc"].macs_share < 0.001
    for t in ("relu", "add", "maxpool", "avgpool", "bn"):
        assert by_type[t].macs > 0, f"{t} element operations must be counted"
    assert abs(sum(v.params_share for v in by_type.values()) - 1) < 1e-9
    assert abs(sum(v.macs_share for v in by_type.values()) - 1) < 1e-9


def test_every_call_gets_its_own_row(r50):
    names = [r.name for r in r50[1].layers]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    for n in ("layer1.0.relu", "layer1.0.relu_1", "layer1.0.relu_2", "layer1.0.add", "layer1.0.downsample.0", "fc"):
        assert n in names
    assert len(names) == len(set(names))
    assert sum(r.type == "add" for r in r50[1].layers) == 16


def test_receptive_fields(r50):
    rows = {r.name: r for r in r50[1].layers}
    assert (rows["conv1"].receptive_field, rows["conv1"].jump) == (7, 2)
    assert (rows["maxpool"].receptive_field, rows["maxpool"].jump) == (11, 4)
    assert (rows["layer1.0.conv2"].receptive_field, rows["layer1.0.conv2"].jump) == (19, 4)
    # V1.5 puts the stride on the 3x3 conv; the well-known ResNet-50 field is 427 px.
    assert (rows["layer4.2.relu_2"].receptive_field, rows["layer4.2.relu_2"].jump) == (427, 32)


def test_input_size_changes_shapes_not_params():
    m = build_model("resnet18")
    a = analyze(m, "resnet18", AnatomyOptions(input_size=160))
    b = analyze(m, "resnet18")
    assert a.totals.params == b.totals.params
    assert [s.output_size for s in a.stages] == [80, 40, 20, 10, 5, 1]
    conv = {r.name: r for r in a.layers}["layer1.0.conv1"]
    assert conv.output_shape == (64, 40, 40)
    assert conv.macs == 64 * 40 * 40 * 64 * 9


def test_json_keys(r50):
    d = r50[1].to_dict()
    assert {"layers", "stages", "totals", "breakdown"} <= set(d)
    assert set(d["totals"]) >= {"params", "macs", "flops", "conv_modules", "main_path_convs", "fc_layers", "weighted_layers"}
    assert set(d["breakdown"]["by_type"]["conv"]) == {"params", "macs", "params_share", "macs_share"}
    assert set(d["stages"][0]) >= {"name", "blocks", "output_size", "channels"}
    assert set(d["layers"][0]) >= {"name", "type", "kernel", "stride", "padding", "groups", "in_channels",
                                   "out_channels", "output_shape", "params", "macs", "receptive_field", "jump"}
