"""The fine-tuning loop: :func:`fit` trains any already-built model (for example a pruned one).

Freezing, AMP, EMA, progressive resizing, resumable checkpoints and DDP are steps of the
loop; :func:`resnet_xray.train.job.finetune` is the whole job behind ``resnet-xray finetune``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import XrayError
from ..interface import class_logits
from ..model import ModelMeta, changes_of, check_changes_rebuild, save_checkpoint
from ..provenance import Provenance, TrainingStage
from . import distributed as D
from .checkpoint import load_training_state, remove_stale_temporaries, save_training_state, set_rng_state
from .data import DataBundle, steps_per_epoch, unpack_batch
from .distill import Distillation
from .evaluation import evaluate
from .heads import MultiTaskResNet, box_loss
from .metrics import TensorBoardLog, save_confusion_png, write_history_csv
from .optim import (WarmupCosine, WeightEMA, apply_freeze, default_lr, frozen_stages, make_optimizer, optimizer_text,
                    unwrap_ddp)
from .precision import Precision, resolve_device, resolve_precision
from .recipe import RESUME_KEYS, FinetuneOptions, resize_plan


class TrainingFailed(XrayError):
    """The run could not train (no optimiser step was possible): a failure of the run, exit status 1."""

    exit_code = 1


# --- the loop ---


@dataclass
class _StepStats:
    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    box_loss: float = 0.0
    distill_loss: float = 0.0
    wait_s: float = 0.0
    nonfinite: int = 0


def _loss(out, y: torch.Tensor, box: torch.Tensor | None, options: FinetuneOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = class_logits(out).float()
    ce = nn.functional.cross_entropy(logits, y, label_smoothing=options.label_smoothing)
    parts = {"class": ce}
    total = ce * options.loss_weights.get("class", 1.0) if isinstance(out, dict) else ce
    if isinstance(out, dict) and box is not None and "box" in out:
        bl = box_loss(out["box"], box)
        parts["box"] = bl
        total = total + options.loss_weights.get("box", 1.0) * bl
    return total, parts


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(msg, file=sys.stderr)


@dataclass
class _Run:
    """Everything one :func:`fit` call shares between its steps; the position fields are what last.pt saves."""

    model: nn.Module
    data: DataBundle
    options: FinetuneOptions  # resolved: no recipe piece left at None
    ctx: D.DistContext
    device: torch.device
    precision: Precision
    out: Path | None
    meta: ModelMeta
    extra: dict[str, Any]  # more keys for every checkpoint
    steps: int  # optimizer steps per epoch
    effective_batch: int  # images per step over all processes (never more than the training set)
    lr: float
    sizes: list[int]  # training side of each epoch (progressive resizing)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: WeightEMA | None
    tb: TensorBoardLog
    forward: nn.Module | None = None  # what a training step calls: the model, its DDP wrapper, or compiled
    wrapped_for: tuple[str, ...] | None = None
    compiled_sizes: set = field(default_factory=set)
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"accuracy": None, "epoch": None})
    stopped_early: bool = False
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float | None = None  # end of the first step: startup (workers, first batch) excluded from rates
    first_step: int = 0
    last_val: tuple[int, dict[str, Any]] | None = None  # (global step, evaluation) of the live weights
    updates: int = 0  # optimiser steps taken by this call (a non-finite loss skips its step)
    nonfinite_run: int = 0  # consecutive non-finite losses, across epoch ends, for max_nonfinite
    distill: Distillation | None = None  # a teacher whose softened logits join the loss

    @property
    def main(self) -> bool:
        return self.ctx.is_main

    @property
    def talk(self) -> bool:
        return self.options.progress and self.ctx.is_main


def fit(
    model: nn.Module,
    data: DataBundle,
    options: FinetuneOptions,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_extra: dict[str, Any] | None = None,
    pretrained: bool = True,
    meta: ModelMeta | None = None,
    distill: Distillation | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data`` and return its history and final metrics.

    Args:
        model: any ResNet-shaped model whose outputs match ``data``'s classes (plain logits,
            or a dict with ``class`` and ``box`` from :func:`~resnet_xray.train.heads.attach_heads`).
        data: from :func:`~resnet_xray.train.data.make_loaders` (``distributed=True`` under torchrun).
        options: the schedule, recipe, precision, freezing and checkpoint settings.
        out_dir: where ``last.pt`` (resumable), ``best.pt`` (best validation accuracy, of the
            weights or their EMA), ``metrics.csv`` and ``confusion.png`` go; None writes nothing.
        resume: continue from ``out_dir/last.pt`` when it exists.
        checkpoint_extra: more plain-data keys for every checkpoint.
        pretrained: whether the starting weights are worth protecting (picks the default lr).
        meta: the model's metadata; its ``changes`` (pruned widths, heads, a new classifier)
            go into every checkpoint. None reads them off the model's structure.
        distill: a teacher (for example the unpruned model a pruned one was cut from); the loss
            becomes ``(1 - weight) * CE + weight * T² KL(teacher || student)``.

    Returns:
        ``{"history": [...], "final": evaluate(...) on the final weights, "best": {...},
        "skipped": [...], "stopped_early": bool, "global_step": int, ...}``.
    """
    # Device, precision, output folder, optimizer, schedule and EMA: everything before the first step.
    run = _setup(model, data, options.resolved(), out_dir, checkpoint_extra, pretrained, meta)
    if distill is not None:
        run.distill = distill
        run.extra["distill"] = distill.to_dict()
        distill.teacher.to(run.device)
        if run.options.channels_last:
            distill.teacher.to(memory_format=torch.channels_last)
    if resume:  # weights, optimizer, schedule, RNGs and position from last.pt
        _restore(run)
    _announce(run)  # one line saying what is about to be trained, and how
    try:
        for epoch in range(run.epoch, run.options.epochs):
            # Train: one pass over the training split, or its rest after a resume.
            stats, seconds = _train_epoch(run, epoch)
            if stats is None:  # --stop-after-steps inside the epoch
                break
            # Validate, log the epoch, keep the best weights, write last.pt.
            _end_epoch(run, epoch, stats, seconds)
            if run.stopped_early:
                break
    finally:
        run.tb.close()
    # Final evaluation and confusion matrix.
    return _finish(run)


