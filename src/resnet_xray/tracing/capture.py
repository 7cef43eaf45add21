"""One forward pass that records every operation's output statistics and each block's residual numbers.

The model is traced with ``torch.fx``, so each call of torchvision's shared ReLU
gets its own name (``relu``, ``relu_1``, ``relu_2``) and the shortcut add is a
node of its own. Names are the same as in :mod:`resnet_xray.dissect`.

The engine writes a statistics call after every operation into the model's
generated FX code once (cached per model), so a trace runs as plain Python with
no per-node interpreter work, and reads each output only for what cannot be
derived exactly from numbers already in hand (see ``MODES``). The logits are
the model's own, bit for bit. The first engine, an :class:`torch.fx.Interpreter`
that reads every output in full, lives on in the tests as the reference this
one is checked against. Only the maps asked for in :class:`TraceOptions`
outlive the pass.
"""

from __future__ import annotations

import math
import operator
import os
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..dissect.layers import _node_name, _node_type, trace_graph
from ..image import load_image
from ..interface import class_logits
from . import kernels
from ..options import option


@dataclass
class TraceOptions:
    keep_maps: set[str] | None = option(None, "layer names whose full output is kept; None keeps none (stats for all)")
    # "codegen": statistics calls written into the model's FX code once, each output read only for what
    # cannot be derived (see MODES); "codegen-full": the same code, every output read in full. Both give
    # the same numbers up to float rounding; benchmarks/bench_trace.py times them side by side.
    engine: str = "codegen"


ENGINES = ("codegen", "codegen-full")


@dataclass
class LayerStats:
    """Statistics of one operation's output, pooled over the whole batch."""

    name: str  # anatomy name: layer1.0.relu_2, layer1.0.add, fc ...
    type: str  # conv, bn, relu, maxpool, avgpool, add, fc, flatten
    shape: tuple[int, ...]  # full output shape, batch first
    mean: float
    std: float  # population standard deviation (no Bessel correction)
    min: float
    max: float
    zero_frac: float | None  # fraction of exact zeros, after a ReLU or max pool only (the units that are off)
    l2: float  # Euclidean norm of the whole output tensor

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class BlockStats:
    """How much one residual block changes its input: y = relu(F(x) + shortcut(x))."""

    name: str  # block module name: layer1.0 ... layer4.2
    residual_norm: float  # ||F(x)||: the last BatchNorm of the main path (bn3, or bn2 in a BasicBlock)
    shortcut_norm: float  # ||x|| for an identity shortcut, ||downsample(x)|| for a projection
    ratio: float  # residual_norm / shortcut_norm
    cosine: float  # cosine between F(x) and the shortcut, flattened over the batch
    active_frac: float  # fraction of block output units > 0 after the final ReLU
    projection: bool  # True where the shortcut is the 1x1 conv + BN projection (option B)
    residual_from: str  # layer that produced F(x)
    shortcut_from: str  # layer that produced the shortcut term
    output_norm: float  # ||F(x) + shortcut||, before the final ReLU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trace:
    logits: torch.Tensor  # exactly what model(x) returns (the class logits of a multi-task model)
    layers: list[LayerStats]
    blocks: list[BlockStats]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # only the names in keep_maps, detached copies

    def layer(self, name: str) -> LayerStats:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [r.to_dict() for r in self.layers], "blocks": [b.to_dict() for b in self.blocks]}


def _block_of(node_name: str) -> str:
    return node_name.rsplit(".", 1)[0]


# Zeros mean "unit switched off" only after a ReLU (and a max pool over ReLU outputs);
# elsewhere counting them would be an extra pass over memory that says nothing.
ZERO_COUNTED = ("relu", "maxpool")


