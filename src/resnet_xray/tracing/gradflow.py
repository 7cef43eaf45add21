"""Gradient flow through residual blocks, measured: the article's dL/dx = dL/dF * dF/dx + dL/dx, checked.

At every block y = relu(F(x) + s(x)) the gradient at the block input splits into
a shortcut term (the gradient at the add's output, passed through the identity
or back through the projection) and a residual term (the same gradient passed
back through F). Both are computed with autograd and checked to add up to the
gradient autograd itself delivers at x. Plain-50 is the same network with every
shortcut add removed; both are measured with BatchNorm on batch statistics
(train mode) and on running statistics (eval mode).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..errors import XrayError
from ..image import ImageStream, Preprocessing
from ..interface import class_logits, get_classifier
from ..model import load_model
from ..options import OptionError, at_least, batch_fits, image_side, learning_rate, one_of, option
from ..provenance import WeightsInfo
from ..progress import progress
from ..units import below, num, of_count, times

REGIMES = {
    "batch": "BatchNorm on batch statistics (train mode)",
    "running": "BatchNorm on running statistics (eval mode)",
}
NETWORKS = ("resnet", "plain")


@dataclass
class GradFlowOptions:
    arch: str = option("resnet50", "any torchvision ResNet; plain-N is derived from it")
    weights: str = option("random", "random measures at initialisation, as the article's argument is about")
    batch_size: int = option(8, "synthetic batch size; batch statistics need more than one image")
    input_size: int = option(224, "square side of the synthetic images")
    steps: int = option(0, "SGD steps before a second measurement (0: initialisation only)")
    lr: float = option(0.01, "SGD learning rate for --steps (momentum 0.9)")
    seed: int = option(0, "model init, synthetic batch and labels")
    data: str | None = option(None, "class-per-subfolder image folder to train on instead of a synthetic batch")
    regimes: tuple[str, ...] = option(("batch", "running"), "BatchNorm on batch statistics (train mode), running statistics (eval mode), or both")
    device: str = option("cpu", "torch device")
    num_classes: int = 1000

    def __post_init__(self) -> None:
        for r in self.regimes:
            one_of("regimes", r, tuple(REGIMES))
        at_least("batch_size", self.batch_size, 1)
        if self.batch_size < 2 and "batch" in self.regimes:
            raise OptionError("batch_size", self.batch_size, "batch statistics need at least 2 images")
        image_side("input_size", self.input_size)
        batch_fits("batch_size", self.batch_size, self.input_size, training=True)
        at_least("steps", self.steps, 0)
        learning_rate("lr", self.lr)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regimes"] = list(self.regimes)
        return d


@dataclass
class BlockGrad:
    """The split of dL/dx at one block's input."""

    name: str  # layer1.0 ...
    shortcut: str  # identity | projection
    grad_norm: float  # ||dL/dx|| as autograd delivers it
    shortcut_term_norm: float  # identity: ||dL/d(add output)||; projection: ||P^T dL/d(add output)||
    residual_term_norm: float  # ||J_F^T dL/d(add output)||
    shortcut_share: float  # shortcut term's share of the two norms: s / (s + r)
    cosine: float  # between the two terms: negative means they partly cancel
    rel_error: float  # ||shortcut + residual - autograd|| / ||autograd||

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NetGrad:
    """One network in one BatchNorm regime: gradients from one backward pass."""

    network: str  # resnet | plain
    regime: str  # batch | running
    loss: float
    boundaries: list[dict[str, Any]]  # {"name", "shape", "rms"}: stage boundaries, input side first
    convs: list[dict[str, Any]]  # {"name", "norm", "rms"} per conv weight, in forward order
    blocks: list[BlockGrad] = field(default_factory=list)  # resnet only

    def rms(self, boundary: str) -> float:
        return next(b["rms"] for b in self.boundaries if b["name"] == boundary)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return d