def _setup(model: nn.Module, data: DataBundle, options: FinetuneOptions, out_dir: str | Path | None,
           checkpoint_extra: dict[str, Any] | None, pretrained: bool, meta: ModelMeta | None) -> _Run:
    """Device, precision, output folder, optimizer, schedule, EMA: everything before the first step."""
    if options.arch is None:
        raise XrayError("FinetuneOptions.arch must name the model's architecture for its checkpoints")
    if data.train is None:
        raise XrayError("fit needs a training loader (DataBundle.train is None)")
    ctx = D.DistContext(*_dist_env()) if data.info.get("world_size", 1) > 1 else D.DistContext()
    device = resolve_device(options.device, ctx)
    precision = resolve_precision(options.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # few input sizes: let cuDNN pick the fastest kernels once each
    out = _prepare_out(out_dir, ctx.is_main)
    steps = steps_per_epoch(data.train)
    if steps == 0:
        raise XrayError("the training split is empty after sharding; add images or use fewer processes")
    sizes = resize_plan(options.progressive, data.preprocessing.crop, options.epochs)
    # The checkpoints carry the model's whole change list (pruned widths included), checked
    # here so a run never trains for an hour and then writes files that cannot be loaded.
    changes = list(meta.changes) if meta is not None and meta.changes else (changes_of(unwrap_ddp(model), options.arch) if out is not None else [])
    # run.meta holds the starting weights' provenance; each save adds this run's training to it (_trained_meta)
    start = meta.provenance if meta is not None and meta.provenance is not None else (
        Provenance(None, "fit() was given no record of the starting weights") if pretrained else Provenance.random_init(str(options.weights)))
    meta = ModelMeta(options.arch, f"fine-tuned from {options.weights}", list(data.class_names), data.preprocessing, True, changes=changes,
                     provenance=start)
    if out is not None:
        check_changes_rebuild(unwrap_ddp(model), meta)
    extra = {"options": options.to_dict(), **(checkpoint_extra or {})}
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    # A step never sees more images than one pass holds, whatever --batch-size asks for.
    effective_batch = min(options.batch_size, len(data.train.sampler)) * ctx.world_size
    lr = options.lr or default_lr(options, effective_batch, pretrained)
    optimizer = make_optimizer(model, options, lr)
    schedule = WarmupCosine(round(options.warmup_epochs * steps), options.epochs * steps)
    return _Run(
        model, data, options, ctx, device, precision, out, meta, extra, steps, effective_batch, lr, sizes, optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.use_scaler),
        ema=WeightEMA(model, options.ema) if options.ema else None,
        tb=TensorBoardLog(out / "tensorboard" if (out is not None and ctx.is_main) else None),
    )