def _stat_vector(t: torch.Tensor, count_zeros: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, sum of squares, max, min) of ``t`` as one small tensor, and its non-zero count (-1: not counted).

    Plain reductions run near memory speed on the CPU, where ``torch.var_mean`` is
    tens of times slower; that difference decides whether a trace costs 1.2x or 5x
    a forward pass. Nothing is read back here, so a GPU trace does not sync per layer.
    """
    f = t.detach().reshape(-1)
    if f.dtype != torch.float32:
        f = f.float()
    if f.numel() == 0:
        return torch.zeros(4, dtype=torch.float32, device=f.device), torch.zeros((), dtype=torch.int64, device=f.device)
    # Counting the float32 words whose bits are not all zero needs no temporary tensor and is
    # several times faster than comparing floats. Only a negative zero (-0.0) would be miscounted
    # as non-zero; a ReLU never produces one.
    nonzero = torch.count_nonzero(f.view(torch.int32)) if count_zeros else torch.full((), -1, device=f.device)
    lo, hi = torch.aminmax(f)  # one pass for both
    return torch.stack([f.sum(), torch.dot(f, f), hi, lo]), nonzero


def _finish(name: str, ltype: str, shape: tuple[int, ...], v: list[float]) -> LayerStats:
    n = math.prod(shape)
    if n == 0:
        nan = float("nan")
        return LayerStats(name, ltype, shape, nan, nan, nan, nan, 0.0, 0.0)
    total, sumsq, hi, lo, nonzero = v  # the count is exact: it travels as an int64
    mean = total / n
    # E[x^2] - E[x]^2 in float64; clamp the rounding error of a constant map at zero.
    var = max(sumsq / n - mean * mean, 0.0)
    zero_frac = (n - nonzero) / n if nonzero >= 0 else None
    return LayerStats(name, ltype, shape, mean, math.sqrt(var), lo, hi, zero_frac, math.sqrt(max(sumsq, 0.0)))


def tensor_stats(name: str, ltype: str, t: torch.Tensor) -> LayerStats:
    """Mean, std (population), min, max, zero fraction and L2 norm of ``t``."""
    vec, nonzero = _stat_vector(t, count_zeros=ltype in ZERO_COUNTED)
    return _finish(name, ltype, tuple(t.shape), [*vec.double().tolist(), int(nonzero)])


def _block_stats(name: str, r: LayerStats, s: LayerStats, add: LayerStats, relu: LayerStats, dot: float) -> BlockStats:
    projection = ".downsample" in s.name
    return BlockStats(
        name=name,
        residual_norm=r.l2,
        shortcut_norm=s.l2,
        ratio=r.l2 / s.l2 if s.l2 > 0 else float("inf"),
        cosine=dot / (r.l2 * s.l2) if r.l2 > 0 and s.l2 > 0 else float("nan"),
        active_frac=1.0 - relu.zero_frac,  # ReLU output is >= 0: non-zero means > 0
        projection=projection,
        residual_from=r.name,
        shortcut_from=s.name if projection else f"{name} input ({s.name})",
        output_norm=add.l2,
    )


# ---------------------------------------------------------------------------------------------
# The generated-code engine: the statistics calls are written into the model's own FX code once,
# so a trace runs as compiled Python, with no per-node interpreter work.


# How the generated code reduces an op's output. Each full pass over a big activation costs memory
# bandwidth, so an output is read only for what cannot be derived exactly from numbers already in hand:
#   full      sum, sum of squares, max, min (and zeros after ReLU/max pool): two passes on the CPU (one
#             kernel pass for the sums and zeros, see trace.kernels, one aminmax), else four or five
#   channels  a conv that feeds an eval-mode BatchNorm: the same four, per channel (as fast as whole-tensor ones)
#   affine    that BatchNorm: y = a*x + b per channel, so its statistics follow from the conv's per-channel
#             ones (exact up to float rounding); its output is never read
#   relu      an nn.ReLU whose input is tabulated: sum, sum of squares and zeros read; min/max = max(input's, 0)
#   add       a block's add: sum and sum of squares from F(x), the shortcut and their dot product
#             (||F+S||^2 = ||F||^2 + ||S||^2 + 2 F.S, needed anyway for the cosine); max and min read.
#             On the CPU with numba it runs as add-read instead: kernels.residual reads F(x) and the
#             shortcut once before the add, and nothing is read after it
#   add-read, relu-read
#             that add, and the nn.ReLU right after it, from kernels.residual's numbers alone
MODES = ("full", "channels", "affine", "relu", "add", "add-read", "relu-read")
CHANNEL_MIN_AREA = 256  # per-channel reductions pay off only on maps of at least this many pixels (16x16)


@dataclass
class _Entry:
    name: str
    type: str
    count_zeros: bool
    mode: str = "full"
    src: int | None = None  # the tabulated op whose output is this op's input (affine, relu)
    module: nn.Module | None = None  # the BatchNorm of an affine entry
    terms: tuple[int, int, int] | None = None  # add: (F(x) entry, shortcut entry, dot index)


@dataclass
class _BlockPlan:
    name: str
    residual: int  # index of F(x)'s entry
    shortcut: int  # index of the shortcut term's entry
    add: int  # index of the add's entry
    relu: int  # index of the ReLU after the add


def _bn_affine(m: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (a, b) with bn(x) = a*x + b, or None where the output is not such a map (training mode)."""
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    a = 1.0 / np.sqrt(m.running_var.detach().double().cpu().numpy() + m.eps)
    b = -m.running_mean.detach().double().cpu().numpy() * a
    if m.weight is not None:
        w = m.weight.detach().double().cpu().numpy()
        a, b = a * w, b * w
    if m.bias is not None:
        b = b + m.bias.detach().double().cpu().numpy()
    return a, b


