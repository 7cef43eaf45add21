"""One equivalence check for every model transformation: fuse, export, INT8, TensorRT, bench rows.

``compare(reference, candidate, inputs, tolerance)`` runs both on the same inputs and
returns an :class:`Equivalence`: max/mean abs diff of the logits, top-1 agreement,
top-5 overlap, mean KL(reference || candidate) of the softmax, and whether the
candidate passed. Non-finite outputs never pass, whatever the tolerance: a model
with NaN weights agrees with itself on ``argmax`` (index 0 everywhere) and would
otherwise look perfect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


MAX_LISTED = 100  # disagreeing inputs listed by index; the agreement figure counts them all


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet to count as the same model."""

    atol: float = 1e-3  # absolute slack on any logit; inf: do not gate on logits at all (INT8)
    rtol: float = 1e-4  # plus this share of the reference's largest |logit|
    min_top1: float = 1.0  # required top-1 agreement (share of inputs with the same argmax)
    max_kl: float = math.inf  # mean KL(reference || candidate) allowed, in nats

    @classmethod
    def float32(cls) -> Tolerance:
        """Same arithmetic, different order (fusion, ONNX Runtime, OpenVINO FP32): logits within ~1e-3."""
        return cls()

    @classmethod
    def reduced_precision(cls, min_top1: float = 0.9) -> Tolerance:
        """INT8/FP16: logits move by design, so only the decisions are gated."""
        return cls(atol=math.inf, rtol=0.0, min_top1=min_top1)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Equivalence:
    """How far a candidate's logits are from the reference's, and whether that is within tolerance."""

    reference: str
    candidate: str
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float  # of the reference: the scale rtol is taken against
    top1_agreement: float
    top5_overlap: float  # mean share of the two top-5 sets in common
    kl: float  # mean KL(reference || candidate) of the softmax, nats
    finite: bool  # every output of both was finite
    tolerance: Tolerance = field(default_factory=Tolerance)
    # Per input: INT8 error is rarely spread evenly, so say how the typical input fares and which ones flip.
    median_input_diff: float = 0.0  # median over inputs of each input's max abs logit diff
    disagreements: list[int] = field(default_factory=list)  # indices of inputs whose top-1 differs (the first 100)
    passed: bool = False
    reason: str = ""  # why it failed; empty when passed

    @property
    def limit(self) -> float:
        return self.tolerance.atol + self.tolerance.rtol * self.max_abs_logit

    def summary(self) -> str:
        """One line for people: the figures, then PASSED or FAILED (why)."""
        diff = f"max abs diff {_fmt(self.max_abs_diff)}"
        if math.isfinite(self.limit):
            diff += f" (limit {_fmt(self.limit)})"
        verdict = "passed" if self.passed else f"FAILED: {self.reason}"
        return (f"{self.candidate} vs {self.reference} on {self.images} input(s): {diff}, top-1 agreement "
                f"{self.top1_agreement:.1%}, top-5 overlap {self.top5_overlap:.1%}, KL {_fmt(self.kl)}; {verdict}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tolerance"] = self.tolerance.to_dict()
        # JSON has no NaN/Inf: a non-finite figure is reported as null (and ``finite`` says why)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def as_logits(out: Any) -> np.ndarray:
    """Logits as a float64 array from whatever a runner returns (tensor, array, dict of heads, tuple)."""
    if isinstance(out, dict):
        out = out.get("class", next(iter(out.values())))
    elif isinstance(out, (list, tuple)):
        out = out[0]
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float64).reshape(np.shape(out)[0], -1)


