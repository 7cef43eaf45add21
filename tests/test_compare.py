"""compare(): one equivalence result for every transformation; NaN never passes."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from resnet_xray.compare import Tolerance, compare


def test_identical_models_pass_and_shifted_logits_fail() -> None:
    torch.manual_seed(0)
    m = torch.nn.Linear(8, 5).eval()
    x = torch.randn(16, 8)
    eq = compare(m, m, x)
    assert eq.passed and eq.max_abs_diff == 0.0 and eq.top1_agreement == 1.0 and eq.top5_overlap == 1.0 and eq.kl == 0.0
    shifted = compare(m, lambda t: m(t) + 0.5, x)  # same argmax, logits off by 0.5
    assert not shifted.passed and "logits differ" in shifted.reason and shifted.top1_agreement == 1.0
    assert compare(m, lambda t: m(t) + 0.5, x, Tolerance.reduced_precision()).passed


def test_nan_outputs_never_pass_and_serialise_as_null() -> None:
    ref = np.random.default_rng(0).standard_normal((4, 10))
    nan = np.full_like(ref, np.nan)
    # argmax of all-NaN rows is 0 everywhere: agreement alone would look fine for a NaN-vs-NaN pair
    for a, b in ((ref, nan), (nan, nan)):
        eq = compare(a, b, tolerance=Tolerance(atol=math.inf, rtol=0, min_top1=0.0))
        assert not eq.passed and not eq.finite and "non-finite" in eq.reason
        d = eq.to_dict()
        json.dumps(d, allow_nan=False)  # strict JSON: NaN became null
        assert d["max_abs_diff"] is None and d["kl"] is None and d["passed"] is False


def test_top1_gate_and_batches() -> None:
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] * 5.0
    cand = ref.copy()
    cand[0] = np.eye(4)[1] * 5.0  # one of eight decisions differs
    eq = compare(ref, cand, tolerance=Tolerance.reduced_precision(0.9))
    assert eq.top1_agreement == 7 / 8 and not eq.passed and "top-1 agreement" in eq.reason
    assert compare(ref, cand, tolerance=Tolerance.reduced_precision(0.8)).passed
    m = torch.nn.Linear(3, 4)
    batches = [torch.randn(2, 3), torch.randn(3, 3)]
    assert compare(m, m, batches).images == 5


def test_per_input_figures_name_the_inputs_that_flip_and_the_typical_error() -> None:
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] * 5.0
    cand = ref + 0.01  # every input moves a little...
    cand[5] = np.eye(4)[3] * 30.0  # ...one moves a lot and flips
    cand[6] = np.eye(4)[0] * 5.0  # another flips with a small change of scale
    eq = compare(ref, cand, tolerance=Tolerance.reduced_precision(0.0))
    assert eq.disagreements == [5, 6] and eq.top1_agreement == 6 / 8
    assert eq.max_abs_diff == 30.0 and math.isclose(eq.median_input_diff, 0.01)  # the worst input is not the typical one
    d = eq.to_dict()
    assert d["disagreements"] == [5, 6] and json.loads(json.dumps(d))["median_input_diff"] == eq.median_input_diff
    assert compare(ref, ref).disagreements == []