@dataclass
class GradFlowResult:
    options: GradFlowOptions
    init: dict[str, dict[str, NetGrad]]  # regime -> network -> gradients at initialisation (or the given weights)
    trained: dict[str, dict[str, NetGrad]] | None = None  # the same after options.steps SGD steps
    train_losses: dict[str, list[float]] | None = None  # network -> loss per step
    weights: WeightsInfo | None = None  # the weights' provenance, set by the verb that ran
    plot: Path | None = None  # the chart, when one was drawn

    def phase(self, phase: str = "init") -> dict[str, dict[str, NetGrad]]:
        if phase == "init":
            return self.init
        if phase == "trained" and self.trained is not None:
            return self.trained
        raise KeyError(phase)

    def to_dict(self) -> dict[str, Any]:
        def ph(p: dict[str, dict[str, NetGrad]]) -> dict[str, Any]:
            return {r: {n: g.to_dict() for n, g in nets.items()} for r, nets in p.items()}

        d: dict[str, Any] = {"options": self.options.to_dict(), "init": ph(self.init)}
        d["explanations"] = {"init": {r: self.explanation(r) for r in self.init}}
        if self.trained is not None:
            d["trained"] = ph(self.trained)
            d["train_losses"] = self.train_losses
            d["explanations"]["trained"] = {r: self.explanation(r, "trained") for r in self.trained}
        d["weights"] = self.weights.to_dict() if self.weights else None
        if self.plot:
            d["plot"] = str(self.plot)
        return d

    def explanation(self, regime: str, phase: str = "init") -> str:
        """What the numbers of one regime say, in words chosen by the numbers themselves."""
        nets = self.phase(phase)[regime]
        res, plain = nets["resnet"], nets["plain"]
        arch = self.options.arch
        when = "at initialisation" if phase == "init" and self.options.weights == "random" else (
            f"after {self.options.steps} SGD steps" if phase == "trained" else f"with weights {self.options.weights}"
        )
        first, last = res.boundaries[1]["name"], res.boundaries[-1]["name"]  # stem->layer1, layer4->pool
        r_ends, p_ends = (res.rms(first), res.rms(last)), (plain.rms(first), plain.rms(last))
        lines = [f"{REGIMES[regime]}, {when}:"]
        lines += _boundary_lines(arch, first, last, r_ends, p_ends)
        lines += _conv_lines(arch, res, plain)
        lines += _identity_lines(res)
        lines.append(_gain_line(arch, r_ends, p_ends))
        return "\n".join(lines)


# --- the sentences of GradFlowResult.explanation; *_ends are (RMS at the stem boundary, RMS at the last stage) ---


def _boundary_lines(arch: str, first: str, last: str, r_ends: tuple[float, float], p_ends: tuple[float, float]) -> list[str]:
    (r_in, r_out), (p_in, p_out) = r_ends, p_ends
    of = f"{arch}'s"
    lines = [
        f"- At the stem boundary ({first}) the gradient RMS is {num(r_in)} for {arch} and {num(p_in)} for plain: "
        f"plain's is {times(rms_ratio(p_in, r_in), of)}."
    ]
    for name, a, b in (("ResNet", r_out, r_in), ("plain", p_out, p_in)):
        f = rms_ratio(b, a)
        change = ("is 0 at both ends" if math.isnan(f) else f"grows {times(f)}" if f > 1
                  else f"shrinks {times(1 / f)}" if f > 0 else "vanishes")
        lines.append(
            f"- {name}: from the last stage ({last}, RMS {num(a)}) back to the stem ({num(b)}) the gradient {change}."
        )
    return lines


def _conv_lines(arch: str, res: NetGrad, plain: NetGrad) -> list[str]:
    cr = [c["norm"] for c in res.convs if "downsample" not in c["name"]]
    cp = [c["norm"] for c in plain.convs if "downsample" not in c["name"]]
    if not (cr and cp and cr[0] > 0):
        return []
    of = f"{arch}'s"
    return [
        f"- First conv weight gradient: {arch} {num(cr[0])}, plain {num(cp[0])} ({times(cp[0] / cr[0], of)}); "
        f"last conv: {arch} {num(cr[-1])}, plain {num(cp[-1])}."
    ]


def _identity_lines(res: NetGrad) -> list[str]:
    ident = [b for b in res.blocks if b.shortcut == "identity"]
    if not ident:
        return []
    shares = [b.shortcut_share for b in ident]
    worst = max(b.rel_error for b in res.blocks)
    larger = sum(s > 0.5 for s in shares)
    return [
        f"- At the {len(ident)} identity blocks the identity term's share of |identity|+|residual| is "
        f"{min(shares):.2f}-{max(shares):.2f} (median {statistics.median(shares):.2f}); the two terms add up "
        f"to autograd's gradient (relative error {below(worst)}).",
        f"  The identity term is the larger of the two at {of_count(larger, len(ident), 'identity blocks')}; either way "
        "it hands each block's output gradient to the block's input unchanged, whatever F does to it.",
    ]


