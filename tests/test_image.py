"""Image loading: every awkward input is converted or refused with a one-line reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_xray.errors import XrayError
from resnet_xray.image import ImageStream, Preprocessing, load_image

from .conftest import gradient_image


def test_exif_rotation_is_applied(tmp_path):
    img = gradient_image(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    out = load_image(p)
    assert out.size == (32, 64)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    src = gradient_image()
    gray = np.asarray(src.convert("L"), dtype=np.int16)
    if mode == "I;16":
        arr = (gray.astype(np.uint16) * 257).astype(np.uint16)
        src = Image.fromarray(arr)
        assert src.mode.startswith("I;16")
        ext = "png"
    else:
        src = src.convert(mode)
        ext = "tiff" if mode == "CMYK" else "png"
    p = tmp_path / f"img.{ext}"
    src.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (64, 48)
    if mode == "I;16":
        # 16-bit is scaled to 8 bits, not clipped to 255.
        assert np.abs(np.asarray(out)[..., 0].astype(np.int16) - gray).max() <= 1


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    p = tmp_path / "t.png"
    rgba.save(p)
    assert np.asarray(load_image(p))[0, 0].tolist() == [255, 255, 255]


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    gradient_image(100, 100).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(XrayError, match="decompression bomb") as e:
        load_image(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "name, reason",
    [("empty.jpg", "empty file"), ("notes.png", "not an image"), ("truncated.jpg", "truncated"), ("missing.png", "no such file")],
)
def test_bad_files_name_file_and_reason(image_dir, name, reason):
    with pytest.raises(XrayError) as e:
        load_image(image_dir / name)
    msg = str(e.value)
    assert name in msg and reason in msg and "\n" not in msg


def test_stream_goes_past_bad_files(image_dir):
    stream = ImageStream([image_dir])
    good = [p.name for p, _ in stream]
    assert good == ["a.png", "b_gray.jpg", "c_palette.png"]
    assert sorted(s.path.split("/")[-1] for s in stream.skipped) == ["empty.jpg", "notes.png", "truncated.jpg"]


def test_seed_pipeline_is_exactly_the_seeds(cat_path):
    from torchvision import transforms

    seed = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    img = load_image(cat_path)
    pre = Preprocessing.seed()
    x = pre(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, seed(img))
    # Undoing Normalize gives back the 8-bit crop the network sees.
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(img)
    back = pre.denormalize(x).astype(np.int16)
    assert np.abs(back - np.asarray(crop, dtype=np.int16)).max() <= 1


def test_weights_declare_their_own_transforms():
    import torchvision

    v2 = Preprocessing.from_weights(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    v1 = Preprocessing.from_weights(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    assert (v2.resize, v2.crop) == (232, 224)
    assert (v1.resize, v1.crop) == (256, 224)
    assert "232" in v2.source