class _StatsSink:
    """What the generated code calls after each tabulated op; it keeps one small statistics vector per op.

    The generated code calls :meth:`stat` and :meth:`dot` as plain functions (no ``nn.Module`` call),
    and every reduction writes straight into a preallocated buffer (``out=``), so a pass leaves one
    buffer to read back instead of hundreds of scalar tensors to stack. A trace is mostly these few
    hundred small calls on top of the forward pass, so their per-call cost is what is trimmed here.
    """

    def __init__(self, entries: list[_Entry], n_dots: int):
        self.entries = entries
        self.n_dots = n_dots
        # Per entry, whether its BatchNorm can ever be an affine map (fixed at build; train/eval is checked per pass).
        self.bn_stats = [isinstance(e.module, nn.BatchNorm2d) and e.module.running_var is not None for e in entries]
        self._affine_key: list | None = None  # what the cached BatchNorm maps were computed from (see _affine)
        self._affine_rows: tuple[np.ndarray, ...] | None = None
        self.device: torch.device | None = None
        self.reset(set())

    def _buffers(self, device: torch.device) -> None:
        # [sum, sumsq, max, min] per entry and one dot product per block, as views made once per device.
        self.device = device
        self.buf = torch.zeros(len(self.entries), 4, device=device)
        self.cols = [tuple(row.unbind(0)) for row in self.buf.unbind(0)]
        self.dot_buf = torch.zeros(max(self.n_dots, 1), device=device)
        self.dot_cols = self.dot_buf.unbind(0)

    def reset(self, keep_maps: set[str], device: torch.device | None = None) -> None:
        if device is not None and device != self.device:
            self._buffers(device)
        n = len(self.entries)
        self.keep = keep_maps
        self.counts: list[tuple[int, torch.Tensor]] = []  # (entry, count of non-zero elements)
        self.channels: dict[int, tuple] = {}  # channels-mode entries: per-row (sum, sumsq or its root, max, min)
        self.shapes: list[tuple[int, ...] | None] = [None] * n
        self.dots: set[int] = set()  # blocks whose dot product was written
        self.maps: dict[str, torch.Tensor] = {}
        self.modes: dict[int, str] = {}  # entry -> the mode it was reduced in, for those that ran
        self.fused: list[int] = []  # entries whose sum, sumsq and count came from the one-pass kernel
        self.nb = np.zeros((n, 3))  # their [sum, sumsq, non-zero count]
        # A block's add and its ReLU, reduced from one read of the add's terms (kernels.residual):
        # per dot index, [sum y, sum y^2, F.S, sum relu(y), sum relu(y)^2, count y > 0, max y, min y].
        self.res = np.full((max(self.n_dots, 1), 8), np.nan)
        self.res_done: set[int] = set()
        self.one_pass = device is not None and device.type == "cpu" and kernels.enabled()
        self.par = self.one_pass and kernels.threads(torch.get_num_threads()) > 1
        # One aminmax pass beats amax + amin with two or more threads, and loses to them on one.
        self.aminmax = torch.get_num_threads() > 1

    def _derived(self, e: _Entry, i: int) -> bool:
        """Whether entry ``i`` follows from numbers already in hand this pass (its mode is then recorded)."""
        mode = e.mode
        if mode == "affine":
            if self.modes.get(e.src) == "channels" and not e.module.training and self.bn_stats[i]:
                self.modes[i] = "affine"  # derived from its conv's per-channel numbers; the output is never read
                return True
        elif mode == "add":
            if not np.isnan(self.res[e.terms[2], 0]):  # NaN: not reduced this pass, or y holds a NaN
                self.modes[i] = "add-read"  # kernels.residual read its terms: nothing left to read here
                return True
        elif mode == "relu" and self.modes.get(e.src) == "add-read":
            self.modes[i] = "relu-read"  # the ReLU after that add, from the same read
            return True
        return False

    def stat(self, t: torch.Tensor, i: int) -> None:
        e = self.entries[i]
        self.shapes[i] = tuple(t.shape)
        if self.keep and e.name in self.keep:
            self.maps[e.name] = t.detach().clone()  # a clone: the in-place ReLU that follows would change it
        # The derived modes first, before any look at the tensor: these calls are about half of all,
        # and their source's checks (device, size, dtype) already passed when it was read.
        if self._derived(e, i):
            return
        mode = e.mode
        f = t.detach()
        if f.numel() == 0 or f.device != self.device:
            return  # empty (zeros, as _finish expects) or on a device the buffers are not on (not tabulated)
        if f.dtype != torch.float32:
            f = f.float()
        mode = mode if f.dim() >= 2 else "full"
        one_pass = self.one_pass and f.is_contiguous()
        if mode == "channels" and not one_pass and math.prod(f.shape[2:]) < CHANNEL_MIN_AREA:
            mode = "full"  # small maps: PyTorch's per-row reductions cost more than the BatchNorm pass they save
        elif mode == "affine":
            mode = "full"  # its conv was not reduced per channel, or the BatchNorm uses batch statistics
        elif mode == "relu" and self.shapes[e.src] is None:
            mode = "full"
        elif mode == "add" and e.terms[2] not in self.dots:
            mode = "full"
        self.modes[i] = mode
        if mode == "channels":
            v = f.reshape(f.shape[0] * f.shape[1], -1)  # rows are (image, channel): no copy
            if one_pass:  # one pass for all four, at any map size
                s, q, hi, lo = kernels.row_extremes(v, self.par)
                if np.isnan(s).any():  # the order keys do not rank a NaN: PyTorch's extremes propagate it
                    hi, lo = torch.amax(v, 1), torch.amin(v, 1)
                self.channels[i] = (s, q, hi, lo)
            else:
                self.channels[i] = (v.sum(1), torch.linalg.vector_norm(v, dim=1), torch.amax(v, 1), torch.amin(v, 1))  # the norm is squared on read-back
            return
        flat = f.reshape(-1)
        out = self.cols[i]
        if mode != "add":  # an add's sum and sum of squares follow from its terms and their dot product
            if one_pass:
                kernels.flat_stats(flat, self.nb[i], self.par)
                self.fused.append(i)
            else:
                torch.sum(flat, 0, out=out[0])
                torch.dot(flat, flat, out=out[1])
                if e.count_zeros:
                    # Counting the float32 words whose bits are not all zero needs no temporary tensor; only a
                    # negative zero (-0.0) would be miscounted as non-zero, and a ReLU never produces one.
                    self.counts.append((i, torch.count_nonzero(flat.view(torch.int32))))
        if mode != "relu":  # a ReLU's max and min follow from its input's
            if self.aminmax:
                torch.aminmax(flat, out=(out[3], out[2]))
            else:
                torch.amax(flat, 0, out=out[2])
                torch.amin(flat, 0, out=out[3])

    def dot(self, f: torch.Tensor, s: torch.Tensor, k: int) -> None:
        """Called just before a block's add: the dot product of F(x) and the shortcut, for their cosine."""
        f, s = f.detach(), s.detach()
        if f.device != self.device or f.numel() == 0:
            return
        if (self.one_pass and f.dtype == s.dtype == torch.float32 and f.shape == s.shape and f.is_contiguous()
                and s.is_contiguous()):
            r, hi, lo = kernels.residual(f, s, self.par)
            self.res[k, :6], self.res[k, 6], self.res[k, 7] = r, hi, lo
            self.res_done.add(k)
            self.dots.add(k)
            return
        torch.dot(f.reshape(-1).float(), s.reshape(-1).float(), out=self.dot_cols[k])
        self.dots.add(k)

    def read_back(self) -> tuple[list[int], list[list[float]], dict[int, int], dict[int, float]]:
        """The entries that ran, their [sum, sumsq, max, min] in float64 (derived ones filled in), their
        non-zero counts, and the blocks' dot products: one device-to-host copy per kind of number."""
        done = [i for i, sh in enumerate(self.shapes) if sh is not None]
        vecs = np.zeros((len(self.entries), 4))
        if self.modes:
            vecs[:] = self.buf.double().cpu().numpy()
        read = sorted(self.dots - self.res_done)
        dots = dict(zip(read, self.dot_buf.double().cpu().numpy()[read].tolist()))
        dots.update((k, float(self.res[k, 2])) for k in self.res_done)
        counts = dict(zip([i for i, _ in self.counts], torch.stack([c for _, c in self.counts]).tolist())) if self.counts else {}
        for i in self.fused:
            vecs[i][:2] = self.nb[i][:2]
            if self.entries[i].count_zeros:
                counts[i] = int(self.nb[i][2])
        for i in done:  # an empty output (or one not reduced): zeros, as _finish expects
            if i not in self.modes:
                vecs[i] = 0.0
        return done, self.derive(vecs, dots, counts), counts, dots

    def derive(self, vecs: np.ndarray, dots: dict[int, float], counts: dict[int, int]) -> list[list[float]]:
        """The statistics that were derived rather than read filled in: the per-channel ones (convs and
        their BatchNorms) all at once, then the rest in execution order (on plain lists: per-element
        numpy access costs more than the arithmetic)."""
        chans = {}
        for i, (s, q, hi, lo) in self.channels.items():
            if isinstance(q, torch.Tensor):  # the PyTorch path keeps the per-row norm
                s, q = s.double().cpu().numpy(), q.double().cpu().numpy() ** 2
            if isinstance(hi, torch.Tensor):
                hi, lo = hi.double().cpu().numpy(), lo.double().cpu().numpy()
            chans[i] = (s, q, hi, lo)
        ch = list(chans)
        if ch:
            seg = _segments([chans[i] for i in ch])
            s, q, hi, lo, starts = seg
            vecs[ch] = np.stack([np.add.reduceat(s, starts), np.add.reduceat(q, starts),
                                 np.maximum.reduceat(hi, starts), np.minimum.reduceat(lo, starts)], 1)
        aff = [i for i, mode in self.modes.items() if mode == "affine"]
        if aff:
            srcs = [self.entries[i].src for i in aff]
            # Usually every per-channel conv feeds a BatchNorm: the same rows, in the same order.
            s, q, hi, lo, starts = seg if srcs == ch else _segments([chans[i] for i in srcs])
            a, b, nb, a2, ab2, nbb, pos = self._affine(aff)  # per row (image, channel), as the rows of s, q, hi, lo
            # sum(a x + b) = a S + n b;  sum((a x + b)^2) = a^2 Q + 2 a b S + n b^2;  a < 0 swaps max and min
            top, bottom = np.where(pos, hi, lo), np.where(pos, lo, hi)
            vecs[aff] = np.stack([np.add.reduceat(a * s + nb, starts), np.add.reduceat(a2 * q + ab2 * s + nbb, starts),
                                  np.maximum.reduceat(a * top + b, starts), np.minimum.reduceat(a * bottom + b, starts)], 1)
        rows, res = vecs.tolist(), self.res.tolist()
        for i, mode in self.modes.items():
            e = self.entries[i]
            v = rows[i]
            if mode == "relu":
                v[2], v[3] = max(rows[e.src][2], 0.0), max(rows[e.src][3], 0.0)
            elif mode == "add-read":
                r = res[e.terms[2]]
                rows[i] = [r[0], r[1], r[6], r[7]]
            elif mode == "relu-read":
                r = res[self.entries[e.src].terms[2]]
                rows[i] = [r[3], r[4], max(r[6], 0.0), max(r[7], 0.0)]
                counts[i] = int(r[5])
            elif mode == "add":
                fi, si, k = e.terms
                v[0] = rows[fi][0] + rows[si][0]
                v[1] = rows[fi][1] + rows[si][1] + 2.0 * dots[k]
        return rows

    def _affine(self, aff: list[int]) -> tuple[np.ndarray, ...]:
        """The BatchNorms' (a, b) of ``aff``'s entries, one per (image, channel) row, with the products the
        derivation needs (n b, a^2, 2 a b, n b^2 for n pixels a row, and a >= 0); kept while no BatchNorm
        tensor was replaced or changed (their version counters) and the shapes hold."""
        key = [tuple(self.shapes[i]) for i in aff]
        for i in aff:
            m = self.entries[i].module
            key.append(m.eps)
            for t in (*m._buffers.values(), *m._parameters.values()):
                if t is not None:
                    key.append((id(t), t._version))
        if self._affine_key == key:
            return self._affine_rows
        a, b, n = [], [], []
        for i in aff:
            shape = self.shapes[i]
            ai, bi = _bn_affine(self.entries[i].module)
            a.append(np.tile(ai, shape[0]))
            b.append(np.tile(bi, shape[0]))
            n.append(np.full(shape[0] * shape[1], math.prod(shape[2:]), np.float64))
        a, b, n = np.concatenate(a), np.concatenate(b), np.concatenate(n)
        self._affine_key, self._affine_rows = key, (a, b, n * b, a * a, 2 * a * b, n * b * b, a >= 0)
        return self._affine_rows


