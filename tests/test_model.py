"""Weights resolution: torchvision enums (offline), local files of every kind, our checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

from resnet_xray.errors import XrayError
from resnet_xray.model import ModelMeta, cached_weights_path, load_model, save_checkpoint
from resnet_xray.image import Preprocessing


def _randomised(arch="resnet18", num_classes=1000):
    torch.manual_seed(1)
    m = torchvision.models.get_model(arch, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


def _same(a, b):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_random_weights_are_seeded():
    a, meta = load_model("resnet18", "random", seed=3)
    b, _ = load_model("resnet18", "random", seed=3)
    c, _ = load_model("resnet18", "random", seed=4)
    _same(a, b)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert meta.pretrained is False and len(meta.class_names) == 1000


@pytest.mark.parametrize("kind", ["state_dict", "ckpt_state_dict", "ckpt_model", "ddp_prefix", "safetensors"])
def test_local_weight_files(tmp_path, kind):
    ref = _randomised()
    sd = ref.state_dict()
    if kind == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {
            "state_dict": sd,
            "ckpt_state_dict": {"state_dict": sd, "epoch": 3},
            "ckpt_model": {"model": sd, "optimizer": {}},
            "ddp_prefix": {f"module.{k}": v for k, v in sd.items()},
        }[kind]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    model, meta = load_model(None, path)
    assert meta.arch == "resnet18"  # found from the parameter shapes
    _same(model, ref)


def test_our_checkpoint_round_trip_keeps_class_names(tmp_path):
    ref = _randomised(num_classes=3)
    pre = Preprocessing(resize=110, crop=96, source="test")
    meta = ModelMeta("resnet18", "test", ["cat", "dog", "fox"], pre, True)
    path = save_checkpoint(tmp_path / "best.pt", ref, meta, options={"epochs": 1})
    torch.load(path, weights_only=True)  # loadable without unpickling code
    model, meta2 = load_model(None, tmp_path)  # a directory means its best.pt
    assert meta2.class_names == ["cat", "dog", "fox"]
    assert (meta2.preprocessing.resize, meta2.preprocessing.crop) == (110, 96)
    _same(model, ref)
    assert not list(tmp_path.glob(".*tmp*")), "atomic save left a temp file behind"


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(XrayError, match=r"refused: loading it would run code \(it calls builtins.print\)") as e:
        load_model("resnet18", path)
    assert "\n" not in str(e.value) and "Re-running" not in str(e.value)
    torch.save({"state_dict": _Evil()}, tmp_path / "evil.pt")  # torch's zip format names the global itself
    with pytest.raises(XrayError, match=r"evil.pt: refused: loading it would run code \(it calls (builtins.)?print\)"):
        load_model("resnet18", tmp_path / "evil.pt")


def test_mismatches_are_one_line_errors(tmp_path):
    ref = _randomised(num_classes=3)
    meta = ModelMeta("resnet18", "t", ["a", "b", "c"], Preprocessing(), True)
    save_checkpoint(tmp_path / "r18.pt", ref, meta)
    with pytest.raises(XrayError, match="checkpoint is for resnet18, not --arch resnet50"):
        load_model("resnet50", tmp_path / "r18.pt")
    torch.save(_randomised().state_dict(), tmp_path / "r18_plain.pth")
    with pytest.raises(XrayError, match="does not fit resnet34: .*missing keys") as e:
        load_model("resnet34", tmp_path / "r18_plain.pth")
    assert "\n" not in str(e.value)
    for bad, why in [("nope.pth", "no such file"), ("empty.pth", "empty")]:
        if bad == "empty.pth":
            (tmp_path / bad).write_bytes(b"")
        with pytest.raises(XrayError, match=why):
            load_model("resnet18", tmp_path / bad)


def test_imagenet_offline_fails_fast_with_instructions(offline_hub):
    with pytest.raises(XrayError) as e:
        load_model("resnet18", "imagenet")
    msg = str(e.value)
    assert "--weights PATH" in msg and str(offline_hub) in msg


def test_imagenet_v2_missing_for_resnet18():
    with pytest.raises(XrayError, match="no IMAGENET1K_V2 weights for resnet18"):
        load_model("resnet18", "imagenet-v2")


def test_cached_imagenet_file_is_used_offline(offline_hub):
    # The real loading path: torchvision's enum + torch.hub cache, no network touched.
    wts = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = cached_weights_path(wts.url)
    assert path.parent == offline_hub / "checkpoints"
    path.parent.mkdir(parents=True)
    ref = _randomised()
    torch.save(ref.state_dict(), path)
    model, meta = load_model("resnet18", "imagenet")
    _same(model, ref)
    assert meta.pretrained and meta.class_names[281] == "tabby"
    assert "IMAGENET1K_V1" in meta.weights
