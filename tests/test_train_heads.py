"""Multi-task: a shared backbone with named heads, the weighted loss, box metrics, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from resnet_xray.errors import XrayError
from resnet_xray.model import build_model, load_model
from resnet_xray.train.data import make_loaders
from resnet_xray.train.evaluation import evaluate
from resnet_xray.train.finetune import _loss, fit
from resnet_xray.train.recipe import FinetuneOptions
from resnet_xray.train.heads import MultiTaskResNet, attach_heads, box_loss, box_metrics, multitask_spec

SIZE = 32  # the side of the `tiny` fixture's images


def test_any_number_of_named_heads_share_one_backbone():
    model = attach_heads(build_model("resnet18", 5), {"class": 5, "box": {"kind": "box"}, "angle": {"out": 2, "hidden": 16}})
    assert isinstance(model, MultiTaskResNet)
    assert model.heads["class"] is not None and isinstance(model.backbone.fc, nn.Identity)
    out = model(torch.randn(3, 3, SIZE, SIZE))
    assert set(out) == {"class", "box", "angle"}
    assert out["class"].shape == (3, 5) and out["box"].shape == (3, 4) and out["angle"].shape == (3, 2)
    b = out["box"]
    assert (b >= 0).all() and (b <= 1).all() and (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    # The class head reuses the existing fc (same size), so a trained classifier keeps its weights.
    base = build_model("resnet18", 5)
    fc_w = base.fc.weight.clone()
    torch.testing.assert_close(attach_heads(base, multitask_spec(5)).heads["class"].weight, fc_w)


def test_head_spec_errors_are_user_errors():
    with pytest.raises(XrayError, match="kind"):
        attach_heads(build_model("resnet18", 3), {"x": {"kind": "mask", "out": 3}})
    with pytest.raises(XrayError, match="4 outputs"):
        attach_heads(build_model("resnet18", 3), {"box": {"kind": "box", "out": 3}})


def test_multitask_loss_is_the_weighted_sum_and_reaches_both_heads():
    torch.manual_seed(0)
    model = attach_heads(build_model("resnet18", 3), multitask_spec(3)).train()
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 1])
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.8], [0.0, 0.4, 0.3, 0.9], [0.2, 0.2, 0.7, 0.7]])
    opts = FinetuneOptions(arch="resnet18", label_smoothing=0.1, loss_weights={"class": 0.7, "box": 2.5})
    out = model(x)
    total, parts = _loss(out, y, box, opts)
    ce = nn.functional.cross_entropy(out["class"], y, label_smoothing=0.1)
    bl = nn.functional.smooth_l1_loss(out["box"], box, beta=0.05) + generalized_box_iou_loss(out["box"], box, reduction="mean")
    torch.testing.assert_close(parts["class"], ce)
    torch.testing.assert_close(parts["box"], bl)
    torch.testing.assert_close(total, 0.7 * ce + 2.5 * bl)
    total.backward()
    assert model.heads["box"].mlp[0].weight.grad.abs().sum() > 0
    assert model.heads["class"].weight.grad.abs().sum() > 0
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    # With the box weight at zero, the box head gets no gradient at all.
    model.zero_grad(set_to_none=True)
    total, _ = _loss(model(x), y, box, FinetuneOptions(arch="resnet18", loss_weights={"class": 1.0, "box": 0.0}))
    total.backward()
    assert model.heads["box"].mlp[0].weight.grad.abs().sum() == 0


def test_box_metrics_on_known_boxes():
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]])
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.4, 0.2, 0.8, 0.6]])  # exact; half-shifted
    m = box_metrics(pred, target)
    torch.testing.assert_close(m["iou_sum"], torch.tensor(1.0 + (0.2 * 0.4) / (2 * 0.16 - 0.2 * 0.4)))
    torch.testing.assert_close(m["l1_sum"], torch.tensor(0.2 * 2 / 4))
    assert box_loss(target, target) == pytest.approx(0.0, abs=1e-6)
    assert box_loss(pred, target) > 0.1


def test_multitask_fit_checkpoint_round_trip(tiny, tmp_path):
    data = make_loaders(tiny, batch_size=4, workers=0, seed=0, multitask=True)
    x, y, box = next(iter(data.train))
    assert x.shape == (4, 3, SIZE, SIZE) and box.shape == (4, 4)
    torch.manual_seed(0)
    model = attach_heads(build_model("resnet18", 3), multitask_spec(3))
    opts = FinetuneOptions(arch="resnet18", weights="random", epochs=1, batch_size=4, workers=0, progress=False, multitask=True, lr=0.05)
    r = fit(model, data, opts, out_dir=tmp_path)
    assert "box_iou" in r["final"] and 0 <= r["final"]["box_iou"] <= 1
    assert "val_box_iou" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    loaded, meta = load_model(None, tmp_path / "best.pt")
    assert isinstance(loaded, MultiTaskResNet) and meta.find("heads").heads == model.heads_spec
    xv = next(iter(data.val))[0]
    with torch.no_grad():
        a, b = model.eval()(xv), loaded(xv)
    # rtol 1e-5: the trained model runs channels-last, the loaded one contiguous (other conv rounding)
    torch.testing.assert_close(b["class"], a["class"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b["box"], a["box"], rtol=1e-5, atol=1e-5)
    again = evaluate(loaded, data.val)
    assert again["box_iou"] == pytest.approx(r["final"]["box_iou"], abs=1e-5)


def test_flip_moves_the_box_with_the_image(tiny):
    data = make_loaders(tiny, batch_size=64, workers=0, seed=0, multitask=True)
    ds = data.train.dataset
    flips = 0
    for i in range(len(ds)):
        x, _, box = ds[(i, 0)]
        raw = torch.tensor(ds.boxes[i])
        if not torch.allclose(box, raw):
            flips += 1
            torch.testing.assert_close(box, torch.stack([1 - raw[2], raw[1], 1 - raw[0], raw[3]]))
    assert 0 < flips < len(ds)


def test_box_back_on_the_original_image():
    from resnet_xray.image import Preprocessing
    from resnet_xray.train.boxes import box_to_image

    # 400x300 photo, Resize(256) -> 341.33x256, CenterCrop(224): offsets 58.67, 16; scale 256/300.
    pre = Preprocessing()
    s = 256 / 300
    got = box_to_image((0.0, 0.0, 1.0, 1.0), (400, 300), pre)
    want = ((400 * s - 224) / 2 / s, 16 / s, ((400 * s - 224) / 2 + 224) / s, 240 / s)
    assert got == pytest.approx(want)
    same = Preprocessing(resize=32, crop=32)
    assert box_to_image((0.25, 0.5, 0.75, 1.0), (32, 32), same) == pytest.approx((8, 16, 24, 32))


def test_classify_prints_label_and_box_and_draws(tiny, tmp_path, capsys):
    from PIL import Image

    from resnet_xray.cli import main
    from resnet_xray.model import ModelMeta, save_checkpoint
    from resnet_xray.train.heads import Heads
    from resnet_xray.image import Preprocessing

    torch.manual_seed(0)
    model = attach_heads(build_model("resnet18", 3), multitask_spec(3))
    meta = ModelMeta("resnet18", "test", ["circle", "square", "triangle"], Preprocessing(resize=SIZE, crop=SIZE), True)
    save_checkpoint(tmp_path / "mt.pt", model, meta.with_change(Heads.of(model)))
    img = next((tiny / "val" / "square").glob("*.png"))
    assert main(["classify", str(img), "--weights", str(tmp_path / "mt.pt"), "--topk", "1", "--draw", str(tmp_path / "drawn")]) == 0
    out = capsys.readouterr().out
    assert any(label in out for label in ("circle", "square", "triangle"))
    assert "box: (" in out and "px [x0 y0 x1 y1]" in out
    drawn = tmp_path / "drawn" / f"{img.stem}_box.png"
    with Image.open(drawn) as im, Image.open(img) as orig:
        assert im.size == orig.size
        assert np.abs(np.asarray(im, dtype=int) - np.asarray(orig.convert("RGB"), dtype=int)).max() > 100  # red box drawn
    # A plain classifier has no box to draw: one-line error, exit 2.
    plain = build_model("resnet18", 3)
    save_checkpoint(tmp_path / "plain.pt", plain, meta)
    assert main(["classify", str(img), "--weights", str(tmp_path / "plain.pt"), "--draw", str(tmp_path / "d2")]) == 2
    assert "no box head" in capsys.readouterr().err


def test_box_to_crop_inverts_box_to_image_on_a_wide_photo():
    from resnet_xray.image import Preprocessing
    from resnet_xray.train.boxes import box_to_crop, box_to_image

    pre = Preprocessing(resize=64, crop=64)
    size = (400, 300)
    in_crop = (0.3, 0.2, 0.6, 0.9)  # fractions of the original; inside the centre square
    crop = box_to_crop(in_crop, size, pre)
    px = box_to_image(crop, size, pre)
    assert px == pytest.approx((0.3 * 400, 0.2 * 300, 0.6 * 400, 0.9 * 300))
    # Parts outside the centre crop are clipped to its edge.
    assert box_to_crop((0.0, 0.0, 1.0, 1.0), size, pre) == pytest.approx((0.0, 0.0, 1.0, 1.0))