def _segments(rows: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenated (s, q, hi, lo) rows of several entries (float64), and where each entry's rows start."""
    lengths = [len(r[0]) for r in rows]
    starts = np.zeros(len(rows), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return (*(np.concatenate([r[k] for r in rows]).astype(np.float64, copy=False) for k in range(4)), starts)


class _Instrumented:
    """A model's FX code with statistics calls inserted after every tabulated op (built once per model)."""

    def __init__(self, model: nn.Module, fused: bool = True):
        gm = trace_graph(model)
        self.mods = dict(gm.named_modules())
        self.entries: list[_Entry] = []
        self.index: dict[fx.Node, int] = {}  # tabulated node -> its entry
        for n in gm.graph.nodes:
            if n.op not in ("call_module", "call_function", "call_method"):
                continue
            mod = self.mods.get(n.target) if n.op == "call_module" else None
            ltype = _node_type(n, mod)
            if ltype is not None:
                self.index[n] = len(self.entries)
                self.entries.append(_Entry(_node_name(n), ltype, ltype in ZERO_COUNTED, module=mod))
        self.blocks, dot_args = self._plan_blocks(fused)
        if fused:
            self._plan_derived()
        for add, f, _ in dot_args:
            # torch.fx records torchvision's `out += identity` as an out-of-place add (a Proxy has no
            # __iadd__): a fresh tensor per block and its page faults. Where F(x) has no other user the
            # in-place add the model itself runs gives the same bits without that allocation.
            if add.target is operator.add and add.args[0] is f and len(f.users) == 1 and add.args[1] is not f:
                add.target = operator.iadd
        self.sink = _StatsSink(self.entries, len(dot_args))
        g = gm.graph
        for k, (add, f, s) in enumerate(dot_args):
            with g.inserting_before(add):
                g.call_function(self.sink.dot, (f, s, k))
        for n, i in self.index.items():
            with g.inserting_after(n):
                g.call_function(self.sink.stat, (n, i))
        gm.recompile()
        self.gm = gm

    def _tabulated(self, a: fx.Node) -> fx.Node:
        # Look through pass-through modules (the nn.Identity left where a BatchNorm was fused away).
        while a not in self.index and a.op == "call_module" and len(a.all_input_nodes) == 1:
            if not isinstance(self.mods.get(a.target), nn.Identity):
                break
            a = a.all_input_nodes[0]
        return a

    def _plan_blocks(self, fused: bool) -> tuple[list[_BlockPlan], list[tuple[fx.Node, fx.Node, fx.Node]]]:
        """Each residual add's block: which term is F(x), which the shortcut, and the ReLU after it;
        with the (add, residual term, shortcut term) nodes that get a dot-product call before the add."""
        entries, index = self.entries, self.index
        blocks: list[_BlockPlan] = []
        dot_args: list[tuple[fx.Node, fx.Node, fx.Node]] = []
        for n, i in index.items():
            args = [a for a in n.args[:2] if isinstance(a, fx.Node)]
            if entries[i].type != "add" or len(args) != 2:
                continue
            terms = [self._tabulated(a) for a in args]
            if not all(t in index for t in terms):
                continue
            block = _block_of(entries[i].name)
            names = [entries[index[t]].name for t in terms]
            # F(x) comes from inside the block's main path; the other term is x or its projection.
            is_res = [nm.startswith(block + ".") and not nm.startswith(block + ".downsample") for nm in names]
            relu = next((index[u] for u in n.users if u in index and entries[index[u]].type == "relu"), None)
            if is_res.count(True) != 1 or relu is None:
                continue
            ri, si = (0, 1) if is_res[0] else (1, 0)
            if fused and terms[ri] is args[ri] and terms[si] is args[si] and not n.kwargs:  # no alpha=
                entries[i].mode, entries[i].terms = "add", (index[terms[ri]], index[terms[si]], len(dot_args))
            blocks.append(_BlockPlan(block, index[terms[ri]], index[terms[si]], i, relu))
            dot_args.append((n, args[ri], args[si]))
        return blocks, dot_args

    def _plan_derived(self) -> None:
        """Mark the conv -> BatchNorm pairs (per-channel read, affine derivation) and the ReLUs whose
        max and min follow from their input's (see MODES)."""
        entries, index = self.entries, self.index
        for n, i in index.items():
            e = entries[i]
            src = n.all_input_nodes[0] if len(n.all_input_nodes) == 1 else None
            if e.type == "bn" and isinstance(e.module, nn.BatchNorm2d) and src in index and entries[index[src]].type == "conv" \
                    and len(src.users) == 1:
                entries[index[src]].mode = "channels"
                e.mode, e.src = "affine", index[src]
            elif e.type == "relu" and src in index and type(e.module) is nn.ReLU:  # not ReLU6: it clamps at 6 too
                e.mode, e.src = "relu", index[src]

    def run(self, x: torch.Tensor, keep_maps: set[str]) -> tuple[Any, list[LayerStats], list[BlockStats], dict[str, torch.Tensor]]:
        s = self.sink
        s.reset(keep_maps, x.device)
        try:
            out = self.gm(x)
            # One read-back for the whole pass, then the derived statistics in float64.
            done, vecs, counts, dots = s.read_back()
            if not done:
                return out, [], [], s.maps
            rows = {i: _finish(self.entries[i].name, self.entries[i].type, s.shapes[i], [*vecs[i], counts.get(i, -1)])
                    for i in done}
            blocks = [_block_stats(b.name, rows[b.residual], rows[b.shortcut], rows[b.add], rows[b.relu], dots[k])
                      for k, b in enumerate(self.blocks) if k in dots]
            return out, [rows[i] for i in done], blocks, s.maps
        finally:
            s.reset(set())  # drop this pass's tensors: the sink lives as long as the model


_INSTRUMENTED: weakref.WeakKeyDictionary[nn.Module, dict[bool, tuple[Any, _Instrumented]]] = weakref.WeakKeyDictionary()


# Tracing costs about a third of a CPU forward pass, so a model's graph is kept while
# its module tree is unchanged (a pruned or re-headed model is traced again).
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[str, int, int], ...], fx.GraphModule]] = weakref.WeakKeyDictionary()


