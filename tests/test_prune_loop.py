"""The iterative loop: rounds reach the target, fine-tuning runs each round, an interrupted run resumes."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model, load_model
from resnet_xray.deploy.search import prune_with_ort as prune
from resnet_xray.pruning.loop import PruneOptions, Trainer
from resnet_xray.pruning.loop import STATE_FILE, round_targets

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, SIZE, SIZE, generator=g)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).long()  # learnable: red vs blue channel
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return types.SimpleNamespace(train=loader, val=loader, class_names=["blue", "red"], skipped=[], preprocessing=Preprocessing(resize=SIZE, crop=SIZE))


class TinyTrainer:
    """A few SGD steps and an exact accuracy: enough to show fine-tuning happens every round."""

    def __init__(self, interrupt_at_call: int | None = None):
        self.calls = 0
        self.interrupt_at_call = interrupt_at_call

    def finetune(self, model, data, epochs):
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        for _ in range(epochs):
            for x, y in data.train:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

    @staticmethod
    @torch.no_grad()
    def evaluate(model, data):
        model.eval()
        correct = n = 0
        loss = 0.0
        for x, y in data.val:
            out = model(x)
            correct += int((out.argmax(1) == y).sum())
            loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            n += len(y)
        return {"accuracy": correct / n, "loss": loss / n}

    def as_trainer(self) -> Trainer:
        return Trainer(self.finetune, self.evaluate)


def _model_and_meta():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2).eval()
    return model, ModelMeta("resnet18", "tiny-test-weights", ["blue", "red"], Preprocessing(resize=SIZE, crop=SIZE), True)


def test_round_targets_spread_the_removal_evenly():
    assert round_targets(PruneOptions(target_macs=0.5, steps=2)) == [0.75, 0.5]
    assert round_targets(PruneOptions(target_macs=0.4, steps=3))[-1] == pytest.approx(0.4)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_target_macs_outside_open_unit_interval_is_refused(bad, tmp_path):
    model, meta = _model_and_meta()
    with pytest.raises(XrayError, match="target_macs .*: must lie strictly between 0 and 1"):
        prune(model, meta, PruneOptions(target_macs=bad, out=str(tmp_path)))


def test_taylor_without_data_is_refused(tmp_path):
    model, meta = _model_and_meta()
    with pytest.raises(XrayError, match="taylor"):
        prune(model, meta, PruneOptions(importance="taylor", out=str(tmp_path)))


@pytest.mark.slow
def test_two_rounds_with_finetuning_then_resume_after_interrupt(tmp_path):
    model, meta = _model_and_meta()
    data = _data()
    opts = PruneOptions(target_macs=0.5, steps=2, importance="taylor", finetune_epochs=1, latency_repeats=2, taylor_batches=2, out=str(tmp_path))
    interrupted = TinyTrainer(interrupt_at_call=2)  # dies while fine-tuning round 2
    with pytest.raises(KeyboardInterrupt):
        prune(model, meta, opts, data, trainer=interrupted.as_trainer(), log=lambda s: None)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert [r["round"] for r in state["rounds"]] == [1]
    round1 = (tmp_path / "round_01.pt").read_bytes()
    assert not (tmp_path / "round_02.pt").exists()

    lines: list[str] = []
    resumed = TinyTrainer()
    result = prune(model, meta, opts, data, trainer=resumed.as_trainer(), log=lines.append)
    assert any("resuming after round 1/2" in s for s in lines)
    assert resumed.calls == 1  # only round 2 was fine-tuned again
    assert (tmp_path / "round_01.pt").read_bytes() == round1  # nothing completed was redone
    assert [r["round"] for r in result.rounds] == [1, 2]
    base = result.baseline["macs"]
    assert result.rounds[0]["macs"] / base == pytest.approx(0.75, abs=0.04)
    assert result.rounds[1]["macs"] / base == pytest.approx(0.5, abs=0.04)
    assert result.rounds[1]["params"] < result.rounds[0]["params"] < result.baseline["params"]
    for r in result.rounds:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_pruned"] <= 1.0
        assert r["eager_ms"] > 0 and r["session"] == result.baseline["session"]  # all timed in this process
        assert r["ort_ms"] > 0 and r["ort_max_abs_diff"] < 1e-4  # each round exports and agrees with eager
    # the speed-ups compare latencies timed round-robin with the baseline, after warm-up, in this process
    assert all(r["timing"].startswith("round-robin") for r in [result.baseline, *result.rounds])

    final, fmeta = load_model(None, result.final_checkpoint)
    r2, _ = load_model(None, tmp_path / "round_02.pt")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(final(x), r2(x), atol=0, rtol=0)
    assert fmeta.class_names == ["blue", "red"]
    assert fmeta.options["importance"] == "taylor"
    assert [c.kind for c in fmeta.changes] == ["classifier", "pruned_widths"]
    # Accuracy the tiny trainer reports for the saved model is what the loop recorded.
    assert TinyTrainer.evaluate(final, data)["accuracy"] == pytest.approx(result.rounds[-1]["accuracy"])
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 0
    assert "conv5_x" in result.stage_table and "round" in result.rounds_table
    options_file = json.loads((tmp_path / "prune_options.json").read_text())
    assert options_file["options"]["target_macs"] == 0.5 and options_file["input_size"] == SIZE

    with pytest.raises(XrayError, match="different options"):
        prune(model, meta, PruneOptions(**{**opts.to_dict(), "steps": 3}), data, trainer=resumed.as_trainer(), log=lines.append)


def test_class_count_mismatch_is_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5).eval()
    meta = ModelMeta("resnet18", "w", [str(i) for i in range(5)], Preprocessing(resize=SIZE, crop=SIZE), True)
    with pytest.raises(XrayError, match="5 outputs but --data has 2 classes"):
        prune(model, meta, PruneOptions(out=str(tmp_path)), _data(), trainer=TinyTrainer().as_trainer())


def test_taylor_importance_comes_from_the_data_gradients():
    from resnet_xray.pruning.analyze import AnalyzeOptions, analyze_importance

    model, _ = _model_and_meta()
    opts = AnalyzeOptions(importance="taylor", ratio=0.5, round_to=1, taylor_batches=2)
    groups = analyze_importance(model, opts, _data())
    assert all(p.grad is None for p in model.parameters())  # the caller's model is left clean
    first = next(g for g in groups if g.name == "layer1.0.conv1")
    assert len(first.dropped) == 32 and len(set(first.scores)) > 1
    # Different data, different gradients, different ranking: the scores are not weight norms.
    flipped = _data()
    flipped.train = DataLoader(TensorDataset(*[t[:16] for t in flipped.train.dataset.tensors[:1]], 1 - flipped.train.dataset.tensors[1][:16]), batch_size=16)
    other = next(g for g in analyze_importance(model, opts, flipped) if g.name == "layer1.0.conv1")
    assert other.scores != first.scores


def test_finetune_checkpoints_lend_their_recipe_to_recovery(monkeypatch):
    from resnet_xray.pruning import loop
    from resnet_xray.train import finetune as F
    from resnet_xray.train import precision
    from resnet_xray.train.recipe import FinetuneOptions

    trained = FinetuneOptions(optimizer="adamw", amp=True, channels_last=True, min_crop_scale=0.8, label_smoothing=0.05).to_dict()
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = loop.training_recipe(trained)
    assert recipe == {"optimizer": "adamw", "weight_decay": None, "label_smoothing": 0.05, "amp": True,
                      "channels_last": True, "min_crop_scale": 0.8}
    # What the pruner hands to fit is that recipe, with its own epochs, batch size and lr on top.
    seen = []
    monkeypatch.setattr(F, "fit", lambda model, data, options, **kw: seen.append(options))
    loop.default_trainer(PruneOptions(lr=3e-4, batch_size=8), "resnet18", recipe).finetune(None, None, 2)
    (o,) = seen
    assert (o.optimizer, o.amp, o.channels_last, o.label_smoothing, o.lr, o.epochs, o.batch_size) == ("adamw", True, True, 0.05, 3e-4, 2, 8)
    meta = ModelMeta("resnet18", "ckpt", ["a", "b"], Preprocessing(resize=SIZE, crop=SIZE), True, options=trained)
    assert loop.loader_options(meta) == {"min_crop_scale": 0.8}
    # A recorded peak learning rate is halved for recovery; an explicit --lr still wins.
    assert loop.training_recipe({**trained, "lr": 1e-3})["lr"] == pytest.approx(5e-4)
    seen.clear()
    loop.default_trainer(PruneOptions(), "resnet18", loop.training_recipe({**trained, "lr": 1e-3})).finetune(None, None, 1)
    assert seen[0].lr == pytest.approx(5e-4)
    # A CPU without bf16 still prunes: the recipe drops amp instead of refusing.
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert loop.training_recipe(trained)["amp"] is False
    # Pruned checkpoints record PruneOptions, and plain weights record nothing: no recipe.
    assert loop.training_recipe(PruneOptions().to_dict()) == {} and loop.training_recipe(None) == {}
