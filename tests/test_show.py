"""``resnet-xray show ...`` end to end: PNGs written, bad flags give one line and exit 2."""

from __future__ import annotations

import pytest
from PIL import Image

from resnet_xray.cli import main

R18 = ["--arch", "resnet18", "--weights", "random"]


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_show_features_first_and_top(tmp_path, cat_path, capsys):
    out = tmp_path / "f.png"
    assert main(["show", "features", str(cat_path), "--layer", "layer1.0.relu_1", *R18, "-o", str(out)]) == 0
    w, h = png_size(out)
    assert w > 400 and h > 400
    text = capsys.readouterr().out
    assert "layer1.0.relu_1: output 64x56x56; channels 0-63" in text
    out2 = tmp_path / "sub" / "t.png"
    assert main(["show", "features", str(cat_path), "--layer", "layer3.1.add", "--channels", "top", *R18, "-o", str(out2)]) == 0
    assert "256x14x14; the 64 channels with the highest mean activation" in capsys.readouterr().out
    png_size(out2)


def test_unknown_layer_is_one_line_with_nearest_names(tmp_path, cat_path, capsys):
    rc = main(["show", "features", str(cat_path), "--layer", "layer2.0.relu_9", *R18, "-o", str(tmp_path / "f.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nearest:" in err and "layer2.0.relu_1" in err
    assert not (tmp_path / "f.png").exists()
    assert main(["show", "kernels", "--layer", "layer1.0.con1", *R18, "-o", str(tmp_path / "k.png")]) == 2
    assert "layer1.0.conv1" in capsys.readouterr().err


def test_show_kernels_conv1_and_deeper(tmp_path, capsys):
    assert main(["show", "kernels", *R18, "-o", str(tmp_path / "k.png")]) == 0
    assert "64 x 3 x 7 x 7" in capsys.readouterr().out
    png_size(tmp_path / "k.png")
    assert main(["show", "kernels", "--layer", "layer3.0.conv2", *R18, "-o", str(tmp_path / "k3.png")]) == 0
    assert "NOT whole filters" in capsys.readouterr().out


@pytest.mark.parametrize("cls", ["1000", "-3"])
def test_cam_class_out_of_range_exits_2(tmp_path, cat_path, capsys, cls):
    assert main(["show", "cam", str(cat_path), "--class", cls, *R18, "-o", str(tmp_path / "c.png")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_show_cam_and_stages(tmp_path, cat_path, capsys):
    assert main(["show", "cam", str(cat_path), "--class", "281", "--method", "layercam", *R18, "-o", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "class #281 tabby" in text and "Grad-CAM, LayerCAM on layer4" in text
    assert main(["show", "stages", str(cat_path), *R18, "-o", str(tmp_path / "s.png")]) == 0
    w, h = png_size(tmp_path / "s.png")
    assert h > 400


def test_unwritable_output_exits_2(tmp_path, cat_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["show", "stages", str(cat_path), *R18, "-o", str(blocker / "s.png")]) == 2
    assert str(blocker) in capsys.readouterr().err


def test_unreadable_image_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["show", "cam", str(bad), *R18, "-o", str(tmp_path / "c.png")]) == 2
    assert "bad.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("picture", ["features", pytest.param("cam", marks=pytest.mark.slow), "stages", "kernels"])
def test_untrained_weights_are_said_in_the_terminal_and_the_title(tmp_path, cat_path, capsys, monkeypatch, picture):
    """Only `kernels` used to say so, and only in the terminal; the picture had a small grey corner label."""
    from resnet_xray.viz import show as show_mod

    drawn = []
    real_save = show_mod.save_figure
    monkeypatch.setattr(show_mod, "save_figure", lambda fig, path, *a, **k: drawn.append(fig) or real_save(fig, path, *a, **k))
    image = [] if picture == "kernels" else [str(cat_path)]
    extra = ["--layer", "layer1.0.relu_1"] if picture == "features" else ["--channels", "2"] if picture == "stages" else []
    assert main(["show", picture, *image, *extra, *R18, "-o", str(tmp_path / "p.png")]) == 0
    warning = "WARNING: random (seed 0) weights, never trained: nothing in this picture was learned"
    assert warning in capsys.readouterr().err
    assert " ".join(drawn[0].get_suptitle().split()).startswith(warning)
