"""The article's pruning loop: importance -> prune -> fine-tune -> evaluate, repeated until the MACs target.

Every completed round is saved (checkpoint + state file) before the next begins, so
an interrupted run picks up after its last completed round with nothing lost.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_json, write_text
from ..errors import XrayError
from ..locks import output_lock
from ..model import ModelMeta, changes_of, load_model, save_checkpoint
from ..options import OptionError, at_least, batch_fits, image_side, learning_rate, one_of, option, thread_count
from ..provenance import Provenance, TrainingStage, WeightsInfo
from ..train import finetune as ft
from ..train.data import make_loaders, steps_per_epoch
from ..train.distill import Distillation
from ..train.distributed import DistContext
from ..train.precision import resolve_device, resolve_precision
from ..train.recipe import FinetuneOptions
from ..units import pct, si, table
from .figures import plot_rounds
from .importance import CRITERIA, accumulate_gradients, check_criterion
from .kept import Kept, kept_after, recorded_kept
from .measure import OrtExport, measure_cost, measure_latencies, measure_latency
from .spec import PrunedWidths, stage_channels
from .structured import prune_to_macs

STATE_FILE = "prune_state.json"
OPTIONS_FILE = "prune_options.json"
FINAL_CHECKPOINT = "pruned.pt"
PLOT_FILE = "accuracy_vs_cost.png"
SUMMARY_FILE = "prune_summary.txt"


@dataclass
class PruneOptions:
    """How to prune; every field maps onto a ``resnet-xray prune`` flag."""

    target_macs: float = option(0.5, "share of the unpruned model's MACs to KEEP, strictly between 0 and 1: 0.5 removes half of the MACs, 0.3 removes 70%")
    steps: int = option(5, "rounds of importance -> prune -> fine-tune -> evaluate to reach the target")
    importance: str = option("l1", "channel criterion; taylor needs --data")
    finetune_epochs: int = option(1, "fine-tuning epochs after each round's pruning (0: none)")
    distill: bool = option(False, "fine-tune against the unpruned model's softened outputs as well as the labels (knowledge distillation)")
    global_pruning: bool = option(False, "rank channels across all layers instead of within each")
    round_to: int = option(8, "keep pruned widths multiples of this, 1 for none")
    input_size: int | None = option(None, "square side for MACs and latency (default: the data's or model's crop)")
    lr: float | None = option(None, "fine-tuning peak learning rate (default: half the checkpoint's own, else the trainer's)")
    batch_size: int = option(32, "images per fine-tuning / evaluation step")
    workers: int | None = option(None, "data-loading processes; None: 2, or 0 on a machine with 2 CPUs or fewer")
    taylor_batches: int = option(8, "batches whose gradients feed the taylor criterion")
    latency_repeats: int = option(20, "timed batch-1 runs per measurement (median reported)")
    measure_ort: bool = option(True, "the ONNX Runtime latency column")
    threads: int | None = option(None, "intra-op threads for the latency runs (None: torch's and ORT's defaults)")
    seed: int = 0
    out: str = option("out/prune", "output folder; rerunning with the same options resumes")
    skip_unreadable: bool = option(False, "go on without --data folders that cannot be read (they are listed with the skipped files); default: refuse, naming the folder")

    def __post_init__(self) -> None:
        if not 0.0 < self.target_macs < 1.0:
            raise OptionError("target_macs", self.target_macs,
                              "must lie strictly between 0 and 1 (the share of MACs to keep; 0.5 removes half)")
        at_least("steps", self.steps, 1)
        one_of("importance", self.importance, CRITERIA)
        at_least("finetune_epochs", self.finetune_epochs, 0)
        at_least("round_to", self.round_to, 1)
        image_side("input_size", self.input_size, allow_none=True)
        learning_rate("lr", self.lr, allow_none=True)
        batch_fits("batch_size", self.batch_size, self.input_size, training=True)
        thread_count("workers", self.workers, low=0)
        at_least("taylor_batches", self.taylor_batches, 1)
        at_least("latency_repeats", self.latency_repeats, 1)
        thread_count("threads", self.threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Options that change what a round produces: a resumed run must agree on all of them.
RESULT_OPTIONS = ("target_macs", "steps", "importance", "finetune_epochs", "distill", "global_pruning", "round_to", "input_size", "lr", "batch_size", "taylor_batches", "seed")


@dataclass
class Trainer:
    """The two things the loop needs from training; the train package supplies the default."""

    finetune: Callable[[nn.Module, Any, int], None]  # (model, data, epochs): trains in place
    evaluate: Callable[[nn.Module, Any], dict[str, float]]  # (model, data) -> {"accuracy", "loss"} on data.val


# The parts of a training recipe that a pruned model is fine-tuned with again, when its
# checkpoint recorded them (``finetune`` writes its options into best.pt).
RECIPE_KEYS = ("optimizer", "weight_decay", "label_smoothing", "amp", "channels_last", "min_crop_scale")


def training_recipe(checkpoint_options: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe keys of a ``finetune`` checkpoint's options; {} for anything else.

    A model trained with AdamW and light augmentation loses what it learned when
    fine-tuned with SGD and heavy crops, so recovery uses the recipe that trained it, at
    half its peak learning rate. ``amp`` is dropped where this machine cannot run it.
    """
    opts = checkpoint_options or {}
    if "optimizer" not in opts:  # not a finetune checkpoint (a pruned one records PruneOptions)
        return {}
    recipe = {k: opts[k] for k in RECIPE_KEYS if k in opts}
    if opts.get("lr"):
        # Half the peak rate that trained it: on the reference ResNet-50, AdamW 5e-4 after a
        # 1e-3 training run recovered a 50% MAC cut fully, the trainer's fine-tuning default
        # (5e-5) did not.
        recipe["lr"] = opts["lr"] / 2
    if recipe.get("amp"):
        try:
            resolve_precision(True, resolve_device("auto", DistContext()), strict=True)
        except XrayError:
            recipe["amp"] = False
    return recipe