def top1(run: Callable[[Any], Any], batches: Iterable[Any]) -> np.ndarray:
    """Each image's top-1 class from ``run`` (a batch in, what :func:`as_logits` reads out) over ``batches``."""
    return np.concatenate([as_logits(run(x)).argmax(1) for x in batches])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of images whose top-1 classes agree."""
    return float((np.asarray(a) == np.asarray(b)).mean())


def _run(fn: Callable[[Any], Any], batches: list[Any]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([as_logits(fn(b)) for b in batches])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare(
    reference: Any,
    candidate: Any,
    inputs: Any = None,
    tolerance: Tolerance | None = None,
    *,
    names: tuple[str, str] = ("reference", "candidate"),
) -> Equivalence:
    """Compare two models (or two sets of logits) on the same inputs.

    Args:
        reference: a callable (``nn.Module``, ONNX/OpenVINO runner) mapping a batch to
            logits, or, with ``inputs=None``, the reference logits themselves.
        candidate: the same for the transformed model.
        inputs: one ``NxCxHxW`` batch (tensor or array) or an iterable of batches; each
            runner gets them in its own type as given. None: ``reference``/``candidate`` are logits.
        tolerance: what counts as equal (default :meth:`Tolerance.float32`).
        names: labels for the two sides in :meth:`Equivalence.summary`.

    Returns:
        The :class:`Equivalence`; ``passed`` is False on any non-finite output, a top-1
        agreement below ``min_top1``, a KL above ``max_kl`` or a logit beyond ``atol + rtol * max|ref|``.
    """
    tol = tolerance or Tolerance.float32()
    if inputs is None:
        ref, cand = as_logits(reference), as_logits(candidate)
    else:
        batches = [inputs] if hasattr(inputs, "shape") else list(inputs)
        ref, cand = _run(reference, batches), _run(candidate, batches)
    if ref.shape != cand.shape:
        raise ValueError(f"{names[1]} gives logits of shape {cand.shape}, {names[0]} {ref.shape}")
    finite = bool(np.isfinite(ref).all() and np.isfinite(cand).all())
    n = int(ref.shape[0])
    with np.errstate(all="ignore"):
        diff = np.abs(ref - cand)
        max_abs_diff = float(diff.max()) if n else 0.0
        mean_abs_diff = float(diff.mean()) if n else 0.0
        max_abs_logit = float(np.abs(ref).max()) if n else 0.0
        top1 = float((ref.argmax(1) == cand.argmax(1)).mean()) if n else 1.0
        k = min(5, ref.shape[1])
        ta, tb = np.argsort(-ref, 1)[:, :k], np.argsort(-cand, 1)[:, :k]
        top5 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ta, tb)])) if n else 1.0
        lp, lq = _log_softmax(ref), _log_softmax(cand)
        kl = float((np.exp(lp) * (lp - lq)).sum(1).mean()) if n else 0.0
        median_input = float(np.median(diff.max(1))) if n else 0.0
    if not finite:
        max_abs_diff = mean_abs_diff = kl = median_input = math.nan
    flips = np.flatnonzero(ref.argmax(1) != cand.argmax(1))[:MAX_LISTED].tolist() if n else []
    eq = Equivalence(names[0], names[1], n, max_abs_diff, mean_abs_diff, max_abs_logit, top1, top5, kl, finite, tol,
                     median_input_diff=median_input, disagreements=[int(i) for i in flips])
    eq.reason = _failure(eq)
    eq.passed = not eq.reason
    return eq


def _failure(eq: Equivalence) -> str:
    tol = eq.tolerance
    if eq.images == 0:
        return "no inputs to compare on"
    if not eq.finite:
        return "non-finite outputs (NaN or Inf): the weights or the conversion are broken"
    if math.isfinite(eq.limit) and eq.max_abs_diff > eq.limit:
        return f"logits differ by {eq.max_abs_diff:.3g}, more than {eq.limit:.3g}"
    if eq.top1_agreement < tol.min_top1:
        return f"top-1 agreement {eq.top1_agreement:.1%} is below {tol.min_top1:.1%}"
    if eq.kl > tol.max_kl:
        return f"KL {eq.kl:.3g} is above {tol.max_kl:.3g}"
    return ""


def compare_many(runners: dict[str, Callable[[Any], Any]], batches: Iterable[Any], tolerances: dict[str, Tolerance] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, Equivalence]]:
    """Run every runner on the same batches once; compare each to the first.

    Returns the logits of each runner and an :class:`Equivalence` per non-reference runner.
    """
    names = list(runners)
    logits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    import torch

    with torch.inference_mode():
        for b in batches:
            for n in names:
                logits[n].append(as_logits(runners[n](b)))
    cat = {n: np.concatenate(v) if v else np.zeros((0, 1)) for n, v in logits.items()}
    ref = names[0]
    tolerances = tolerances or {}
    eqs = {n: compare(cat[ref], cat[n], None, tolerances.get(n), names=(ref, n)) for n in names[1:]}
    return cat, eqs


__all__ = ["Equivalence", "Tolerance", "agreement", "as_logits", "compare", "compare_many", "top1"]


def output_error(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How far ``candidate`` lies from ``reference``, one layer's output or a model's: relative L2, cosine, max |diff|
    and max |diff| / max |reference|.

    Float32 dot products (BLAS), so a ResNet-50's 50 outputs over 100 images cost seconds, not minutes;
    the cosine is taken from the squared difference, which keeps its digits near 1.
    """
    a = np.ascontiguousarray(reference, dtype=np.float32).ravel()
    b = np.ascontiguousarray(candidate, dtype=np.float32).ravel()
    d = a - b
    aa, bb, dd = float(np.dot(a, a)), float(np.dot(b, b)), float(np.dot(d, d))
    if not (math.isfinite(aa) and math.isfinite(bb) and math.isfinite(dd)):
        return {"rel_l2": math.inf, "cosine": math.nan, "max_abs": math.inf, "max_rel": math.inf}
    rel = math.sqrt(dd / aa) if aa > 0 else (0.0 if dd == 0 else math.inf)
    cosine = (aa + bb - dd) / (2 * math.sqrt(aa * bb)) if aa > 0 and bb > 0 else (1.0 if aa == bb else 0.0)
    top = float(np.abs(a).max()) if a.size else 0.0
    worst = float(np.abs(d).max()) if d.size else 0.0
    return {"rel_l2": rel, "cosine": max(-1.0, min(1.0, cosine)), "max_abs": worst,
            "max_rel": worst / top if top > 0 else (0.0 if worst == 0 else math.inf)}