def _gain_line(arch: str, r_ends: tuple[float, float], p_ends: tuple[float, float]) -> str:
    (r_in, r_out), (p_in, p_out) = r_ends, p_ends
    r_gain, p_gain = r_in / r_out if r_out > 0 else math.inf, p_in / p_out if p_out > 0 else math.inf
    if rms_ratio(p_in, r_in) > 1:
        return (
            "- Here the shortcut-free network gets the larger gradient at the input side: its stage-by-stage gains "
            f"multiply to {times(p_gain)} from the last stage to the stem, against {times(r_gain)} for {arch}. Without "
            "the identity path nothing holds a block's gain near 1. A larger gradient is not a better one: "
            "it is a less stable step for SGD."
        )
    trend = "they shrink the signal" if p_gain < 1 else "they grow it, but less than ResNet's"
    return (
        "- Here the shortcut-free network gets the smaller gradient at the input side: its stage-by-stage gains "
        f"multiply to {times(p_gain)} from the last stage to the stem ({trend}), against {times(r_gain)} for "
        f"{arch}, whose identity terms carry the gradient past every block."
    )


def rms_ratio(num: float, den: float) -> float:
    """``num / den`` for gradient RMS values, which can be exactly 0 (dead ReLUs after a large step)."""
    if den > 0:
        return num / den
    return math.nan if num == 0 else math.inf


# --- the blocks, re-run with their intermediate tensors kept ---


def _residual_branch(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F(x) of a torchvision block, with out-of-place ReLUs so autograd keeps every value."""
    if isinstance(blk, Bottleneck):
        o = F.relu(blk.bn1(blk.conv1(x)))
        o = F.relu(blk.bn2(blk.conv2(o)))
        return blk.bn3(blk.conv3(o))
    o = F.relu(blk.bn1(blk.conv1(x)))
    return blk.bn2(blk.conv2(o))


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (Bottleneck, BasicBlock))]


@dataclass
class _Record:
    x: torch.Tensor
    f: torch.Tensor
    shortcut: torch.Tensor | None
    s: torch.Tensor
    out: torch.Tensor


class BlockProbe:
    """Replaces each block's forward while active, keeping x, F(x), the shortcut and the sum.

    With ``plain=True`` the blocks drop the shortcut: y = relu(F(x)). That is plain-N,
    the same network and weights with every shortcut add removed. Used as a context
    manager; leaving it restores torchvision's own forward.
    """

    def __init__(self, model: nn.Module, plain: bool = False, record: bool = True):
        self.model, self.plain, self.record = model, plain, record
        self.records: dict[str, _Record] = {}
        self._blocks = residual_blocks(model)
        if not self._blocks:
            raise XrayError(f"{type(model).__name__} has no torchvision residual blocks to measure")

    def _forward_for(self, name: str, blk: nn.Module):
        def forward(x: torch.Tensor) -> torch.Tensor:
            f = _residual_branch(blk, x)
            if self.plain:
                sc, s = None, f
            else:
                sc = blk.downsample(x) if blk.downsample is not None else x
                s = f + sc
            out = F.relu(s)
            if self.record and torch.is_grad_enabled() and x.requires_grad:
                self.records[name] = _Record(x, f, sc, s, out)
            return out

        return forward

    def __enter__(self) -> BlockProbe:
        for name, blk in self._blocks:
            blk.forward = self._forward_for(name, blk)  # an instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc: object) -> None:
        for _, blk in self._blocks:
            blk.__dict__.pop("forward", None)
        self.records.clear()


@contextmanager
def plain_network(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as plain-N while the context is active: every shortcut add removed."""
    with BlockProbe(model, plain=True, record=False):
        yield model


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach())) / math.sqrt(t.numel())


