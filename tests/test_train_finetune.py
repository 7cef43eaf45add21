"""Fine-tuning: the head swap, freezing, checkpoints that load everywhere, resume equivalence, refusals."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch
from torch import nn

from resnet_xray.datasets import ReferenceOptions
from resnet_xray.errors import XrayError
from resnet_xray.model import build_model, load_model
from resnet_xray.train import finetune as F
from resnet_xray.train import optim, precision
from resnet_xray.train.checkpoint import load_training_state
from resnet_xray.train.data import make_loaders
from resnet_xray.interface import reset_classifier
from resnet_xray.train.evaluation import evaluate
from resnet_xray.train.finetune import fit

from .conftest import finetune_options

SIZE = 32
TINY = ReferenceOptions(classes=3, per_class=6, val_per_class=3, size=SIZE, seed=1)  # the `tiny` fixture's dataset
_opts = partial(finetune_options, epochs=2, optimizer="sgd", lr=0.05, warmup_epochs=0.5, recipe="classic")


def _data(root, **kw):
    return make_loaders(root, batch_size=4, workers=0, seed=0, **kw)


def _model(n: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes=n)


def test_reset_classifier_keeps_backbone_and_sizes_the_head():
    model = build_model("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    reset_classifier(model, 7)
    assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (512, 7)
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 7)


def test_freeze_backbone_trains_only_the_head(tiny):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, _data(tiny), _opts(epochs=1, freeze="backbone"))
    after = model.state_dict()
    for k in before:
        if k.startswith("fc."):
            assert not torch.equal(after[k], before[k]), k
        else:  # weights and BatchNorm statistics of frozen stages stay exactly as they were
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def test_gradual_unfreezes_one_stage_per_epoch():
    assert optim.frozen_stages("gradual", 0) == ["layer4", "layer3", "layer2", "layer1", "stem"]
    assert optim.frozen_stages("gradual", 1) == ["layer3", "layer2", "layer1", "stem"]
    assert optim.frozen_stages("gradual", 5) == []
    model = _model()
    optim.apply_freeze(model, optim.frozen_stages("gradual", 1))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}


def test_checkpoint_carries_classes_and_loads_everywhere(tiny, tmp_path):
    data = _data(tiny)
    model = _model()
    result = fit(model, data, _opts(epochs=1), out_dir=tmp_path)
    for name in ("best.pt", "last.pt", "metrics.csv", "confusion.png"):
        assert (tmp_path / name).exists(), name
    ck = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ck["arch"] == "resnet18" and ck["class_names"] == data.class_names
    assert ck["options"]["freeze"] == "none"
    loaded, meta = load_model(None, tmp_path / "best.pt")
    assert meta.class_names == data.class_names and meta.preprocessing.crop == SIZE
    # The loaded checkpoint scores exactly what the trained model scored.
    again = evaluate(loaded, data.val)
    assert again["accuracy"] == pytest.approx(result["final"]["accuracy"])
    torch.testing.assert_close(again["loss"], result["final"]["loss"], rtol=1e-5, atol=1e-6)
    with pytest.raises(XrayError, match="resnet18, not --arch resnet34"):
        load_model("resnet34", tmp_path / "best.pt")
    with pytest.raises(XrayError, match="classes"):
        load_training_state(tmp_path / "last.pt", arch="resnet18", class_names=["a", "b"], heads=None)
    with pytest.raises(XrayError, match="resnet34"):
        load_training_state(tmp_path / "last.pt", arch="resnet34", class_names=data.class_names, heads=None)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy") and len(lines) == 2


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch, and exactly at an epoch end (4 steps per epoch)
def test_resume_equals_uninterrupted(tiny, tmp_path, stop_at):
    opts = _opts(epochs=2)
    straight = _model()
    fit(straight, _data(tiny), opts, out_dir=tmp_path / "a")

    interrupted = _model()
    r = fit(interrupted, _data(tiny), dataclasses.replace(opts, stop_after_steps=stop_at), out_dir=tmp_path / "b")
    assert r["stopped_early"] and r["global_step"] == stop_at
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    r2 = fit(resumed, _data(tiny), opts, out_dir=tmp_path / "b", resume=True)
    assert r2["global_step"] == 8
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # Both runs visited the same epochs and agree on validation.
    ha = [row["val_accuracy"] for row in torch.load(tmp_path / "a" / "last.pt", weights_only=True)["history"]]
    hb = [row["val_accuracy"] for row in torch.load(tmp_path / "b" / "last.pt", weights_only=True)["history"]]
    assert ha == pytest.approx(hb)


def test_epoch_metrics_reach_tensorboard(tiny, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    result = fit(_model(), _data(tiny), _opts(epochs=2), out_dir=tmp_path)
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "val_accuracy", "lr", "images_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(row["epoch"], row[key]) for row in result["history"]]
        assert [s for s, _ in logged] == [1, 2], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key


def test_final_evaluation_reuses_the_last_epochs_unless_steps_came_after(tiny, monkeypatch):
    calls = []
    real = F._validate
    monkeypatch.setattr(F, "_validate", lambda run, model: calls.append(run.global_step) or real(run, model))
    model, data = _model(), _data(tiny)
    result = fit(model, data, _opts(epochs=2))
    assert len(calls) == 2  # one per epoch; the final one is the second epoch's, not a third pass
    again = evaluate(model, data.val)
    assert result["final"]["accuracy"] == again["accuracy"] == result["history"][-1]["val_accuracy"]
    assert result["final"]["loss"] == pytest.approx(again["loss"], rel=1e-6)
    assert torch.equal(result["final"]["confusion"], again["confusion"])
    calls.clear()
    steps = len(data.train)
    fit(_model(), data, _opts(epochs=2, stop_after_steps=steps + 1))  # stopped one step into epoch 2
    assert calls == [steps, steps + 1]  # epoch 1's, then the stopped weights evaluated afresh


def test_nonfinite_loss_stops_without_writing_nan_weights(tiny, tmp_path):
    model = _model()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    conv_before = model.conv1.weight.clone()
    with pytest.raises(XrayError, match="3 non-finite losses in a row"):
        fit(model, _data(tiny), _opts(epochs=1, max_nonfinite=3), out_dir=tmp_path)
    torch.testing.assert_close(model.conv1.weight, conv_before)  # every step was skipped
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_amp_without_native_bf16_warns_and_trains_fp32(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)  # fake an AVX2-only CPU's probe
    assert precision.resolve_precision(True, torch.device("cpu")).autocast_dtype is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no native bfloat16" in err[0] and "training in fp32" in err[0]
    with pytest.raises(XrayError, match="--amp: this CPU has no native bfloat16"):  # callers with another plan
        precision.resolve_precision(True, torch.device("cpu"), strict=True)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.resolve_precision(True, torch.device("cpu")).autocast_dtype == torch.bfloat16
    assert precision.resolve_precision(False, torch.device("cpu")).autocast_dtype is None
    assert precision.resolve_precision(True, torch.device("cuda")).use_scaler  # fp16 on CUDA always gets a GradScaler


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_amp_channels_last_trains_on_cpu(tiny):
    model = _model()
    before = model.fc.weight.clone()
    r = fit(model, _data(tiny), _opts(epochs=1, amp=True, channels_last=True))
    assert r["precision"] == "bf16 autocast"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.fc.weight.dtype == torch.float32 and not torch.equal(model.fc.weight, before)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_options_are_user_errors():
    # the library names the option; the CLI turns it into the flag (tests/test_options.py)
    for kw, option in ((dict(freeze="head"), "freeze"), (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"),
                       (dict(label_smoothing=1.0), "label_smoothing")):
        with pytest.raises(XrayError, match=f"^{option} "):
            _opts(**kw).validate()


def test_warmup_cosine_schedule_shape():
    s = optim.WarmupCosine(10, 110)
    assert s(0) == pytest.approx(0.01) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5) and s(110) == pytest.approx(0.0, abs=1e-12)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))


def test_progress_off_a_terminal_is_plain_lines(tiny, tmp_path, monkeypatch, capsys):
    """A log file gets 'epoch 1/1: step n/N ...' lines, never tqdm's carriage-return updates."""
    from resnet_xray.train import finetune as ft
    from resnet_xray.train import job

    monkeypatch.setattr(ft._LogBar, "__init__", _every_step(ft._LogBar.__init__))
    job.finetune(tiny, _opts(epochs=1, progress=True), tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err and "epoch 1/1: step 1/" in err


def _every_step(init):
    def patched(self, *a, **kw):
        init(self, *a, **{**kw, "every": 0.0})
    return patched
