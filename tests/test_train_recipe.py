"""The fast from-scratch recipe (progressive resizing, EMA, --amp fallback) and the training defects found by hostile input."""

from __future__ import annotations

import dataclasses
import shutil
from functools import partial

import pytest
import torch
from torch import nn

from resnet_xray.cli import main
from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.errors import XrayError
from resnet_xray.model import build_model, load_model
from resnet_xray.train import finetune as F
from resnet_xray.train import job, optim
from resnet_xray.train.data import EmptyClassWarning, make_loaders
from resnet_xray.train.evaluation import evaluate
from resnet_xray.train.finetune import fit
from resnet_xray.train.recipe import FinetuneOptions, resize_plan

from .conftest import finetune_options

SIZE = 32  # the side of the `tiny` fixture's images
_opts = partial(finetune_options, epochs=2, lr=0.01, warmup_epochs=0.5, recipe="fast", ema=0.0, progressive="off")


def _data(root, **kw):
    return make_loaders(root, batch_size=kw.pop("batch_size", 4), workers=0, seed=0, **kw)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes=3)


def test_recipe_defaults_follow_the_starting_weights():
    fast = FinetuneOptions(weights="random").resolved()
    assert (fast.recipe, fast.optimizer, fast.stem_init, fast.warmup_epochs, fast.channels_last, fast.ema, fast.progressive,
            fast.min_crop_scale, fast.zero_init_residual) == ("fast", "muon", "whiten", 0.5, True, 0.0, "off", 0.8, False)
    classic = FinetuneOptions(weights="imagenet").resolved()
    assert (classic.recipe, classic.optimizer, classic.stem_init, classic.warmup_epochs, classic.channels_last, classic.ema,
            classic.progressive, classic.zero_init_residual) == ("classic", "sgd", "default", 1.0, False, 0.0, "off", False)
    # An explicit piece wins over the recipe.
    picked = FinetuneOptions(weights="random", ema=0.99, progressive="auto", optimizer="sgd").resolved()
    assert (picked.ema, picked.progressive, picked.optimizer) == (0.99, "auto", "sgd")


def test_resize_plan_phases_end_at_the_input_size():
    assert resize_plan("auto", 96, 12) == [64] * 4 + [80] * 4 + [96] * 4
    assert resize_plan("auto", 96, 1) == [96]  # never a last epoch below the evaluation size
    assert resize_plan("off", 96, 3) == [96, 96, 96]
    with pytest.raises(XrayError, match="the last size must be the input size 96"):
        resize_plan("64,80", 96, 4)
    for bad in ("64,x", "96,64", "8,96"):
        with pytest.raises(XrayError, match="--progressive"):
            _opts(progressive=bad).validate()


def test_progressive_resizing_changes_resolution_at_the_planned_epochs(tiny, one_thread):
    model = _model()
    seen: list[tuple[bool, int]] = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[-1])))
    r = fit(model, _data(tiny), _opts(epochs=2, progressive="24,32"))
    per_epoch = 4 + 3  # 4 training steps of 4 images, then 9 validation images in batches of 4
    train_sizes = [s for t, s in seen if t]
    assert train_sizes == [24] * 4 + [32] * 4
    assert {s for t, s in seen if not t} == {32}  # validation always at the input size
    assert len(seen) == 2 * per_epoch  # the final evaluation is the last epoch's (same weights), not another pass
    assert [row["train_size"] for row in r["history"]] == [24, 32]


def test_ema_weights_saved_as_best_and_reloaded(tiny, tmp_path, monkeypatch, one_thread):
    real = F._validate

    def ema_always_wins(run, model):  # make the choice certain; the scores are real otherwise
        result = real(run, model)
        return {**result, "accuracy": 1.0} if run.ema is not None and model is run.ema.module else result

    monkeypatch.setattr(F, "_validate", ema_always_wins)
    r = fit(_model(), _data(tiny), _opts(epochs=1, ema=0.5), out_dir=tmp_path)
    assert r["best"]["weights"] == "ema" and r["history"][0]["ema_val_accuracy"] == 1.0
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert best["metrics"]["weights"] == "ema" and last["ema"]["updates"] == 4
    for k, v in last["ema"]["state_dict"].items():  # best.pt holds the average, which last.pt also carries
        torch.testing.assert_close(best["state_dict"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])
    loaded, _ = load_model(None, tmp_path / "best.pt")
    assert evaluate(loaded, _data(tiny).val)["images"] == 9


