"""How deep ``optimize`` prunes: down a ladder of MAC shares until one loses more than the budget.

Each step prunes on from the previous step's model (not from scratch), fine-tunes, and is
scored on the val split against the unpruned checkpoint. The unpruned model teaches every
fine-tuning (knowledge distillation) unless turned off. Every finished step is recorded in
the run's state, so a resumed search never redoes one; a step killed half-way resumes
inside :func:`resnet_xray.pruning.loop.prune` from its last finished round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model import load_model
from ..pruning import loop as prune_loop
from ..pruning.loop import PruneOptions, PruneResult, Trainer, default_trainer, prune_loaders, training_recipe
from .onnx import exported_runner

# The ladder benchmarks/bench_optimize.py and the optimize guide use: each share keeps about two thirds of what is left. Four
# steps fit a searched run of the reference ResNet-50 in 45 minutes on 2 cores, and 15% of the MACs is what
# a 10x gain over eager FP32 takes on an AVX2 CPU whose INT8 gains little (docs/optimize.md).
LADDER = (0.5, 0.33, 0.22, 0.15)


def prune_with_ort(model: torch.nn.Module, meta: Any, options: PruneOptions, data: Any = None, *, trainer: Trainer | None = None,
                   log: Callable[[str], None] = print) -> PruneResult:
    """:func:`resnet_xray.pruning.loop.prune` with its ONNX Runtime latency column, which needs deploy's exporter."""
    return prune_loop.prune(model, meta, options, data, trainer=trainer, log=log, ort=exported_runner)


@dataclass
class Step:
    """One MAC share tried, as ``optimize.json`` records it."""

    macs_ratio: float  # the share asked for
    macs_rel: float  # the share reached (round_to keeps widths whole)
    accuracy: float  # FP32 top-1 on the val split after fine-tuning
    drop_points: float  # against the unpruned checkpoint, on the same split
    distill: bool
    within_budget: bool
    checkpoint: str  # relative to the optimize output folder
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def search_depth(run: Any, model: torch.nn.Module, meta: Any, size: int) -> tuple[list[Step], tuple[torch.nn.Module, float] | None]:
    """Prune down ``run.opts``' ladder; the steps tried, and the deepest model within budget with its MACs share (or None).

    ``run`` is optimize's run state: ``opts``, ``out``, ``log``, ``stage``, ``done`` and ``mark``.
    """
    opts = run.opts
    ladder = tuple(opts.search) if opts.search else (opts.target_macs,)
    run.stage(f"prune down {', '.join(f'{r:.0%}' for r in ladder)} of the MACs by {opts.importance} importance, "
              f"{opts.finetune_epochs} fine-tuning epoch(s) a round{', distilled from the unpruned model' if opts.distill else ''}; "
              f"stop at the first share that loses more than {opts.max_drop} points")
    # a resumed run judges the finished shares by today's budget: a tighter one stops earlier, a looser one goes on
    steps = [Step(**{**s, "within_budget": s["drop_points"] <= opts.max_drop + 1e-9}) for s in (run.done("search") or [])]
    first = _prune_options(opts, ladder[0], opts.prune_steps, size, run.out / "prune" / _folder(ladder[0]))
    # one recipe for every step: the checkpoint's own (a pruned step's checkpoint records pruning options, not training)
    trainer = default_trainer(first, meta.arch, training_recipe(meta.options), teacher=model if opts.distill else None)
    data = prune_loaders(opts.data, meta, first)  # the checkpoint's crop scale: heavier crops than it trained with cost accuracy
    current, cur_meta, cur_rel, best = model, meta, 1.0, None
    pace = _Pace(opts.prune_steps, len(ladder))
    for i, ratio in enumerate(ladder):
        if i < len(steps):
            run.log(f"  search: {ratio:.0%} done before ({_said(steps[i])})")
        else:
            run.log(f"  search: step {i + 1}/{len(ladder)}: {ratio:.0%} of the MACs{pace.eta(i)}")
            popts = first if i == 0 else _prune_options(opts, ratio / cur_rel, 1, size, run.out / "prune" / _folder(ratio))
            t = time.perf_counter()
            res = prune_loop.prune(current, cur_meta, popts, data, trainer=trainer, log=lambda s: run.log(f"  prune: {s}"))
            pace.ran(popts.steps, time.perf_counter() - t)
            if run.done("search_baseline") is None:
                run.mark("search_baseline", float(res.baseline["accuracy"]))
            base = run.done("search_baseline")
            acc = float(res.rounds[-1]["accuracy"])
            drop = (base - acc) * 100
            steps.append(Step(ratio, cur_rel * float(res.rounds[-1]["macs_rel"]), acc, round(drop, 3), opts.distill,
                              drop <= opts.max_drop + 1e-9, str(res.final_checkpoint.relative_to(run.out)),
                              round(time.perf_counter() - t, 1)))
            run.mark("search", [s.to_dict() for s in steps])
            run.log(f"  search: {ratio:.0%} of the MACs: {_said(steps[i])}")
        current, cur_meta = load_model(None, run.out / steps[i].checkpoint)
        cur_rel = steps[i].macs_rel
        if not steps[i].within_budget:
            break
        best = (current.eval(), cur_rel)
    return steps[: i + 1], best


def _folder(ratio: float) -> str:
    return f"macs_{ratio:.2f}"


def _prune_options(opts: Any, target: float, rounds: int, size: int, out: Path) -> PruneOptions:
    return PruneOptions(target_macs=target, steps=rounds, finetune_epochs=opts.finetune_epochs, importance=opts.importance,
                        distill=opts.distill, input_size=size, batch_size=opts.batch_size, workers=opts.workers, latency_repeats=5,
                        measure_ort=False, threads=opts.threads, seed=opts.seed, out=str(out))


def _said(s: Step) -> str:
    change = f"{s.drop_points:.2f} points lost" if s.drop_points > 0 else f"{-s.drop_points:.2f} points gained"
    return (f"{s.macs_rel:.1%} of the MACs, accuracy {s.accuracy:.1%} ({change}), "
            f"{'within' if s.within_budget else 'over'} budget, {s.seconds:.0f} s")


@dataclass
class _Pace:
    """Seconds per pruning round in this process, for an estimate of what the rest of the ladder takes."""

    first_rounds: int  # the first share is reached in this many rounds; each later one in one
    shares: int
    rounds: int = 0
    seconds: float = 0.0

    def ran(self, rounds: int, seconds: float) -> None:
        self.rounds += rounds
        self.seconds += seconds

    def eta(self, step: int) -> str:
        if not self.rounds:
            return ""
        left = (self.first_rounds if step == 0 else 1) + self.shares - step - 1
        return f"; about {self.seconds / self.rounds * left / 60:.0f} min to the end of the ladder if every share stays within budget"
