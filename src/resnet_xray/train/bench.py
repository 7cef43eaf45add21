"""``bench-data``: is training input-bound? Loader speed alone, model step alone, and the loop's data wait."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import XrayError
from ..model import build_model
from ..options import at_least, batch_fits, image_side, option, seed_in_range, thread_count
from .data import make_loaders
from .optim import make_optimizer
from .precision import resolve_precision
from .recipe import FinetuneOptions

DEFAULT_WORKERS = FinetuneOptions.workers
RESIDENT_BATCHES = 8  # distinct in-memory batches the model-step timing cycles through


@dataclass
class DataBenchOptions:
    arch: str = option("resnet50", "the model whose training step is timed (random weights: only its shape matters)")
    batch_size: int = option(32, "images per step")
    workers: int | None = option(DEFAULT_WORKERS, "loader processes; the finetune default, so the answer describes a default run")
    image_size: int | None = option(None, "input side; None: the dataset's native size, else 224")
    steps: int = option(20, "timed steps per measurement (after one warm-up step)")
    amp: bool = option(False, "bf16 autocast on CPU, fp16 on CUDA, as finetune --amp")
    channels_last: bool = option(False, "NHWC memory layout, as finetune --channels-last")
    seed: int = option(0, "model init and shuffling")

    def __post_init__(self) -> None:
        image_side("image_size", self.image_size, allow_none=True)
        batch_fits("batch_size", self.batch_size, self.image_size, training=True)
        thread_count("workers", self.workers, low=0)
        at_least("steps", self.steps, 1)
        seed_in_range("seed", self.seed)


def _train_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, precision, device: torch.device) -> None:
    with precision.autocast(device):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@dataclass
class _Timed:
    """The training step being timed, on this device: what the step and loop measurements share."""

    model: nn.Module
    opt: Any
    precision: Any
    device: torch.device
    channels_last: bool
    steps: int

    def to_dev(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        _train_step(self.model, self.opt, x, y, self.precision, self.device)


def bench_data(data_dir: str | Path, options: DataBenchOptions | None = None) -> dict[str, Any]:
    """Measure the three rates on this machine.

    Returns:
        ``loader_images_per_s``, ``step_images_per_s``, ``loop_images_per_s`` and
        ``data_wait_fraction`` (time blocked on the loader / loop time), plus the settings.
    """
    o = options or DataBenchOptions()
    # Found by tests/test_hypothesis_flags.py: both used to end in a traceback.
    if o.steps < 1:
        raise XrayError(f"--steps {o.steps}: must be at least 1")
    if o.batch_size == 1:
        raise XrayError("--batch-size 1: BatchNorm cannot train on one image per step; use 2 or more")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(o.amp, device)
    data = make_loaders(data_dir, image_size=o.image_size, batch_size=o.batch_size, workers=o.workers, seed=o.seed)
    torch.manual_seed(o.seed)
    model = build_model(o.arch, num_classes=len(data.class_names)).to(device).train()
    if o.channels_last:
        model.to(memory_format=torch.channels_last)
    timed = _Timed(model, make_optimizer(model, FinetuneOptions(arch=o.arch), 0.01), precision, device, o.channels_last, o.steps)

    loader_ips, resident = _time_loader(data.train, o.steps)
    step_ips = _time_step(timed, resident)
    loop_ips, wait_fraction = _time_loop(timed, data.train)
    return {
        "arch": o.arch,
        "batch_size": o.batch_size,
        "workers": data.info["workers"],
        "image_size": data.preprocessing.crop,
        "precision": precision.name,
        "device": str(device),
        "loader_images_per_s": loader_ips,
        "step_images_per_s": step_ips,
        "loop_images_per_s": loop_ips,
        "data_wait_fraction": wait_fraction,
        "skipped_files": len(data.skipped),
    }


def _time_loader(loader, steps: int) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """1. The loader alone (workers started and warmed by the first batch): images/s, and a few batches to keep."""
    it = iter(loader)
    next(it)
    n = 0
    resident = []  # a few of these batches, kept for the step timing
    t0 = time.perf_counter()
    for _ in range(steps):
        try:
            x, y, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            x, y, *_ = next(it)
        n += len(x)
        if len(resident) < RESIDENT_BATCHES:
            resident.append((x, y))
    return n / (time.perf_counter() - t0), resident


def _time_step(timed: _Timed, resident: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """2. The model step alone, on batches already in memory: images/s.

    They differ from step to step: repeating one batch lets the model memorise it, and the tiny
    gradients that follow can run into denormal floats, which are many times slower on x86 CPUs.
    """
    resident = [(timed.to_dev(x), y.to(timed.device)) for x, y in resident]
    timed.step(*resident[0])
    timed.sync()
    n = 0
    t0 = time.perf_counter()
    for i in range(timed.steps):
        x, y = resident[i % len(resident)]
        timed.step(x, y)
        n += len(x)
    timed.sync()
    return n / (time.perf_counter() - t0)


def _time_loop(timed: _Timed, loader) -> tuple[float, float]:
    """3. The real loop: images/s, and the share of each step spent blocked on the loader."""
    it = iter(loader)
    wait = 0.0
    n = 0
    t0 = time.perf_counter()
    for _ in range(timed.steps):
        tw = time.perf_counter()
        try:
            x, y, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            x, y, *_ = next(it)
        x, y = timed.to_dev(x), y.to(timed.device)
        wait += time.perf_counter() - tw
        timed.step(x, y)
        n += len(x)
    timed.sync()
    total = time.perf_counter() - t0
    return n / total, wait / total