def measure_network(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, plain: bool, regime: str) -> NetGrad:
    """One forward and backward of ``model`` (as plain-N if ``plain``) in ``regime``.

    Gradients come from ``torch.autograd.grad``, never ``.grad`` fields: a retained
    ``.grad`` of an intermediate tensor would also collect the extra backward passes
    of the decomposition. The batch regime moves the BatchNorm running statistics.
    """
    model.train(regime == "batch")
    xi = x.detach().clone().requires_grad_(True)
    convs = [(n, m.weight) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with BlockProbe(model, plain=plain) as probe:
        loss = F.cross_entropy(class_logits(model(xi)), y)
        names = [n for n, _ in probe._blocks]
        recs = [probe.records[n] for n in names]
        wanted = [xi, *(r.x for r in recs), *(r.s for r in recs), recs[-1].out, *(w for _, w in convs)]
        grads = torch.autograd.grad(loss, wanted, retain_graph=not plain, allow_unused=True)
        k = len(recs)
        g_img, g_x, g_s, g_last, g_w = grads[0], grads[1 : 1 + k], grads[1 + k : 1 + 2 * k], grads[1 + 2 * k], grads[2 + 2 * k :]
        boundaries = [{"name": "image", "shape": list(xi.shape), "rms": _rms(g_img)}]
        for name, r, g in zip(names, recs, g_x):
            if name.endswith(".0"):
                stage = name.split(".")[0]
                prev = f"layer{int(stage[5:]) - 1}" if stage != "layer1" else "stem"
                boundaries.append({"name": f"{prev}->{stage}", "shape": list(r.x.shape), "rms": _rms(g)})
        boundaries.append({"name": f"{names[-1].split('.')[0]}->pool", "shape": list(recs[-1].out.shape), "rms": _rms(g_last)})
        conv_rows = []
        for (name, _), g in zip(convs, g_w):
            if g is not None:  # plain-N never uses the projection convs
                norm = float(torch.linalg.vector_norm(g.detach()))
                conv_rows.append({"name": name, "norm": norm, "rms": norm / math.sqrt(g.numel())})
        blocks = [] if plain else [decompose(n, r, gs, gx) for n, r, gs, gx in zip(names, recs, g_s, g_x)]
    return NetGrad("plain" if plain else "resnet", regime, float(loss.detach()), boundaries, conv_rows, blocks)


def decompose(name: str, r: _Record, g: torch.Tensor, total: torch.Tensor) -> BlockGrad:
    """Split ``total`` (dL/dx at the block input) given ``g`` = dL/d(F(x) + shortcut)."""
    (res,) = torch.autograd.grad(r.f, r.x, g, retain_graph=True)
    if r.shortcut is r.x:
        sc, kind = g, "identity"
    else:
        (sc,) = torch.autograd.grad(r.shortcut, r.x, g, retain_graph=True)
        kind = "projection"
    sc_d, res_d, tot_d = sc.double(), res.double(), total.double()
    sn, rn, tn = float(sc_d.norm()), float(res_d.norm()), float(tot_d.norm())
    err = float((sc_d + res_d - tot_d).norm())
    return BlockGrad(
        name=name,
        shortcut=kind,
        grad_norm=tn,
        shortcut_term_norm=sn,
        residual_term_norm=rn,
        shortcut_share=sn / (sn + rn) if sn + rn > 0 else math.nan,
        cosine=float((sc_d * res_d).sum()) / (sn * rn) if sn > 0 and rn > 0 else math.nan,
        rel_error=err / tn if tn > 0 else (0.0 if err == 0 else math.inf),
    )


# --- data and training ---


def synthetic_batch(opts: GradFlowOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-image-like Gaussian noise with random labels, both from ``opts.seed``."""
    g = torch.Generator().manual_seed(opts.seed + 1)
    x = torch.randn(opts.batch_size, 3, opts.input_size, opts.input_size, generator=g)
    y = torch.randint(0, opts.num_classes, (opts.batch_size,), generator=g)
    return x, y


def folder_batch(opts: GradFlowOptions, preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch_size`` readable images of a class-per-subfolder folder, labelled by subfolder."""
    root = Path(opts.data)  # type: ignore[arg-type]
    if not root.is_dir():
        raise XrayError(f"--data {root}: not a folder of class subfolders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise XrayError(f"--data {root}: no class subfolders")
    if len(classes) > opts.num_classes:
        raise XrayError(f"--data {root}: {len(classes)} classes but the model has {opts.num_classes} outputs")
    tf = preprocessing.transform()
    xs, ys = [], []
    # Round-robin over classes, so a small batch still sees several labels.
    streams = [iter(ImageStream([root / c])) for c in classes]
    while len(xs) < opts.batch_size and streams:
        for i, s in list(enumerate(streams)):
            item = next(s, None)
            if item is None:
                streams[i] = None  # type: ignore[call-overload]
                continue
            xs.append(tf(item[1]))
            ys.append(classes.index(Path(item[0]).relative_to(root).parts[0]))
            if len(xs) == opts.batch_size:
                break
        streams = [s for s in streams if s is not None]
    if len(xs) < 2:
        raise XrayError(f"--data {root}: fewer than 2 readable images")
    x = torch.stack(xs)
    x = F.interpolate(x, size=(opts.input_size, opts.input_size), mode="bilinear", align_corners=False, antialias=True)
    return x, torch.tensor(ys)


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, *, plain: bool) -> list[float]:
    """``steps`` SGD steps (momentum 0.9, BatchNorm on batch statistics) on one batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    with BlockProbe(model, plain=plain, record=False):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(class_logits(model(x)), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    model.zero_grad(set_to_none=True)
    return losses


def _measure_all(base: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, regimes: tuple[str, ...]) -> dict[str, dict[str, NetGrad]]:
    out: dict[str, dict[str, NetGrad]] = {}
    for regime in regimes:
        out[regime] = {}
        for net in NETWORKS:
            m = base[net]
            # The batch regime moves BatchNorm running statistics; put them back so every
            # measurement starts from the same state.
            saved = {k: v.clone() for k, v in m.named_buffers()}
            try:
                out[regime][net] = measure_network(m, x, y, plain=net == "plain", regime=regime)
            finally:
                with torch.no_grad():
                    for k, v in m.named_buffers():
                        v.copy_(saved[k])
    return out


def measure_gradflow(options: GradFlowOptions | None = None, model: nn.Module | None = None, *, quiet: bool = False) -> GradFlowResult:
    """Measure gradient flow in ResNet-N and plain-N, in both BatchNorm regimes.

    Args:
        options: architecture, batch, regimes and training steps.
        model: measure this model instead of building ``options.arch`` with ``options.weights``.
        quiet: no progress display (see :mod:`resnet_xray.progress`).

    Returns:
        A :class:`GradFlowResult` with per-block decompositions, stage-boundary RMS and
        per-conv weight gradient norms; ``.explanation(regime)`` puts them in words.
    """
    opts = options or GradFlowOptions()
    try:
        device = torch.device(opts.device)
    except RuntimeError:
        raise XrayError(f"--device {opts.device}: not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise XrayError(f"--device {opts.device}: CUDA is not available here")
    meta = None
    if model is None:
        model, meta = load_model(opts.arch, opts.weights, seed=opts.seed)
    model = copy.deepcopy(model).to(device)
    opts = replace(opts, num_classes=_num_classes(model))  # the caller's options stay as given
    if opts.data:
        x, y = folder_batch(opts, meta.preprocessing if meta else Preprocessing.seed())
    else:
        x, y = synthetic_batch(opts)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(opts.seed)

    # At the start plain-N and ResNet-N share one set of weights; only training parts them.
    base = {"resnet": model, "plain": model}
    with progress("gradflow", total=1 + (len(NETWORKS) + 1 if opts.steps > 0 else 0), quiet=quiet) as bar:
        bar.stage("measure at initialisation")
        result = GradFlowResult(options=opts, init=_measure_all(base, x, y, opts.regimes))
        if opts.steps > 0:
            base["plain"] = copy.deepcopy(model)
            losses = {}
            for net in NETWORKS:
                bar.stage(f"train {net} for {opts.steps} steps")
                losses[net] = train_steps(base[net], x, y, opts.steps, opts.lr, plain=net == "plain")
            bar.stage("measure after training")
            result.trained = _measure_all(base, x, y, opts.regimes)
            result.train_losses = losses
    return result


def _num_classes(model: nn.Module) -> int:
    try:
        return int(get_classifier(model).out_features)
    except XrayError:
        return 1000
