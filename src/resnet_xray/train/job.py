"""The finetune command's whole job: the run folder and its lock, the data, the starting model, :func:`fit`, the summary.

Under ``torchrun`` every process runs :func:`finetune`; only rank 0 touches the folder.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import refuse_inputs
from ..errors import XrayError
from ..interface import ReplacedClassifier, reset_classifier
from ..locks import output_lock
from ..model import ModelMeta, load_model
from . import distributed as D
from .data import BadSample, DataBundle, make_loaders
from .finetune import fit
from .heads import Heads, MultiTaskResNet, attach_heads, multitask_spec
from .metrics import write_text_atomic
from .optim import backbone_of
from .recipe import FinetuneOptions
from .stem import whiten_stem


def build_for_finetune(options: FinetuneOptions, class_names: list[str]) -> tuple[nn.Module, ModelMeta]:
    """Starting weights, the classifier swapped for ``len(class_names)`` outputs, heads if multi-task.

    The returned metadata lists every change, the loaded model's own (pruned widths) first.
    """
    model, meta = load_model(options.arch, options.weights, seed=options.seed, progress=options.progress)
    options.arch = meta.arch
    if options.zero_init_residual and options.weights == "random":
        zero_init_residual(model)
    n = len(class_names)
    if isinstance(model, MultiTaskResNet) and not options.multitask:
        raise XrayError(f"--weights {options.weights}: is a multi-task checkpoint; add --multitask")
    if list(meta.class_names) != list(class_names):
        model = reset_classifier(model, n)
        meta = meta.with_change(ReplacedClassifier(n))
    if options.multitask and not isinstance(model, MultiTaskResNet):
        model = attach_heads(model, multitask_spec(n))
        meta = meta.with_change(Heads.of(model))
    return model, meta


def whiten_stem_from(model: nn.Module, data: DataBundle, images: int = 256) -> None:
    """``--stem-init whiten``: conv1 from the patch statistics of up to ``images`` training crops, spread over the set."""
    ds = data.train.dataset
    k = min(images, len(ds))
    picks = sorted({round(i * (len(ds) - 1) / max(1, k - 1)) for i in range(k)})
    xs = [item[0] for item in (ds[(i, 0)] for i in picks) if not isinstance(item, BadSample)]
    if xs:  # no readable image: fit() reports that with its own one-line error
        whiten_stem(backbone_of(model).conv1, torch.stack(xs))


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm of every residual branch; returns how many."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    n = 0
    for m in model.modules():
        bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
        if bn is not None:
            nn.init.zeros_(bn.weight)
            n += 1
    return n


# What a finished (or interrupted) run leaves in its folder; a new run must not mix with them.
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "summary.json", "confusion.png")


def claim_run_folder(out_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one unless asked; with ``overwrite``, clear it.

    Call it while holding the folder's lock, so no live run's files are touched.
    """
    out = Path(out_dir)
    found = [n for n in RUN_FILES if (out / n).exists()]
    if not found or resume:
        return
    if not overwrite:
        raise XrayError(f"--out {out}: holds an earlier run ({', '.join(found)}); "
                        f"pass --resume to continue it or --overwrite to replace it")
    for n in found:
        (out / n).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def finetune(data_dir: str | Path, options: FinetuneOptions, out_dir: str | Path, *, resume: bool = False,
             overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune on an image folder and write checkpoints, metrics and a confusion matrix to ``out_dir``.

    Under ``torchrun`` each process runs this; DDP, sharding and rank-0 writing are automatic.
    Rank 0 holds ``out_dir``'s lock for the whole run (:func:`resnet_xray.locks.output_lock`):
    a second run on the same folder stops with one line. A folder holding an earlier run
    needs ``resume`` or ``overwrite``.

    Returns:
        :func:`fit`'s result plus ``out_dir`` and ``data`` (counts).
    """
    options = options.resolved()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    want_cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    ctx = D.init_from_env("cuda" if want_cuda else "cpu")
    with ExitStack() as held:
        if ctx.is_main:
            try:
                # --weights ft/best.pt --out ft --overwrite would delete the weights it starts from (a resume ignores --weights)
                refuse_inputs(out_dir, {"--data": data_dir, "--weights": None if resume else options.weights}, "--out")
                held.enter_context(output_lock(out_dir, "--out"))
                claim_run_folder(out_dir, resume=resume, overwrite=overwrite)
            except XrayError:
                D.shutdown(ctx)
                raise
        return _finetune_locked(data_dir, options, out_dir, ctx, resume=resume)


def _finetune_locked(data_dir: str | Path, options: FinetuneOptions, out_dir: str | Path, ctx: D.DistContext, *,
                     resume: bool) -> dict[str, Any]:
    try:
        data = make_loaders(data_dir, image_size=options.image_size, batch_size=options.batch_size, workers=options.workers,
                            seed=options.seed, distributed=ctx.enabled, multitask=options.multitask,
                            min_crop_scale=options.min_crop_scale, skip_unreadable=options.skip_unreadable,
                            skip_flag="--skip-unreadable")
        model, meta = build_for_finetune(options, data.class_names)
        if options.stem_init == "whiten" and options.weights == "random":
            # Also under --resume: a run killed before its first checkpoint starts over from this init.
            whiten_stem_from(model, data)
        result = fit(model, data, options, out_dir=out_dir, resume=resume, pretrained=meta.pretrained, meta=meta)
        result["out_dir"] = str(out_dir)
        result["data"] = data.info
        result["class_names"] = data.class_names
        result["is_main"] = ctx.is_main
        if ctx.is_main:
            summary = {k: v for k, v in result.items() if k not in ("final", "skipped")}
            summary["final"] = {k: v for k, v in result["final"].items() if k != "confusion"}
            summary["final"]["confusion"] = result["final"]["confusion"].tolist()
            summary["skipped"] = [{"path": s.path, "reason": s.reason} for s in result["skipped"]]
            write_text_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str))
        return result
    finally:
        D.shutdown(ctx)
