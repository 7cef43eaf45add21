"""Which ``optimize`` candidate wins: the rules, written once, that the run, its tests and the benchmark share.

A candidate is one deployable (or comparison-only) model: an engine, a precision, pruned or
not, with what was measured of it. The winner is the fastest within the accuracy budget; INT8
slower than FP32 is never recommended; a latency tie goes to the candidate that agrees more
with the FP32 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..units import pct


@dataclass
class Candidate:
    name: str  # e.g. "pruned openvino int8 (nncf)"
    engine: str  # eager | onnxruntime | openvino | torch
    precision: str  # fp32 | bf16 | int8 | int8+fp32 (mixed) | int8+bf16 (float layers in bf16)
    pruned: bool
    macs_rel: float  # MACs against the unpruned model
    path: str | None  # the artefact (None: not deployable as a file, e.g. eager or torch FX)
    accuracy: float | None = None  # top-1 on the val images
    agreement: float | None = None  # top-1 agreement with the FP32 checkpoint
    check: dict[str, Any] | None = None  # compare() against the FP32 checkpoint
    latency_ms: float | None = None  # median batch-1
    iqr_ms: float | None = None
    speedup: float | None = None  # vs the eager FP32 checkpoint, same rounds
    throughput_img_s: float | None = None  # images/s in the engine's throughput mode (measured for --objective throughput)
    fp32_layers: list[str] = field(default_factory=list)  # layers mixed precision left in FP32
    # top-1 agreement with its own FP32 model (pruned or not) on the control images: what --min-agreement judges INT8 by
    control_agreement: float | None = None
    val_agreement: float | None = None  # the same on the val images: what the result is reported by
    kept_float: list[str] = field(default_factory=list)  # PyTorch layers the INT8 repair left in float
    repair: dict[str, Any] | None = None  # that repair: target, method, agreement before and after, and why each layer
    disagreements: list[str] = field(default_factory=list)  # val images whose top-1 differs from the checkpoint's (the first 20)
    status: str = "pending"  # winner | kept | dropped
    reason: str = ""

    @property
    def deployable(self) -> bool:
        return self.path is not None and self.engine in ("onnxruntime", "openvino")



# Latencies closer than this are a tie: the NNCF and QDQ OpenVINO INT8 files of one model swapped places by 1-3%
# between reruns of the same timing. A tie goes to the candidate that agrees more with the FP32 model.
LATENCY_TIE = 0.03


def cost_ms(c: Candidate, objective: str = "latency") -> float:
    """What ``objective`` minimises: batch-1 latency, or time per image in throughput mode (ms; 1e9 when unmeasured)."""
    if objective == "throughput":
        return 1e3 / c.throughput_img_s if c.throughput_img_s else 1e9
    return c.latency_ms or 1e9


def fastest(cands: list[Candidate], objective: str = "latency") -> Candidate:
    """The fastest candidate, where a tie (:data:`LATENCY_TIE`) goes to the best top-1 agreement, then accuracy."""
    best = min(cost_ms(c, objective) for c in cands)
    tied = [c for c in cands if cost_ms(c, objective) <= best * (1 + LATENCY_TIE)]
    return max(tied, key=lambda c: (c.agreement or 0.0, c.accuracy or 0.0, -cost_ms(c, objective)))


def pick(cands: list[Candidate], base_acc: float, max_drop: float, objective: str = "latency",
         min_agreement: float = 0.0) -> Candidate | None:
    """Mark every candidate winner, kept or dropped, with why; return the winner (None: nothing within budget).

    The winner is the fastest deployable candidate within ``max_drop`` accuracy points of the FP32
    checkpoint. With ``min_agreement``, INT8 and bf16 must also agree that well with their own FP32
    model on the control images, where that was measured.
    """
    floor = base_acc - max_drop / 100
    ok: list[Candidate] = []
    fp32_best: dict[str, float] = {}
    for c in cands:
        if c.precision == "fp32" and cost_ms(c, objective) < 1e9:
            fp32_best[str(c.pruned)] = min(fp32_best.get(str(c.pruned), 1e9), cost_ms(c, objective))
    for c in cands:
        if c.check and not c.check.get("finite", True):
            c.status, c.reason = "dropped", "non-finite outputs"
        elif c.accuracy is None or c.accuracy < floor - 1e-12:
            c.status, c.reason = "dropped", f"loses {(base_acc - (c.accuracy or 0)) * 100:.1f} points (budget {max_drop})"
        elif min_agreement and c.control_agreement is not None and c.control_agreement < min_agreement:
            c.status, c.reason = "dropped", (f"agrees {pct(c.control_agreement)} with its FP32 model on the control "
                                             f"images, under the {pct(min_agreement)} target")
        elif not c.deployable:
            c.status, c.reason = "kept", "for comparison: no file classify --model can load"
        elif c.precision != "fp32" and cost_ms(c, objective) < 1e9 and cost_ms(c, objective) >= fp32_best.get(str(c.pruned), 1e9):
            # INT8 (or bf16) slower than FP32 on this machine is never recommended
            c.status, c.reason = "dropped", f"{'INT8' if 'int8' in c.precision else c.precision} slower than FP32 on this CPU"
        else:
            c.status, c.reason = "kept", "within budget"
            ok.append(c)
    if not ok:
        return None
    win = fastest(ok, objective)
    quickest = min(ok, key=lambda c: cost_ms(c, objective))
    win.status, win.reason = "winner", "fastest within budget"
    if win is not quickest:
        win.reason = (f"within {LATENCY_TIE:.0%} of the fastest ({quickest.name}) and agrees more with FP32 "
                      f"({pct(win.agreement)} against {pct(quickest.agreement)})")
    for c in ok:
        if c is not win:
            what = "latency" if objective == "latency" else "time per image in throughput mode"
            c.reason = f"within budget, {cost_ms(c, objective) / cost_ms(win, objective):.2f}x the winner's {what}"
    return win


def to_repair(cands: list[Candidate], base_acc: float, max_drop: float, objective: str, min_agreement: float) -> Candidate | None:
    """The INT8 candidate ``optimize`` repairs, or None.

    It is the winner without the agreement target, where it misses that target on the control
    images and no candidate that meets the target is as fast (within :data:`LATENCY_TIE`).
    Marks statuses as :func:`pick` does; the final pick marks them again.
    """
    would = pick(cands, base_acc, max_drop, objective)
    if (would is None or "int8" not in would.precision or would.control_agreement is None
            or would.control_agreement >= min_agreement):
        return None
    held = pick(cands, base_acc, max_drop, objective, min_agreement)
    if held is not None and cost_ms(held, objective) <= cost_ms(would, objective) * (1 + LATENCY_TIE):
        return None
    return would