def _tree_key(model: nn.Module) -> tuple[tuple[str, int, int], ...]:
    # A forward swapped on an instance (plain_network, a probe) changes the graph too.
    return tuple((name, id(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules())


def instrumented(model: nn.Module, fused: bool = True) -> _Instrumented:
    """``model``'s code with the statistics calls written in, cached while its module tree is the same."""
    key = (_tree_key(model), fused)
    hits = _INSTRUMENTED.setdefault(model, {})
    hit = hits.get(fused)
    if hit is not None and hit[0] == key:
        return hit[1]
    inst = _Instrumented(model, fused)
    hits[fused] = (key, inst)
    return inst


def traced_graph(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` graph of ``model``, cached per model while its module tree is the same."""
    key = _tree_key(model)
    hit = _GRAPHS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    gm = trace_graph(model)
    _GRAPHS[model] = (key, gm)
    return gm


@torch.inference_mode()
def trace_model(model: nn.Module, x: torch.Tensor, options: TraceOptions | None = None) -> Trace:
    """Run ``model`` once on ``x`` and record every operation's output statistics.

    Args:
        model: a torchvision-style ResNet (any module ``torch.fx`` can trace).
        x: an NCHW batch (a 1x3xHxW image is the usual case); a CHW tensor is batched.
        options: which layers' full output maps to keep.

    Returns:
        A :class:`Trace`; ``trace.logits`` equals ``model(x)``. The pass runs under
        ``torch.inference_mode`` (as a plain forward for inference does), so the logits and the kept
        maps are inference tensors: ``.clone()`` one outside that mode before autograd or an in-place op.
    """
    opts = options or TraceOptions()
    if opts.engine not in ENGINES:
        raise ValueError(f"engine {opts.engine!r}: choose one of {', '.join(ENGINES)}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    out, layers, blocks, maps = instrumented(model, fused=opts.engine == "codegen").run(x, set(opts.keep_maps or ()))
    logits = class_logits(out)
    return Trace(logits=logits, layers=layers, blocks=blocks, maps=maps)


def layer_names(model: nn.Module) -> list[str]:
    """The traceable layer names of ``model``, in execution order (no forward pass)."""
    gm = traced_graph(model)
    mods = dict(gm.named_modules())
    names = []
    for n in gm.graph.nodes:
        if n.op in ("call_module", "call_function", "call_method"):
            mod = mods.get(n.target) if n.op == "call_module" else None
            if _node_type(n, mod) is not None:
                names.append(_node_name(n))
    return names


def trace_image(image: str | os.PathLike, model: nn.Module, preprocessing, options: TraceOptions | None = None) -> Trace:
    """Load ``image`` (validated, as every command does), preprocess it and trace ``model`` on it.

    Args:
        image: path to an image file.
        model: the model to trace.
        preprocessing: a :class:`resnet_xray.image.Preprocessing` (``meta.preprocessing``).
        options: which layers' full output maps to keep.
    """
    x = preprocessing(load_image(image)).unsqueeze(0)
    return trace_model(model, x, options)