def loader_options(meta: ModelMeta) -> dict[str, Any]:
    """``make_loaders`` keywords that follow the checkpoint's recipe (its crop scale)."""
    recipe = training_recipe(meta.options)
    return {"min_crop_scale": recipe["min_crop_scale"]} if "min_crop_scale" in recipe else {}


def prune_loaders(data: str | os.PathLike | None, meta: ModelMeta, opts: Any, *, skip_flag: str | None = None) -> Any:
    """Loaders for pruning's fine-tuning and evaluation, sized as ``opts`` says (None without data).

    ``skip_flag``: the option that sets ``opts.skip_unreadable``, named when a folder cannot be read.
    """
    if not data:
        return None
    return make_loaders(data, image_size=opts.input_size, batch_size=opts.batch_size, workers=opts.workers, seed=opts.seed,
                        skip_unreadable=opts.skip_unreadable, skip_flag=skip_flag, **loader_options(meta))


def default_trainer(options: PruneOptions, arch: str, recipe: dict[str, Any] | None = None, teacher: nn.Module | None = None) -> Trainer:
    """Fine-tune and evaluate with :mod:`resnet_xray.train.finetune`, with ``recipe`` (see :func:`training_recipe`).

    ``teacher``: the model every fine-tuning learns from as well as the labels (a copy is
    taken, so training never changes the caller's model); None trains on labels alone.
    """
    distill = Distillation(copy.deepcopy(teacher)) if teacher is not None else None

    def finetune(model: nn.Module, data: Any, epochs: int) -> None:
        kw: dict[str, Any] = dict(
            **(recipe or {}),
            arch=arch,
            epochs=epochs,
            batch_size=options.batch_size,
            # The features are trained already: a short warm-up is enough to settle the pruned BatchNorms.
            warmup_epochs=min(0.2, float(epochs)),
            workers=options.workers,
            seed=options.seed,
            progress=False,
        )
        if options.lr is not None:
            kw["lr"] = options.lr
        ft.fit(model, data, FinetuneOptions(**kw), pretrained=True, distill=distill)

    return Trainer(finetune=finetune, evaluate=lambda model, data: ft.evaluate(model, data.val))


