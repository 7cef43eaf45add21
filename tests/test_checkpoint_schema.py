"""Our checkpoint format is checked field by field on load: one line naming the file and
the field, exit 2, no traceback; NaN/Inf weights are refused unless asked for."""

from __future__ import annotations

import copy

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model, load_model, save_checkpoint

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "good.pt"
    save_checkpoint(path, build_model("resnet18", 3), ModelMeta("resnet18", "t", CLASSES, Preprocessing(resize=40, crop=32), True))
    return torch.load(path, weights_only=True)


def _set(d, dotted, value):
    *parents, last = dotted.split(".", 1 if dotted.startswith("state_dict.") else -1)
    for p in parents:
        d = d[p]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


_DELETE = object()
CASES = [
    # (where, value, words the one-line error must contain)
    ("preprocessing.resize", 0, "preprocessing.resize"),
    ("preprocessing.mean", _DELETE, "preprocessing.mean"),
    ("preprocessing.std", [0.2, 0.0, 0.2], "preprocessing.std"),
    ("preprocessing.crop", "224", "preprocessing.crop"),
    ("preprocessing.interpolation", "sideways", "preprocessing.interpolation"),
    ("preprocessing", "seed", "'preprocessing'"),
    ("class_names", "abc", "'class_names'"),
    ("arch", 50, "'arch'"),
    ("arch", "resnet9000", "'arch'"),
    ("format_version", 99, "'format_version'"),
    ("state_dict.conv1.weight", 3, "state_dict.conv1.weight"),
    ("state_dict", [1, 2], "'state_dict'"),
    ("options", "fast", "'options'"),
    ("provenance", "trained", "'provenance'"),
    ("provenance", {"trained": "maybe", "evidence": "x"}, "provenance'.trained"),
    ("provenance", {"trained": True, "evidence": "x", "history": [{"by": "finetune"}]}, "history[0].epochs"),
    ("changes", "pruned", "'changes'"),
    ("changes", [{"kind": "quantized"}], "unknown change kind 'quantized'"),
    ("changes", [{"kind": "classifier", "num_classes": "3"}], "num_classes"),
    ("changes", [{"kind": "classifier", "num_classes": 3, "extra": 1}], "unknown field 'extra'"),
    ("changes", [{"kind": "heads", "heads": "class"}], "heads must be a non-empty dict"),
    ("changes", [{"kind": "fused_batchnorm", "pairs": [["conv1"]]}], "pairs"),
    ("changes", [{"kind": "classifier", "num_classes": 3}, {"kind": "fused_batchnorm", "pairs": [["conv9", "bn9"]]}], "conv9"),
    ("changes", [{"kind": "pruned_widths", "layers": {"conv1": {"kind": "conv", "in_channels": 3, "out_channels": -4, "groups": 1}}}], "out_channels"),
    ("pruned_spec", {"format": "x"}, "'pruned_spec'"),  # a format-1 key in a format-2 file
]


@pytest.mark.parametrize("where,value,words", CASES, ids=[f"{w}={v!r}"[:60] for w, v, _ in CASES])
def test_malformed_field_is_one_line_naming_file_and_field(good, tmp_path, capsys, where, value, words):
    ck = copy.deepcopy(good)
    ck["changes"] = [{"kind": "classifier", "num_classes": 3}]
    _set(ck, where, value)
    path = tmp_path / "bad.pt"
    torch.save(ck, path)
    assert main(["anatomy", "--weights", str(path), "--input-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert str(path) in err and words in err, err


LEGACY = [
    ("heads", "class", "'heads'"),
    ("heads", {"class": {"kind": "wings", "out": 3}}, "'heads'"),
    ("fused_pairs", [["conv1", "bn1", "x"]], "'fused_pairs'"),
    ("fused_pairs", "conv1,bn1", "'fused_pairs'"),
    ("pruned_spec", {"format": "resnet-xray-pruned-spec", "version": 1, "layers": {}}, "'pruned_spec'"),
]


@pytest.mark.parametrize("key,value,words", LEGACY, ids=[f"{k}={v!r}"[:60] for k, v, _ in LEGACY])
def test_malformed_format_1_keys(good, tmp_path, key, value, words):
    ck = copy.deepcopy(good)
    ck.pop("changes")
    ck["format_version"] = 1
    ck[key] = value
    torch.save(ck, tmp_path / "v1.pt")
    with pytest.raises(XrayError, match=words) as e:
        load_model(None, tmp_path / "v1.pt")
    assert str(tmp_path / "v1.pt") in str(e.value)


def test_foreign_state_dict_with_a_non_tensor_is_one_line(good, tmp_path):
    sd = dict(good["state_dict"])
    sd["layer1.0.conv1.weight"] = 7  # _guess_arch used to crash on this
    torch.save({"state_dict": sd}, tmp_path / "f.pth")
    with pytest.raises(XrayError, match=r"'state_dict.layer1.0.conv1.weight' must be a tensor, found int"):
        load_model(None, tmp_path / "f.pth")


@pytest.fixture
def nan_checkpoint(good, tmp_path):
    ck = copy.deepcopy(good)
    ck["state_dict"]["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    ck["state_dict"]["fc.bias"][1] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save(ck, path)
    return path


def _refused(capsys, path) -> None:
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert "\n" not in err and str(path) in err and "NaN or Inf" in err and "layer1.0.conv1.weight" in err, err
    assert cap.out == ""


def test_nan_weights_are_refused_by_every_command_and_leave_nothing(nan_checkpoint, tmp_path, capsys, cat_path):
    w = ["--weights", str(nan_checkpoint)]
    assert main(["classify", str(cat_path), *w, "--json"]) == 2
    _refused(capsys, nan_checkpoint)
    assert main(["fuse", *w, "-o", str(tmp_path / "fused.pt")]) == 2
    _refused(capsys, nan_checkpoint)
    assert main(["export", *w, "-o", str(tmp_path / "m.onnx")]) == 2
    _refused(capsys, nan_checkpoint)
    assert main(["report", str(cat_path), *w, "-o", str(tmp_path / "report"), "--no-gradflow"]) == 2
    _refused(capsys, nan_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]  # no artefact, no temp file, no folder


def test_nan_weights_can_be_inspected_when_asked(nan_checkpoint, capsys):
    with pytest.raises(XrayError, match="2 weight tensor"):
        load_model(None, nan_checkpoint)
    model, _ = load_model(None, nan_checkpoint, allow_nonfinite=True)
    assert torch.isnan(model.layer1[0].conv1.weight).any()
    assert main(["anatomy", "--weights", str(nan_checkpoint), "--input-size", "32", "--summary"]) == 2
    capsys.readouterr()
    assert main(["anatomy", "--weights", str(nan_checkpoint), "--input-size", "32", "--summary", "--allow-nonfinite"]) == 0
