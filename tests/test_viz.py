"""Feature grids, kernels, stage sheets and CAM: the numbers behind the pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing, bundled_cat, load_image
from resnet_xray.viz.cam import CamOptions, compute_cams
from resnet_xray.viz.features import colourize, feature_grid
from resnet_xray.viz.kernels import KernelsOptions, kernel_figure, rgb_patches, strongest_slices
from resnet_xray.viz.maps import capture, check_feature_layer, layer_rows, mosaic, pick_channels
from resnet_xray.viz.names import resolve_layer
from resnet_xray.viz.stages import stage_outputs


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def x64():
    return Preprocessing(resize=64, crop=64)(load_image(bundled_cat())).unsqueeze(0)


def test_resolve_layer_suggests_nearest_names():
    valid = ["conv1", "layer1.0.relu", "layer1.0.relu_1", "layer1.0.add"]
    assert resolve_layer("layer1.0.add", valid) == "layer1.0.add"
    with pytest.raises(XrayError) as e:
        resolve_layer("layer1.0.relu_3", valid)
    msg = str(e.value)
    assert "\n" not in msg and "--layer 'layer1.0.relu_3'" in msg and "layer1.0.relu_1" in msg


def test_pick_channels_first_and_top():
    fmap = torch.zeros(5, 2, 2)
    for c, v in enumerate([0.1, 3.0, -1.0, 2.0, 0.5]):
        fmap[c] = v
    assert pick_channels(fmap, "first", 3) == [0, 1, 2]
    assert pick_channels(fmap, "top", 3) == [1, 3, 4]
    assert pick_channels(fmap, "top", 64) == [1, 3, 4, 0, 2]
    with pytest.raises(XrayError):
        pick_channels(fmap, "random")


def test_mosaic_places_each_channel_and_leaves_gaps():
    fmap = torch.arange(4 * 2 * 2, dtype=torch.float32).view(4, 2, 2)
    img = mosaic(fmap, [3, 0, 1, 2], gap=1)
    assert img.shape == (5, 5)
    np.testing.assert_array_equal(img[0:2, 0:2], fmap[3].numpy())
    np.testing.assert_array_equal(img[0:2, 3:5], fmap[0].numpy())
    np.testing.assert_array_equal(img[3:5, 3:5], fmap[2].numpy())
    assert np.isnan(img[2]).all() and np.isnan(img[:, 2]).all()


def test_feature_grid_colour_scale_covers_drawn_channels_only():
    fmap = torch.zeros(3, 4, 4)
    fmap[0] = 1.0
    fmap[1, 0, 0] = 7.0
    fmap[2] = -5.0
    g = feature_grid("x", fmap, "top", count=2)
    assert g.channels == [0, 1]
    assert (g.vmin, g.vmax) == (0.0, 7.0)
    rgb = colourize(g.image, g.vmin, g.vmax)
    assert rgb.dtype == np.uint8 and rgb.shape == g.image.shape + (3,)
    assert (rgb[np.isnan(g.image)] == 255).all()


def test_rgb_patches_share_one_scale_with_grey_zero():
    w = torch.zeros(2, 3, 7, 7)
    w[0, 0, 0, 0] = 0.5
    w[1, 2, 3, 3] = -0.25
    p, m = rgb_patches(w)
    assert m == 0.5 and p.shape == (2, 7, 7, 3)
    assert p[0, 0, 0, 0] == pytest.approx(1.0)
    assert p[1, 3, 3, 2] == pytest.approx(0.25)
    assert p[0, 1, 1, 1] == pytest.approx(0.5)


def test_strongest_slices_pick_largest_norm_input_channel():
    w = torch.zeros(2, 4, 3, 3)
    w[0, 2] = 1.0
    w[1, 3, 1, 1] = -9.0
    slices, chans = strongest_slices(w, 64)
    assert chans == [2, 3]
    torch.testing.assert_close(torch.from_numpy(slices[1]), w[1, 3])


def test_kernel_figure_kinds_and_bad_layer(r18):
    _, cap = kernel_figure(r18, KernelsOptions("conv1"))
    assert "RGB patch" in cap and "64 x 3 x 7 x 7" in cap
    _, cap = kernel_figure(r18, KernelsOptions("layer2.0.conv1"))
    assert "NOT whole filters" in cap
    _, cap = kernel_figure(r18, KernelsOptions("layer2.0.downsample.0"))
    assert "128 x 64" in cap and "matrix" in cap
    with pytest.raises(XrayError, match="conv layer.*layer1.0.conv1"):
        kernel_figure(r18, KernelsOptions("layer1.0.relu"))


def test_stage_outputs_are_stage_ends(r18):
    st = stage_outputs(layer_rows(r18, 64))
    assert [(s.stage, s.layer, s.shape) for s in st] == [
        ("stem", "maxpool", (64, 16, 16)),
        ("layer1", "layer1.1.relu_1", (64, 16, 16)),
        ("layer2", "layer2.1.relu_1", (128, 8, 8)),
        ("layer3", "layer3.1.relu_1", (256, 4, 4)),
        ("layer4", "layer4.1.relu_1", (512, 2, 2)),
    ]


def test_capture_matches_the_model_forward(r18, x64):
    cap = capture(r18, x64, ["conv1", "layer1.0.add", "layer1.0.relu_1"])
    with torch.no_grad():
        torch.testing.assert_close(cap.logits, r18(x64))
        c1 = r18.conv1(x64)[0]
        torch.testing.assert_close(cap.maps["conv1"], c1)
        stem = r18.maxpool(r18.relu(r18.bn1(r18.conv1(x64))))
        b = r18.layer1[0]
        add = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(stem))))) + stem
    torch.testing.assert_close(cap.maps["layer1.0.add"], add[0])
    torch.testing.assert_close(cap.maps["layer1.0.relu_1"], add[0].relu())


def test_feature_layer_must_be_spatial(r18):
    rows = layer_rows(r18, 64)
    assert check_feature_layer("layer4.1.add", rows) == "layer4.1.add"
    with pytest.raises(XrayError, match="no spatial maps"):
        check_feature_layer("fc", rows)


def test_gradcam_matches_hand_computation(r18, x64):
    """Grad-CAM = ReLU(sum_k mean(dy/dA_k) A_k) on layer4, min-max scaled and resized."""
    import cv2

    cls = 7
    res = compute_cams(r18, x64, [f"c{i}" for i in range(1000)], CamOptions(class_index=cls, methods=("gradcam", "gradcam++")))
    acts = {}
    h = r18.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = r18(x64)
        a = acts["a"]
        (g,) = torch.autograd.grad(out[0, cls], a)
    finally:
        h.remove()
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))[0].detach().numpy()
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    cam = cv2.resize(np.float32(cam), (64, 64))
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    torch.testing.assert_close(torch.from_numpy(res.maps["gradcam"]), torch.from_numpy(cam), atol=1e-4, rtol=1e-4)
    assert res.class_index == cls and res.label == "c7" and set(res.maps) == {"gradcam", "gradcam++"}
    with torch.no_grad():
        p = r18(x64).softmax(1)[0]
    assert res.prob == pytest.approx(float(p[cls]), rel=1e-5)
    assert res.predicted == (int(p.argmax()) == cls)


def test_cam_class_out_of_range(r18, x64):
    with pytest.raises(XrayError, match="--class 1000: out of range"):
        compute_cams(r18, x64, ["c"] * 1000, CamOptions(class_index=1000))
    with pytest.raises(XrayError, match="class_index -1: out of range"):  # refused by the options, before any compute
        CamOptions(class_index=-1)


def test_cam_on_multitask_model_uses_class_head_and_backbone_layer4(x64):
    from resnet_xray.model import build_model
    from resnet_xray.train.heads import attach_heads

    torch.manual_seed(0)
    mt = attach_heads(build_model("resnet18", 10), {"class": 10, "box": {"kind": "box", "out": 4}}).eval()
    res = compute_cams(mt, x64, [f"c{i}" for i in range(10)])
    with torch.no_grad():
        probs = mt(x64)["class"].softmax(1)[0]
    assert res.layer == "backbone.layer4" and res.class_index == int(probs.argmax())
    assert res.prob == pytest.approx(float(probs.max()), rel=1e-5)
    assert res.maps["gradcam"].shape == (64, 64)