@dataclass
class PruneResult:
    out: Path
    baseline: dict[str, Any]
    rounds: list[dict[str, Any]]
    final_checkpoint: Path
    stage_table: str
    rounds_table: str
    plot: Path | None
    skipped: list[Any] = field(default_factory=list)
    weights: WeightsInfo | None = None  # the weights' provenance, set by the verb that ran

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "baseline": self.baseline, "rounds": self.rounds, "final_checkpoint": str(self.final_checkpoint),
                "plot": None if self.plot is None else str(self.plot),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "weights": self.weights.to_dict() if self.weights else None}


def round_targets(options: PruneOptions) -> list[float]:
    """Share of the baseline MACs kept after each round: the removal is spread evenly over the rounds."""
    removed = 1.0 - options.target_macs
    return [1.0 - removed * (k + 1) / options.steps for k in range(options.steps)]


def prune(
    model: nn.Module,
    meta: ModelMeta,
    options: PruneOptions,
    data: Any = None,
    *,
    trainer: Trainer | None = None,
    log: Callable[[str], None] = print,
    ort: OrtExport | None = None,
) -> PruneResult:
    """Run (or resume) the iterative pruning loop on ``model``.

    Args:
        model: the trained, unpruned model (a pruned one works too: targets are relative to it).
        meta: its :class:`~resnet_xray.model.ModelMeta`; class names and preprocessing are saved
            with every round.
        options: targets, criterion, schedule and where to write.
        data: a :class:`resnet_xray.train.data.DataBundle` (anything with ``train``, ``val``,
            ``class_names``, ``skipped``); ``None`` prunes without fine-tuning or accuracy.
        trainer: fine-tune and evaluate functions (default: the train package's, with the
            optimizer, precision and augmentation recorded in a ``finetune`` checkpoint).
        log: where progress lines go.
        ort: exports a model to ONNX Runtime for the latency column ``options.measure_ort`` asks for
            (:func:`resnet_xray.deploy.onnx.exported_runner`; ``deploy.search.prune_with_ort`` passes it);
            None: no ONNX Runtime column.

    Returns:
        the baseline and per-round measurements, tables and file paths.
    """
    with output_lock(options.out, "--out"):
        return _prune_locked(model, meta, options, data, trainer=trainer, log=log, ort=ort)


@dataclass
class _Run:
    """What every step of one pruning run shares."""

    options: PruneOptions
    data: Any  # a DataBundle, or None: prune without fine-tuning or accuracy
    trainer: Trainer | None
    out: Path
    input_size: int
    session: str  # marks the rounds measured by this process (a resumed run re-measures the older ones)
    save_meta: ModelMeta  # what every round's checkpoint records, before its own widths
    log: Callable[[str], None]
    ort: OrtExport | None  # times the ONNX Runtime column (None: no such column)
    kept: Kept = field(default_factory=dict)  # the current model's channels, as indices into the unpruned arch


def _prune_locked(model: nn.Module, meta: ModelMeta, options: PruneOptions, data: Any, *, trainer: Trainer | None,
                  log: Callable[[str], None], ort: OrtExport | None) -> PruneResult:
    run = _start(model, meta, options, data, trainer, log, ort)
    model = model.eval()
    state = _baseline(run, model, meta)
    baseline, rounds = state["baseline"], state["rounds"]
    current, run.kept = model, recorded_kept(run.save_meta, model)
    if rounds:
        last = run.out / rounds[-1]["checkpoint"]
        current, last_meta = load_model(None, last)
        run.kept = recorded_kept(last_meta, current)
        run.save_meta = replace(run.save_meta, provenance=last_meta.provenance)  # the finished rounds' training
        log(f"resuming after round {len(rounds)}/{options.steps} from {last}")
    targets = round_targets(options)
    for k in range(len(rounds), options.steps):
        current, record = _prune_round(run, current, k, targets[k], baseline)
        rounds.append(record)
        write_json(run.out / STATE_FILE, state)  # the round counts as completed from here on
        log(f"round {k + 1}/{options.steps}: {_describe(record, baseline)} ({record['seconds']} s)")
    if not rounds:
        raise XrayError("no rounds to report")  # unreachable: steps >= 1
    return _finish(run, model, current, meta, state)