@pytest.mark.slow
def test_resume_mid_resolution_phase_equals_uninterrupted(tiny, tmp_path, one_thread):
    opts = _opts(epochs=4, progressive="24,32", ema=0.9)  # epochs at 24, 24, 32, 32; 4 steps each
    straight = _model()
    fit(straight, _data(tiny), opts, out_dir=tmp_path / "a")
    r = fit(_model(), _data(tiny), dataclasses.replace(opts, stop_after_steps=6), out_dir=tmp_path / "b")
    assert r["stopped_early"] and r["global_step"] == 6  # inside epoch 2, the second 24 px epoch
    resumed = _model(seed=123)  # everything must come from the checkpoint
    fit(resumed, _data(tiny), opts, out_dir=tmp_path / "b", resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    ea = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    eb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ea["ema"]["updates"] == eb["ema"]["updates"] == 16
    for k, v in ea["ema"]["state_dict"].items():
        torch.testing.assert_close(eb["ema"]["state_dict"][k], v, rtol=1e-5, atol=1e-6)
    assert [h["train_size"] for h in eb["history"]] == [24, 24, 32, 32]


# --- training defects found by hostile input ---


def test_zero_readable_training_images_fail_with_one_line_and_no_checkpoints(tiny, tmp_path, capsys):
    root = tmp_path / "unreadable"
    shutil.copytree(tiny, root)
    for f in (root / "train").rglob("*.png"):
        f.write_text("not an image")
    out = tmp_path / "out"
    code = main(["finetune", str(root), "--out", str(out), "--arch", "resnet18", "--weights", "random", "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no readable training images" in err[-1]
    assert not list(out.glob("*.pt")) and not (out / "metrics.csv").exists()


def test_empty_class_folder_is_not_a_class(tiny, tmp_path):
    root = tmp_path / "with_empty"
    shutil.copytree(tiny, root)
    (root / "train" / "aaa_empty").mkdir()
    (root / "val" / "aaa_empty").mkdir()
    with pytest.warns(EmptyClassWarning, match="aaa_empty: no images"):
        data = _data(root)
    assert data.class_names == ["circle", "square", "triangle"]


def test_resume_with_other_epochs_is_refused(tiny, tmp_path, one_thread):
    fit(_model(), _data(tiny), _opts(epochs=1, stop_after_steps=2), out_dir=tmp_path)
    with pytest.raises(XrayError, match=r"started with --epochs 1, this run has 3"):
        fit(_model(), _data(tiny), _opts(epochs=3), out_dir=tmp_path, resume=True)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["global_step"] == 2  # untouched


def test_default_lr_scales_with_the_batch_a_step_sees_not_the_one_asked_for(tiny, one_thread):
    # far more than the 18 training images, yet within the machine-derived batch bound on any machine of 4 GB or more
    data = _data(tiny, batch_size=2_000)
    r = fit(_model(), data, _opts(epochs=1, lr=None, optimizer="sgd", batch_size=2_000), pretrained=False)
    assert r["effective_batch"] == 18 and r["lr"] == pytest.approx(0.1 * 18 / 256)
    assert r["final"]["loss"] < 10  # the old default (sgd lr 39) gave 240834


def test_stop_after_one_step_prints_no_fake_best(tiny, tmp_path, capsys):
    code = main(["finetune", str(tiny), "--out", str(tmp_path), "--arch", "resnet18", "--weights", "random",
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress", "--stop-after-steps", "1",
                 "--progressive", "off", "--ema", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "-100" not in out and "epoch -1" not in out
    assert "no epoch finished, so no best.pt yet" in out and "best.pt" not in out.splitlines()[-1]


def test_discriminative_rates_slow_each_earlier_stage():
    model = _model()
    opt = optim.make_optimizer(model, _opts(optimizer="adamw", layer_lr_decay=0.5), 1e-3)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == pytest.approx(1e-3)
    assert lr_of[id(model.layer4[0].conv1.weight)] == pytest.approx(5e-4)
    assert lr_of[id(model.conv1.weight)] == pytest.approx(1e-3 * 0.5**5)
    assert {g["weight_decay"] for g in opt.param_groups if any(p is model.bn1.weight for p in g["params"])} == {0.0}
    with pytest.raises(XrayError, match="^layer_lr_decay "):
        _opts(layer_lr_decay=0.0).validate()


def test_transfer_task_draws_new_shapes(tmp_path):
    info = make_reference_dataset(tmp_path / "t", ReferenceOptions(task="transfer", classes=5, per_class=2, size=SIZE))
    assert info["classes"] == ["hexagon", "diamond", "ellipse", "trapezoid", "semicircle"] and info["task"] == "transfer"
    ref = make_reference_dataset(tmp_path / "r", ReferenceOptions(classes=2, per_class=2, size=SIZE))
    assert "task" not in ref  # the reference task's dataset.json (and images) are as before


def test_zero_init_residual_makes_every_block_the_identity_for_random_weights_only(tmp_path):
    names = ["a", "b", "c"]
    model, _ = job.build_for_finetune(_opts(arch="resnet50", zero_init_residual=True).resolved(), names)
    blocks = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 16 and all(float(b.bn3.weight.abs().max()) == 0 for b in blocks)
    # a block whose branch is zero passes its shortcut through: relu(x + 0) for an identity block
    x = torch.randn(2, 256, 8, 8).relu()
    with torch.inference_mode():
        assert torch.equal(model.eval().layer1[1](x), x)
    # the default keeps torchvision's init, and a checkpoint's weights are never touched
    plain, _ = job.build_for_finetune(_opts(arch="resnet18", zero_init_residual=False).resolved(), names)
    assert all(float(m.bn2.weight.min()) == 1 for m in plain.modules() if type(m).__name__ == "BasicBlock")
    ck = tmp_path / "r18.pt"
    from resnet_xray.model import ModelMeta, save_checkpoint
    from resnet_xray.image import Preprocessing

    save_checkpoint(ck, plain, ModelMeta("resnet18", "random", names, Preprocessing(resize=32, crop=32), False))
    loaded, _ = job.build_for_finetune(_opts(arch="resnet18", weights=str(ck), zero_init_residual=True).resolved(), names)
    assert all(float(m.bn2.weight.min()) == 1 for m in loaded.modules() if type(m).__name__ == "BasicBlock")
