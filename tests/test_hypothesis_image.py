"""Property: any file given as an image loads as RGB or is refused with one line; it never raises anything else."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing, load_image

from .hypothesis_profiles import examples

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm"}
PRE = Preprocessing.seed()


def _check(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        p.write_bytes(data)
        try:
            img = load_image(p)
        except XrayError as e:
            msg = str(e)
            assert str(p) in msg and "\n" not in msg
            return
        assert img.mode == "RGB" and min(img.size) >= 1
        x = PRE(img)
        assert x.shape == (3, PRE.crop, PRE.crop) and torch.isfinite(x).all()


@st.composite
def encoded_images(draw) -> tuple[bytes, str]:
    """A real image of any mode, odd size (thin strips included) and format."""
    w = draw(st.integers(1, 64) | st.sampled_from([1, 2, 3, 300, 1200]))
    h = draw(st.integers(1, 64) | st.sampled_from([1, 2, 3, 300, 1200]))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    seed = draw(st.integers(0, 2**32 - 1))
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    try:
        img = rgb.convert("L").convert(mode) if mode in ("I;16", "I", "F") else rgb.convert(mode)
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        rgb.save(buf, format=fmt)  # this format cannot hold the mode; the RGB picture still tests the size
    return buf.getvalue(), FORMATS[fmt]


@examples(30)
@given(encoded_images())
def test_valid_images_of_any_mode_size_and_format(case):
    _check(*case)


@examples(30)
@given(encoded_images(), st.data())
def test_mutated_images_load_or_are_refused(case, data):
    raw, suffix = case
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if not b:
            break
        i = data.draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del b[i:]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    _check(bytes(b), data.draw(st.sampled_from(sorted(set(FORMATS.values())))))


@examples(30)
@given(st.binary(max_size=2048), st.sampled_from([".jpg", ".png", ".gif", ".tif", ".webp", ".bmp"]))
def test_arbitrary_bytes_are_refused_cleanly(data, suffix):
    _check(data, suffix)
