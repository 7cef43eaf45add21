"""Property: any mangled checkpoint loads through the public path or is refused with one line (XrayError)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, given
from hypothesis import strategies as st

from resnet_xray.errors import XrayError
from resnet_xray.model import load_model, save_checkpoint

from .hypothesis_profiles import examples

TOP_KEYS = ["format_version", "arch", "class_names", "preprocessing", "state_dict", "heads", "pruned_spec", "fused_pairs", "options"]
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> dict:
    model, meta = load_model("resnet18", "random", seed=1)
    model.fc = torch.nn.Linear(model.fc.in_features, 3)
    meta.class_names = ["a", "b", "c"]
    path = tmp_path_factory.mktemp("ck") / "base.pt"
    save_checkpoint(path, model, meta)
    return torch.load(path, map_location="cpu", weights_only=True)


def _try_load(ckpt) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mangled.pt"
        torch.save(ckpt, path)
        try:
            model, meta = load_model(None, path)
        except XrayError as e:
            assert "\n" not in str(e)
            return
        x = torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            model(x)  # a model that loads must also run


@st.composite
def mutations(draw, base: dict):
    ck = dict(base)
    ck["state_dict"] = dict(base["state_dict"])
    ck["preprocessing"] = dict(base["preprocessing"])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "junk", "tensor", "preprocessing", "class_names"]))
        if kind == "drop":
            ck.pop(draw(st.sampled_from(TOP_KEYS)), None)
        elif kind == "junk":
            ck[draw(st.sampled_from(TOP_KEYS))] = draw(JUNK)
        elif kind == "tensor" and isinstance(ck.get("state_dict"), dict) and ck["state_dict"]:
            key = draw(st.sampled_from(sorted(ck["state_dict"])))
            t = ck["state_dict"][key]
            kinds = ["nan", "inf", "shape", "int", "junk", "drop", "empty"] if isinstance(t, torch.Tensor) else ["junk", "drop"]
            how = draw(st.sampled_from(kinds))
            if how == "nan" and t.is_floating_point() and t.numel() > 0:
                t = t.clone()
                t.view(-1)[0] = math.nan
            elif how == "inf" and t.is_floating_point():
                t = torch.full_like(t, math.inf)
            elif how == "shape":
                t = torch.zeros(draw(st.lists(st.integers(0, 4), max_size=4)))
            elif how == "int":
                t = t.to(torch.int64)
            elif how == "empty":
                t = torch.empty(0)
            ck["state_dict"][key] = draw(JUNK) if how == "junk" else t
            if how == "drop":
                del ck["state_dict"][key]
        elif kind == "preprocessing" and isinstance(ck.get("preprocessing"), dict):
            field = draw(st.sampled_from(["resize", "crop", "mean", "std", "interpolation", "source", "extra"]))
            if draw(st.booleans()):
                ck["preprocessing"].pop(field, None)
            else:
                ck["preprocessing"][field] = draw(JUNK | st.integers(-3, 3))
        else:
            ck["class_names"] = draw(JUNK | st.lists(st.text(max_size=4), max_size=5))
    return ck


# No shrinking: every example saves and loads a 45 MB checkpoint, and shrinking one ran 6 minutes.
@examples(20, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.data())
def test_mangled_checkpoints_load_or_are_refused(base_checkpoint, data):
    _try_load(data.draw(mutations(base_checkpoint)))


@examples(20)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_as_weights_are_refused(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.pt"
        path.write_bytes(data)
        with pytest.raises(XrayError) as e:
            load_model(None, path)
        assert "\n" not in str(e.value)