def _start(model: nn.Module, meta: ModelMeta, options: PruneOptions, data: Any, trainer: Trainer | None,
           log: Callable[[str], None], ort: OrtExport | None) -> _Run:
    """Refuse what cannot be pruned, pick the trainer, create the output folder."""
    check_criterion(options.importance, data is not None)
    if meta.find("heads"):
        raise XrayError(f"--weights {meta.weights}: pruning multi-task checkpoints is not supported; prune a single-head classifier")
    if data is not None:
        n_out = int(model.fc.out_features)
        if n_out != len(data.class_names):
            raise XrayError(
                f"--weights {meta.weights} has {n_out} outputs but --data has {len(data.class_names)} classes; "
                "fine-tune the model on this data first (resnet-xray finetune), then prune it"
            )
        if trainer is None:
            recipe = training_recipe(meta.options)
            if recipe:
                log("fine-tuning with the checkpoint's training recipe: " + ", ".join(f"{k} {v}" for k, v in recipe.items()))
            trainer = default_trainer(options, meta.arch, recipe, teacher=model if options.distill else None)
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"--out {out}: cannot create ({e.strerror})") from None
    input_size = options.input_size or (data.preprocessing.crop if data is not None else meta.preprocessing.crop)
    # The source's changes (a replaced classifier, earlier pruning) stay; each round adds its widths.
    save_meta = replace(
        meta,
        class_names=list(data.class_names) if data is not None else list(meta.class_names),
        preprocessing=data.preprocessing if data is not None else meta.preprocessing,
        options=None,
        changes=list(meta.changes) or changes_of(model, meta.arch),  # metadata made by hand records none
    )
    return _Run(options, data, trainer, out, input_size, uuid.uuid4().hex[:12], save_meta, log, ort if options.measure_ort else None)


def _baseline(run: _Run, model: nn.Module, meta: ModelMeta) -> dict[str, Any]:
    """The run's state (an earlier run's, when resuming) with the unpruned model measured now."""
    options = run.options
    state = _load_state(run.out, options, meta)
    write_json(run.out / OPTIONS_FILE, {"options": options.to_dict(), "source": {"arch": meta.arch, "weights": meta.weights},
                                        "input_size": run.input_size})
    base_cost = measure_cost(model, run.input_size)
    base_lat = measure_latency(model, run.input_size, repeats=options.latency_repeats, ort=run.ort, threads=options.threads)
    if state is None:
        baseline: dict[str, Any] = {"round": 0, **base_cost.to_dict(), "macs_rel": 1.0, "params_rel": 1.0}
        if run.data is not None:
            baseline.update(_accuracy(run.trainer.evaluate(model, run.data)))
        state = {"source": {"arch": meta.arch, "weights": meta.weights}, "options": options.to_dict(), "input_size": run.input_size,
                 "baseline": baseline, "rounds": []}
    state["baseline"].update(base_lat.to_dict(), session=run.session)
    run.log(f"baseline: {_describe(state['baseline'], state['baseline'])}")
    return state


