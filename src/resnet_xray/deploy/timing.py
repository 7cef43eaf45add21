"""The one timer: warm up, time many calls, report the median and the interquartile range.

Latencies only compare within one process (the CPU is shared and its clocks move), so
several models are timed round-robin after each is warmed up (:func:`time_models`): a
burst of load from other processes then hits all of them alike. ``bench``, ``quantize``,
``optimize``, ``bench --model`` and the pruning loop all time through here.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class TimingStats:
    """Latency statistics in seconds over ``repeats`` timed calls."""

    median: float
    iqr: float  # p75 - p25: the spread that one slow outlier cannot inflate
    p25: float
    p75: float
    mean: float
    min: float
    max: float
    repeats: int

    @property
    def median_ms(self) -> float:
        return self.median * 1e3

    @property
    def iqr_ms(self) -> float:
        return self.iqr * 1e3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def time_callable(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then time at least ``repeats`` calls.

    Args:
        fn: a zero-argument callable that runs one inference (and synchronises, on a GPU).
        warmup: untimed calls first (allocator, caches, lazy initialisation, autotuning).
        repeats: timed calls.
        min_time_s: keep timing past ``repeats`` until this much time is spent.

    Returns:
        median, IQR, quartiles, mean, min, max (seconds) and the number of timed calls.
    """
    for _ in range(max(0, warmup)):
        fn()
    return stats_of(sample_times(fn, repeats, min_time_s))


def sample_times(fn: Callable[[], Any], repeats: int, min_time_s: float = 0.0) -> list[float]:
    """Wall-clock seconds of at least ``repeats`` calls (more until ``min_time_s`` is spent)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, repeats) or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def stats_of(times: list[float]) -> TimingStats:
    q = np.percentile(times, [25, 50, 75])
    return TimingStats(
        median=float(q[1]),
        iqr=float(q[2] - q[0]),
        p25=float(q[0]),
        p75=float(q[2]),
        mean=float(statistics.fmean(times)),
        min=float(min(times)),
        max=float(max(times)),
        repeats=len(times),
    )


def time_models(runners: dict[str, Callable[[], Any]], *, warmup: int = 5, repeats: int = 30, rounds: int = 5,
                min_time_s: float = 0.0, progress: Callable[[str], None] | None = None) -> dict[str, TimingStats]:
    """Time zero-argument callables round-robin after a warm-up: a burst of load hits all alike.

    ``repeats`` (and ``min_time_s``) are spread over ``rounds`` passes over every runner.
    Returns the :class:`TimingStats` of each, by name.
    """
    for name, fn in runners.items():
        if progress and warmup > 0:
            progress(f"warming up {name}")
        for _ in range(warmup):
            fn()
    per_round = max(1, -(-repeats // rounds))
    samples: dict[str, list[float]] = {n: [] for n in runners}
    for k in range(rounds):
        if progress:
            progress(f"timing round {k + 1}/{rounds} over {len(runners)} models")
        for name, fn in runners.items():
            samples[name] += sample_times(fn, per_round, min_time_s / rounds)
    return {n: stats_of(v) for n, v in samples.items()}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the duration, then restore them."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
