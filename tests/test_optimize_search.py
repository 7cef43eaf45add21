"""optimize's searched pruning depth and the distillation that recovers each step, on resnet18 at 48 px."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from resnet_xray.cli import main
from resnet_xray.deploy.optimize import OptimizeOptions, optimize
from resnet_xray.options import OptionError
from resnet_xray.train.distill import Distillation, distill_loss


def test_the_distillation_loss_is_the_softened_kl_scaled_by_t_squared() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4) * 3
    p = torch.softmax(t / 2, 1)
    by_hand = (p * (torch.log(p) - torch.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert math.isclose(float(distill_loss(s, t, 2.0)), float(by_hand), rel_tol=1e-5)
    assert float(distill_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


class _Teacher(nn.Module):
    """A fixed, confident teacher: its class scores are a linear map of the image's mean colour, times 5."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.w = nn.Parameter(torch.randn(3, classes) * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.w


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A reference dataset and resnet18 fine-tuned on it for a few epochs (well above chance)."""
    root = tmp_path_factory.mktemp("search")
    assert main(["make-dataset", str(root / "data"), "--classes", "3", "--per-class", "16", "--val-per-class", "8", "--size", "48"]) == 0
    assert main(["finetune", str(root / "data"), "--arch", "resnet18", "--weights", "random", "--epochs", "3", "--batch-size", "16",
                 "--out", str(root / "ft"), "--no-progress"]) == 0
    return root


def test_fit_with_a_teacher_drives_the_distillation_loss_down(task) -> None:
    from resnet_xray.model import build_model
    from resnet_xray.train.data import make_loaders
    from resnet_xray.train.finetune import fit
    from resnet_xray.train.recipe import FinetuneOptions

    data = make_loaders(task / "data", image_size=48, batch_size=8, workers=0)
    student = build_model("resnet18", num_classes=3)
    hist = fit(student, data, FinetuneOptions(arch="resnet18", epochs=4, batch_size=8, lr=2e-3, workers=0, progress=False),
               pretrained=False, distill=Distillation(_Teacher(3), weight=1.0))["history"]
    kd = [h["train_distill_loss"] for h in hist]
    assert all(k >= 0 for k in kd) and kd[-1] < 0.7 * kd[0], kd


def _opts(root, out, **kw) -> OptimizeOptions:
    # no INT8 agreement target: these runs test the search, and a repair of the would-be winner would take most of their time
    base = dict(data=str(root / "data"), out=str(out), prune_steps=1, finetune_epochs=0, engines=("ort",), calib_images=4,
                repeats=1, rounds=1, threads=1, batch_size=8, progress=False, mixed_precision=False, min_agreement=0.0)
    return OptimizeOptions(**{**base, **kw})


def test_the_search_stops_at_the_first_share_over_budget(task, tmp_path) -> None:
    # 5% of the MACs with no fine-tuning leaves a model near chance: with no points to lose, the search must stop there
    out = tmp_path / "o"
    res = optimize(str(task / "ft" / "best.pt"), _opts(task, out, search=(0.9, 0.05, 0.04), max_drop=0.0), log=lambda s: None)
    tried = res.search
    assert 1 <= len(tried) < 3
    assert [s["within_budget"] for s in tried] == [True] * (len(tried) - 1) + [False]
    assert tried[-1]["drop_points"] > 0 and all(s["drop_points"] <= 0 for s in tried[:-1])
    assert not (out / "prune" / "macs_0.04").exists()  # never tried
    report = json.loads((out / "optimize.json").read_text())["search"]
    assert [s["macs_ratio"] for s in report] == [0.9, 0.05][: len(tried)]
    assert all(set(s) >= {"macs_ratio", "accuracy", "distill", "within_budget"} for s in report)
    # the pruned candidates are the deepest share within budget, or there are none
    pruned = {c.macs_rel for c in res.candidates if c.pruned}
    assert pruned == ({tried[-2]["macs_rel"]} if len(tried) == 2 else set())


def test_a_resumed_search_does_not_redo_finished_shares(task, tmp_path, monkeypatch) -> None:
    import resnet_xray.pruning.loop as loop

    real, calls = loop.prune, []

    def killed_on_the_second_share(model, meta, options, data, **kw):
        calls.append(options.out)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the run were killed while pruning the second share
        return real(model, meta, options, data, **kw)

    monkeypatch.setattr(loop, "prune", killed_on_the_second_share)
    out = tmp_path / "o"
    opts = _opts(task, out, search=(0.7, 0.5), max_drop=100.0, finetune_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        optimize(str(task / "ft" / "best.pt"), opts, log=lambda s: None)
    first = out / "prune" / "macs_0.70" / "pruned.pt"
    stamp = first.stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(loop, "prune", lambda *a, **kw: (calls.append(a[2].out), real(*a, **kw))[1])
    res = optimize(str(task / "ft" / "best.pt"), OptimizeOptions(**{**opts.__dict__, "resume": True}), log=lambda s: None)
    assert calls == [str(out / "prune" / "macs_0.50")]  # only the unfinished share
    assert first.stat().st_mtime_ns == stamp
    assert [s["macs_ratio"] for s in res.search] == [0.7, 0.5] and all(s["distill"] for s in res.search)
    assert {round(c.macs_rel, 6) for c in res.candidates if c.pruned} == {round(res.search[-1]["macs_rel"], 6)}


def test_search_options_refuse_what_cannot_be_searched(task) -> None:
    for bad in ((0.5, 0.6), (0.5, 1.2), ()):
        with pytest.raises(OptionError, match="search"):
            OptimizeOptions(data=str(task / "data"), search=bad)
    with pytest.raises(OptionError, match="target-macs|choose one"):
        OptimizeOptions(data=str(task / "data"), search=(0.5,), target_macs=0.5)