def _prepare_out(out_dir: str | Path | None, main: bool) -> Path | None:
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XrayError(f"--out {out}: cannot create ({e.strerror})") from None
        remove_stale_temporaries(out)
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict``, keeping this build's ``fused``/``foreach`` choice.

    torch restores every group option from the checkpoint, so a run saved before the steps were
    fused would resume on the slower foreach path; how to step is not training state.
    """
    how = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, how):
        group.update(keep)


def _restore(run: _Run) -> None:
    """Continue from ``last.pt``: weights, optimizer, schedule, EMA, RNGs and position."""
    last = run.out / "last.pt" if run.out is not None else None
    if last is None or not last.exists():
        _say(f"--resume: no checkpoint in {run.out} yet; starting from the beginning", run.main)
        return
    heads = run.model.heads_spec if isinstance(run.model, MultiTaskResNet) else None
    ck = load_training_state(last, arch=run.options.arch, class_names=run.data.class_names, heads=heads)
    _check_same_run(ck.get("options") or {}, run.options, last)
    run.model.load_state_dict(ck["state_dict"])
    load_optimizer_state(run.optimizer, ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    if ck.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ck["scaler"])
    if run.ema is not None and ck.get("ema"):
        run.ema.load_state_dict(ck["ema"])
    set_rng_state(ck["rng"])
    run.epoch, run.step_in_epoch, run.global_step = int(ck["epoch"]), int(ck["step_in_epoch"]), int(ck["global_step"])
    run.first_step = run.global_step
    run.history = list(ck["history"])
    best = dict(ck["best"])
    run.best = best if (best.get("accuracy") or -1) >= 0 else {"accuracy": None, "epoch": None}  # -1: older files
    # Said even without progress output: a resumed run should never look like a fresh one.
    _say(f"resuming from {last}: epoch {run.epoch + 1}, step {run.step_in_epoch}/{run.steps}", run.main)


def _check_same_run(saved: dict[str, Any], now: FinetuneOptions, path: Path) -> None:
    """Refuse to resume under another schedule: the old one would silently go on."""
    for key in RESUME_KEYS:
        if key in saved and saved[key] != getattr(now, key):
            flag = "--" + key.replace("_", "-")
            raise XrayError(f"--resume: {path} was started with {flag} {saved[key]}, this run has {getattr(now, key)}; "
                            f"resume with the same value, or train into a new --out")


def _announce(run: _Run) -> None:
    o, n_train = run.options, run.data.info.get("train_images")
    asked = o.batch_size * run.ctx.world_size
    capped = f" (--batch-size {o.batch_size} is more than the {n_train} training images)" if asked > run.effective_batch else ""
    pieces = [f"sizes {'/'.join(str(s) for s in sorted(set(run.sizes)))}" if len(set(run.sizes)) > 1 else "",
              f"EMA {o.ema:g}" if o.ema else "", "channels-last" if o.channels_last else "",
              "zero-init residuals" if o.zero_init_residual and o.weights == "random" else "",
              "whitened stem" if o.stem_init == "whiten" and o.weights == "random" else "", "test-time flip" if o.tta_flip else "", "compiled" if o.compile else ""]
    _say(f"training {o.arch} on {n_train} images ({len(run.data.class_names)} classes) x {o.epochs} epochs: "
         f"{run.steps} steps/epoch of {run.effective_batch}{capped}, {optimizer_text(o, run.lr)}, {run.precision.name}, "
         f"{run.device}{f', {run.ctx.world_size} processes' if run.ctx.enabled else ''}; recipe {o.recipe}"
         + "".join(f", {p}" for p in pieces if p), run.main and run.out is not None)


def _prepare_forward(run: _Run, frozen: list[str]) -> None:
    """The module a step calls: DDP fixes its synchronised parameters at construction, so rewrap when freezing changes."""
    if run.forward is not None and run.wrapped_for == tuple(frozen):
        return
    forward: nn.Module = run.model
    if run.ctx.enabled:
        forward = nn.parallel.DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.options.compile:
        forward = torch.compile(forward, dynamic=False)  # one static graph per training size
    run.forward, run.wrapped_for = forward, tuple(frozen)



class _LogBar:
    """The bits of tqdm the epoch loop uses, printing a plain line at most every ``every`` seconds."""

    def __init__(self, total: int, done: int, desc: str, *, quiet: bool, every: float = 10.0) -> None:
        self.total, self.n, self.desc, self.quiet, self.every = total, done, desc, quiet, every
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""

    def set_postfix(self, refresh: bool = False, **kv: str) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kv.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            print(f"{self.desc}: step {self.n}/{self.total} ({now - self.t0:.0f} s), {self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _train_epoch(run: _Run, epoch: int) -> tuple[_StepStats | None, float]:
    """One pass over the training split (or its rest, after a resume); None when stopped early inside it."""
    o = run.options
    frozen = frozen_stages(o.freeze, epoch)
    run.model.train()
    apply_freeze(run.model, frozen)
    _prepare_forward(run, frozen)
    skip = run.step_in_epoch if epoch == run.epoch else 0
    run.data.train.sampler.set_epoch(epoch, skip=skip * o.batch_size)
    stats = _StepStats()
    # A terminal gets a live bar; a log file gets one plain line every few seconds instead of \r updates.
    bar = tqdm(total=run.steps, initial=skip, desc=f"epoch {epoch + 1}/{o.epochs}", unit="step", disable=not run.talk,
               leave=False, file=sys.stderr) if sys.stderr.isatty() else _LogBar(run.steps, skip, f"epoch {epoch + 1}/{o.epochs}",
                                                                                  quiet=not run.talk)
    t_epoch = t_wait = time.perf_counter()
    run.step_in_epoch = skip
    try:
        for batch in run.data.train:
            x, y, box = unpack_batch(batch, run.device, o.channels_last, size=run.sizes[epoch])
            stats.wait_s += time.perf_counter() - t_wait
            _train_step(run, x, y, box, stats, epoch)
            run.global_step += 1
            run.step_in_epoch += 1
            if run.t_first is None:
                run.t_first = time.perf_counter()
            if run.talk:
                el = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{stats.loss / max(1, stats.seen):.3f}", acc=f"{stats.correct / max(1, stats.seen):.1%}",
                                ips=f"{stats.seen * run.ctx.world_size / max(el, 1e-9):.1f}", refresh=False)
                bar.update(1)
            at_stop = o.stop_after_steps is not None and run.global_step >= o.stop_after_steps
            if at_stop:
                _check_trained(run, stats, epoch)
            if at_stop or (o.checkpoint_every and run.updates and run.global_step % o.checkpoint_every == 0 and run.step_in_epoch < run.steps):
                _save_last(run, epoch, run.step_in_epoch)
            if at_stop:
                run.stopped_early = True
                if run.step_in_epoch < run.steps:
                    return None, 0.0
                break
            t_wait = time.perf_counter()
    finally:
        bar.close()
    return stats, time.perf_counter() - t_epoch


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, box: torch.Tensor | None, stats: _StepStats, epoch: int) -> None:
    """Forward, loss, and an update unless the loss is non-finite on any rank (then skipped everywhere)."""
    o, optimizer = run.options, run.optimizer
    with run.precision.autocast(run.device):
        out = _forward(run, x)
        taught = run.distill.targets(x) if run.distill is not None else None
    loss, parts = _loss(out, y, box, o)
    if taught is not None:
        parts["distill"] = run.distill.loss(class_logits(out), taught)
        loss = (1 - run.distill.weight) * loss + run.distill.weight * parts["distill"]
    if not D.all_true(bool(torch.isfinite(loss)), run.ctx, run.device):
        # Skip the update on every rank together: one NaN step must not poison the weights.
        optimizer.zero_grad(set_to_none=True)
        run.nonfinite_run += 1
        stats.nonfinite += 1
        _say(f"non-finite loss at epoch {epoch + 1} step {run.step_in_epoch + 1}: step skipped", run.main)
        if run.nonfinite_run >= o.max_nonfinite:
            raise TrainingFailed(
                f"training stopped: {run.nonfinite_run} non-finite losses in a row (epoch {epoch + 1}, step {run.step_in_epoch + 1}); "
                f"no NaN weights were saved; lower --lr or run without --amp")
    else:
        run.nonfinite_run = 0
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        run.updates += 1
        if run.ema is not None:
            run.ema.update(run.model)
        stats.loss += float(loss.detach()) * len(y)
        stats.correct += int((class_logits(out).argmax(1) == y).sum())
        stats.seen += len(y)
        if "box" in parts:
            stats.box_loss += float(parts["box"].detach()) * len(y)
        if "distill" in parts:
            stats.distill_loss += float(parts["distill"].detach()) * len(y)
    with warnings.catch_warnings():
        # After a skipped step the scheduler still advances, so the schedule stays aligned.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()


def _forward(run: _Run, x: torch.Tensor):
    """``run.forward(x)``; a compiled forward that fails to build falls back to eager, once, with a warning."""
    size = x.shape[-1]
    if not run.options.compile or size in run.compiled_sizes:
        return run.forward(x)
    try:
        out = run.forward(x)
    except Exception as e:  # noqa: BLE001 - any compiler failure: the eager model still trains
        print(f"resnet-xray: warning: --compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
              f"training eagerly", file=sys.stderr)
        run.options = replace(run.options, compile=False)
        run.forward = None
        _prepare_forward(run, list(run.wrapped_for or ()))
        return run.forward(x)
    run.compiled_sizes.add(size)
    return out


def _end_epoch(run: _Run, epoch: int, stats: _StepStats, seconds: float) -> None:
    """Validate (the weights, and their EMA late in the run), log a row, keep the best, checkpoint."""
    o, ctx = run.options, run.ctx
    tr_loss, tr_correct, tr_seen, tr_box, tr_kd, wait = D.all_reduce_sum(
        [stats.loss, stats.correct, stats.seen, stats.box_loss, stats.distill_loss, stats.wait_s], ctx, run.device)
    if tr_seen == 0 and stats.nonfinite == 0:
        first = f" (first: {run.data.skipped[0].path}: {run.data.skipped[0].reason})" if run.data.skipped else ""
        raise XrayError(f"no readable training images: every file of the train split was skipped{first}; nothing was saved")
    _check_trained(run, stats, epoch)
    D.average_buffers(run.model, ctx)
    val = _validate(run, run.model)
    run.last_val = (run.global_step, val)
    ema_val = _validate(run, run.ema.module) if run.ema is not None and _ema_due(run, epoch) else None
    row = {
        "epoch": epoch + 1,
        "train_loss": tr_loss / max(1, tr_seen),
        "train_accuracy": tr_correct / max(1, tr_seen),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        **({"ema_val_accuracy": ema_val["accuracy"]} if ema_val is not None else {}),
        **({"val_box_iou": val["box_iou"], "val_box_l1": val["box_l1"], "train_box_loss": tr_box / max(1, tr_seen)} if "box_iou" in val else {}),
        **({"train_distill_loss": tr_kd / max(1, tr_seen)} if run.distill is not None else {}),
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_s": tr_seen / max(seconds, 1e-9),
        "data_wait_fraction": (wait / ctx.world_size) / max(seconds, 1e-9),
        "seconds": seconds,
        "nonfinite_steps": stats.nonfinite,
        "skipped_files": len(run.data.skipped),
        "frozen": "+".join(frozen_stages(o.freeze, epoch)) or "-",
        "train_size": run.sizes[epoch],
    }
    run.history.append(row)
    candidates = [("model", run.model, val)] + ([("ema", run.ema.module, ema_val)] if ema_val is not None else [])
    which, weights, score = max(candidates, key=lambda c: c[2]["accuracy"])  # ties: the live weights
    improved = run.best["accuracy"] is None or score["accuracy"] > run.best["accuracy"]
    if improved:
        run.best = {"accuracy": score["accuracy"], "epoch": epoch + 1, "loss": score["loss"], "weights": which}
    _say(f"epoch {epoch + 1}/{o.epochs}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.1%} "
         f"({row['train_size']} px) | val loss {val['loss']:.3f} acc {val['accuracy']:.1%}"
         + (f", EMA {ema_val['accuracy']:.1%}" if ema_val is not None else "")
         + (f" box IoU {val['box_iou']:.3f}" if "box_iou" in val else "")
         + f" | {row['images_per_s']:.1f} img/s, data wait {row['data_wait_fraction']:.0%}, {seconds:.0f}s",
         run.main and (o.progress or run.out is not None))  # a run that writes files also logs its epochs
    if run.out is not None and run.main:
        write_history_csv(run.out / "metrics.csv", run.history)
        run.tb.epoch(row)
        if improved:
            save_checkpoint(run.out / "best.pt", weights, _trained_meta(run, epoch + 1, score["accuracy"]),
                            metrics={"val_accuracy": score["accuracy"], "epoch": epoch + 1, "weights": which}, **run.extra)
    _save_last(run, epoch + 1, 0)


def _check_trained(run: _Run, stats: _StepStats, epoch: int) -> None:
    """Fail before anything is published when no optimiser step was taken: by this call, or in this epoch.

    Every step skipped as non-finite (fewer than ``max_nonfinite`` per epoch) would otherwise
    validate and publish the untrained weights as best.pt, and exit 0.
    """
    if run.updates and stats.seen:
        return
    if stats.nonfinite:  # the same on every rank: the skip decision is all-reduced
        what = ("so no optimiser step was taken; no best.pt or last.pt was written" if not run.updates
                else f"in epoch {epoch + 1}; its weights were not saved")
        raise TrainingFailed(f"training failed: every loss was non-finite ({stats.nonfinite} steps skipped) {what}. "
                             f"Check --class-weight and --box-weight, lower --lr, or run without --amp")


def _validate(run: _Run, model: nn.Module) -> dict[str, Any]:
    return evaluate(model, run.data.val, device=run.device, channels_last=run.options.channels_last, ctx=run.ctx,
                    flip=run.options.tta_flip)


def _ema_due(run: _Run, epoch: int) -> bool:
    """The EMA is validated in the last third of the epochs only: it lags early on, and each look costs a pass."""
    return epoch + 1 > run.options.epochs - max(1, math.ceil(run.options.epochs / 3))


def _trained_meta(run: _Run, epochs: int, accuracy: float | None) -> ModelMeta:
    """The metadata a checkpoint of this run is saved with: the starting weights' provenance plus this run's training."""
    stage = TrainingStage("finetune", run.data.info.get("folder"), tuple(run.data.class_names), epochs, run.global_step,
                          accuracy, str(run.options.weights))
    return replace(run.meta, provenance=run.meta.provenance.after(stage))


def _save_last(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """``last.pt`` names the next batch to train on: ``epoch``/``step_in_epoch``."""
    if run.out is not None and run.main:
        save_training_state(run.out / "last.pt", run.model, _trained_meta(run, epoch, run.best["accuracy"]),
                            optimizer=run.optimizer, scheduler=run.scheduler,
                            scaler=run.scaler, epoch=epoch, step_in_epoch=step_in_epoch, global_step=run.global_step,
                            history=run.history, best=run.best,
                            **({"ema": run.ema.state_dict()} if run.ema is not None else {}), **run.extra)
    D.barrier(run.ctx)


def _finish(run: _Run) -> dict[str, Any]:
    """Final evaluation, confusion matrix, and the result dictionary."""
    t_loop_end = time.perf_counter()
    # The last epoch's evaluation when no step came after it: the same weights, a pass saved.
    seen = run.last_val
    final = seen[1] if seen is not None and seen[0] == run.global_step else _validate(run, run.model)
    weight_diff = D.max_weight_difference(run.model, run.ctx, run.device)
    if run.out is not None and run.main:
        save_confusion_png(final["confusion"], run.data.class_names, run.out / "confusion.png",
                           f"validation: {final['accuracy']:.1%} of {final['images']} images")
    run.model.eval()
    return {
        "history": run.history,
        "final": final,
        "best": run.best,
        "skipped": list(run.data.skipped),
        "stopped_early": run.stopped_early,
        "global_step": run.global_step,
        "seconds": time.perf_counter() - run.t_start,
        # Steady-state rate of this call: steps after the first, per second (includes epoch-end evaluation).
        "steps_after_first": run.global_step - run.first_step - 1,
        "seconds_after_first": (t_loop_end - run.t_first) if run.t_first is not None else 0.0,
        "precision": run.precision.name,
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "rank_weight_max_diff": weight_diff,
        "lr": run.lr,
        "effective_batch": run.effective_batch,
        "options": run.options.to_dict(),
    }


def _dist_env() -> tuple[int, int, int, str | None]:
    import torch.distributed as dist

    return dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend()