def _prune_round(run: _Run, current: nn.Module, k: int, target: float, baseline: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Round ``k + 1``: importance -> prune to ``target`` of the baseline MACs -> fine-tune -> measure -> save."""
    options, data, trainer = run.options, run.data, run.trainer
    t0 = time.perf_counter()
    torch.manual_seed(options.seed + k + 1)
    if options.importance == "taylor":
        accumulate_gradients(current, data.train, options.taylor_batches)
    shrink = prune_to_macs(current, round(target * baseline["macs"]), criterion=options.importance, input_size=run.input_size,
                           global_pruning=options.global_pruning, round_to=options.round_to)
    current.zero_grad(set_to_none=True)
    run.kept = kept_after(run.kept, current, shrink.model)  # before fine-tuning moves the parameters
    current = shrink.model.eval()
    record: dict[str, Any] = {"round": k + 1, "target_macs_rel": target, "channel_ratio": shrink.channel_ratio}
    if data is not None:
        record["accuracy_pruned"] = _accuracy(trainer.evaluate(current, data))["accuracy"]
        if options.finetune_epochs > 0:
            trainer.finetune(current, data, options.finetune_epochs)
            current.eval()
        record.update(_accuracy(trainer.evaluate(current, data)))
        if options.finetune_epochs > 0:
            run.save_meta = _after_finetune(run, record["accuracy"])
    cost = measure_cost(current, run.input_size)
    record.update(cost.to_dict(), macs_rel=cost.macs / baseline["macs"], params_rel=cost.params / baseline["params"])
    record.update(measure_latency(current, run.input_size, repeats=options.latency_repeats, ort=run.ort,
                                  threads=options.threads).to_dict())
    record["session"] = run.session
    record["seconds"] = round(time.perf_counter() - t0, 1)
    name = f"round_{k + 1:02d}.pt"
    widths = PrunedWidths.of(current, run.kept, round=k + 1, criterion=options.importance, macs=cost.macs, baseline_macs=baseline["macs"],
                             input_size=run.input_size)
    save_checkpoint(run.out / name, current, run.save_meta.with_change(widths), options=options.to_dict())
    record["checkpoint"] = name
    return current, record


def _after_finetune(run: _Run, accuracy: float) -> ModelMeta:
    """The metadata to save once a round has fine-tuned: the training added to the weights' provenance."""
    data, epochs = run.data, run.options.finetune_epochs
    start = run.save_meta.provenance or Provenance(None, "the weights pruning started from do not record their training")
    steps = epochs * steps_per_epoch(data.train) if getattr(data, "train", None) is not None else epochs
    stage = TrainingStage("prune", getattr(data, "info", {}).get("folder"), tuple(data.class_names), epochs, max(1, steps),
                          accuracy, run.save_meta.weights)
    return replace(run.save_meta, provenance=start.after(stage))


def _finish(run: _Run, model: nn.Module, current: nn.Module, meta: ModelMeta, state: dict[str, Any]) -> PruneResult:
    """Re-time every round side by side, save the final model, and write the tables and the plot."""
    options, out, baseline, rounds = run.options, run.out, state["baseline"], state["rounds"]
    _remeasure_round_robin(run, model, baseline, rounds)
    final = out / FINAL_CHECKPOINT
    if rounds[-1]["session"] == run.session or not final.exists():
        widths = PrunedWidths.of(current, run.kept, round=len(rounds), criterion=options.importance, macs=rounds[-1]["macs"],
                                 baseline_macs=baseline["macs"], input_size=run.input_size)
        save_checkpoint(final, current, run.save_meta.with_change(widths), options=options.to_dict())
    write_json(out / STATE_FILE, state)
    stages = stage_table(model, current)
    rounds_txt = rounds_table(baseline, rounds)
    plot = plot_rounds(baseline, rounds, out / PLOT_FILE,
                       title=f"{meta.arch}, {options.importance}, {'global' if options.global_pruning else 'per-group'} ranking")
    write_text(out / SUMMARY_FILE, rounds_txt + "\n\nchannels per stage (before -> after)\n" + stages + "\n")
    return PruneResult(out, baseline, rounds, final, stages, rounds_txt, plot, list(getattr(run.data, "skipped", []) or []))


def _accuracy(metrics: dict[str, float]) -> dict[str, float]:
    return {"accuracy": float(metrics["accuracy"]), "val_loss": float(metrics.get("loss", float("nan")))}


def _load_state(out: Path, options: PruneOptions, meta: ModelMeta) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        saved = state["options"]
        source = state["source"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise XrayError(f"{path}: unreadable state of an earlier run ({e}); delete it or choose another --out") from None
    mine = options.to_dict()
    diff = [k for k in RESULT_OPTIONS if k in saved and saved[k] != mine.get(k)]  # a key an older run lacks is not held against it
    if source.get("weights") != meta.weights:
        diff.append("weights")
    if diff:
        k = diff[0]
        was = source.get("weights") if k == "weights" else saved.get(k)
        now = meta.weights if k == "weights" else mine.get(k)
        raise XrayError(
            f"--out {out}: holds a run with different options ({k}: {was!r} there, {now!r} now); "
            "rerun with the same options to resume, or choose another --out"
        )
    for r in state["rounds"]:
        if not (out / r["checkpoint"]).exists():
            raise XrayError(f"{out / r['checkpoint']}: listed as completed in {path} but missing; delete {path} to start over")
    return state


def _remeasure_round_robin(run: _Run, base_model: nn.Module, baseline: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    """The reported latencies: the baseline and every round, timed round-robin in this process after warm-up."""
    options = run.options
    models = [base_model] + [load_model(None, run.out / r["checkpoint"])[0] for r in rounds]
    lats = measure_latencies(models, run.input_size, repeats=options.latency_repeats, ort=run.ort, threads=options.threads)
    for rec, lat in zip([baseline, *rounds], lats):
        rec.update(lat.to_dict(), session=run.session, timing="round-robin with the baseline, after warm-up")
    baseline["latency_repeats"] = options.latency_repeats


def _speedup(base: float | None, now: float | None) -> str:
    return f"{base / now:.2f}x" if base and now else "-"


def _describe(r: dict[str, Any], base: dict[str, Any]) -> str:
    """A progress line, without latency: a round timed alone against a baseline timed alone printed another
    speed-up than the final table's side-by-side timing of the same round (3.43x against 1.51x)."""
    parts = [
        f"MACs {si(r['macs'])} ({pct(r['macs'] / base['macs'])})",
        f"params {si(r['params'])} ({pct(r['params'] / base['params'])})",
    ]
    if r.get("ort_max_abs_diff") is not None:
        parts.append(f"ONNX export max |ORT-eager| {r['ort_max_abs_diff']:.1e}")
    if r.get("accuracy") is not None:
        acc = f"val acc {pct(r['accuracy'])}"
        if r.get("accuracy_pruned") is not None:
            acc += f" (just after pruning {pct(r['accuracy_pruned'])})"
        parts.append(acc)
    return ", ".join(parts)


def rounds_table(baseline: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    """All rounds side by side, with the baseline as round 0."""
    header = ["round", "MACs", "MACs %", "params", "params %", "eager ms", "eager x", "ORT ms", "ORT x", "val acc", "acc before FT"]
    rows = []
    for r in [baseline, *rounds]:
        rows.append([
            r["round"],
            si(r["macs"]),
            pct(r["macs"] / baseline["macs"]),
            si(r["params"]),
            pct(r["params"] / baseline["params"]),
            f"{r['eager_ms']:.2f}",
            _speedup(baseline["eager_ms"], r["eager_ms"]),
            f"{r['ort_ms']:.2f}" if r.get("ort_ms") is not None else "-",
            _speedup(baseline.get("ort_ms"), r.get("ort_ms")),
            pct(r["accuracy"]) if r.get("accuracy") is not None else "-",
            pct(r["accuracy_pruned"]) if r.get("accuracy_pruned") is not None else "-",
        ])
    repeats = f"median of {baseline['latency_repeats']}, " if baseline.get("latency_repeats") else ""
    return (table(header, rows) + "\n" + f"ms: batch-1 latency ({repeats}every round timed round-robin with the baseline in one "
            f"process, after warm-up); x: speed-up over the baseline (round 0), its ms / the round's ms")


def stage_table(before: nn.Module, after: nn.Module) -> str:
    """Per-stage conv widths before and after: where the network was thinned."""
    b, a = stage_channels(before), stage_channels(after)
    rows = []
    for stage in b:
        bw, aw = b[stage], a.get(stage, [])
        rows.append([
            stage,
            _widths(bw),
            _widths(aw),
            pct(sum(map(sum, aw)) / max(sum(map(sum, bw)), 1)),
        ])
    return table(["stage", "before (convs per block)", "after", "channels kept"], rows, align="lllr")


def _widths(blocks: list[list[int]]) -> str:
    shown = ["-".join(map(str, w)) for w in blocks]
    if len(set(shown)) == 1:
        return shown[0] + (f" x{len(shown)}" if len(shown) > 1 else "")
    if len(shown) > 2 and len(set(shown[1:])) == 1:
        return f"{shown[0]}, {shown[1]} x{len(shown) - 1}"  # the first block carries the projection shortcut
    return " | ".join(shown)
