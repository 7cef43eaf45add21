"""One forward pass that records every operation's output statistics and each block's residual numbers.

The model is traced with ``torch.fx`` and run by an :class:`torch.fx.Interpreter`,
so each call of torchvision's shared ReLU gets its own name (``relu``, ``relu_1``,
``relu_2``) and the shortcut add is a node of its own. Names are the same as in
:mod:`resnet_xray.anatomy`. The interpreter frees each value after its last use,
so only the maps asked for in :class:`TraceOptions` outlive the pass.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..anatomy.layers import _node_name, _node_type, trace_graph
from ..interface import class_logits


@dataclass
class TraceOptions:
    keep_maps: set[str] | None = None  # layer names whose full output is kept; None keeps none (stats for all)


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


@dataclass
class _PendingBlock:
    name: str
    residual: fx.Node
    shortcut: fx.Node
    dot: torch.Tensor
    add: fx.Node
    relu: fx.Node | None = None


class _StatsInterpreter(fx.Interpreter):
    """Runs the traced graph, reducing each output to statistics as soon as it exists."""

    def __init__(self, gm: fx.GraphModule, keep_maps: set[str]):
        super().__init__(gm)  # garbage_collect_values=True: a value dies after its last user
        self.modules_by_name = dict(gm.named_modules())
        self.keep_maps = keep_maps
        self.maps: dict[str, torch.Tensor] = {}
        self.order: list[fx.Node] = []
        self.names: dict[fx.Node, str] = {}
        self.types: dict[fx.Node, str] = {}
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.vectors: dict[fx.Node, torch.Tensor] = {}
        self.nonzeros: dict[fx.Node, torch.Tensor] = {}
        self.pending: dict[fx.Node, _PendingBlock] = {}  # add node -> its block
        self.done: list[_PendingBlock] = []

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output", "get_attr"):
            return super().run_node(n)
        mod = self.modules_by_name.get(n.target) if n.op == "call_module" else None
        ltype = _node_type(n, mod)
        if ltype == "add":
            # Read the two terms before the add runs: torchvision adds in place (out += identity).
            self._block_terms(n)
        out = super().run_node(n)
        if ltype is None or not isinstance(out, torch.Tensor):
            return out
        name = _node_name(n)
        self.order.append(n)
        self.names[n], self.types[n], self.shapes[n] = name, ltype, tuple(out.shape)
        self.vectors[n], self.nonzeros[n] = _stat_vector(out, count_zeros=ltype in ZERO_COUNTED)
        if name in self.keep_maps:
            self.maps[name] = out.detach().clone()  # a clone: a later in-place op would change it
        if ltype == "relu":
            for a in n.all_input_nodes:
                if a in self.pending:
                    b = self.pending.pop(a)
                    b.relu = n
                    self.done.append(b)
        return out

    def _block_terms(self, n: fx.Node) -> None:
        args = [a for a in n.args[:2] if isinstance(a, fx.Node)]
        if len(args) != 2 or not all(a in self.env for a in args):
            return
        block = _block_of(_node_name(n))
        # Look through pass-through modules (the nn.Identity left where a BatchNorm was fused away).
        terms = [self._tabulated(a) for a in args]
        if not all(t in self.names for t in terms):
            return
        names = [self.names[t] for t in terms]
        # F(x) comes from inside the block's main path; the other term is x or its projection.
        # (A fused model has no bn3, so the test is on the path, not on the layer type.)
        is_res = [nm.startswith(block + ".") and not nm.startswith(block + ".downsample") for nm in names]
        if is_res.count(True) != 1:
            return
        (ri, si) = (0, 1) if is_res[0] else (1, 0)
        f, s = self.env[args[ri]].detach().reshape(-1), self.env[args[si]].detach().reshape(-1)
        self.pending[n] = _PendingBlock(block, terms[ri], terms[si], torch.dot(f.float(), s.float()), n)

    def _tabulated(self, a: fx.Node) -> fx.Node:
        while a not in self.names and a.op == "call_module" and len(a.all_input_nodes) == 1:
            if not isinstance(self.modules_by_name.get(a.target), nn.Identity):
                break
            a = a.all_input_nodes[0]
        return a

    def results(self) -> tuple[list[LayerStats], list[BlockStats]]:
        if not self.order:
            return [], []
        # One read-back for the whole pass.
        vecs = torch.stack([self.vectors[n] for n in self.order]).double().tolist()
        counts = torch.stack([self.nonzeros[n] for n in self.order]).tolist()
        by_node = {
            n: _finish(self.names[n], self.types[n], self.shapes[n], [*v, c]) for n, v, c in zip(self.order, vecs, counts)
        }
        dots = torch.stack([b.dot for b in self.done]).double().tolist() if self.done else []
        blocks = []
        for b, dot in zip(self.done, dots):
            r, s = by_node[b.residual], by_node[b.shortcut]
            projection = ".downsample" in s.name
            blocks.append(
                BlockStats(
                    name=b.name,
                    residual_norm=r.l2,
                    shortcut_norm=s.l2,
                    ratio=r.l2 / s.l2 if s.l2 > 0 else float("inf"),
                    cosine=dot / (r.l2 * s.l2) if r.l2 > 0 and s.l2 > 0 else float("nan"),
                    active_frac=1.0 - by_node[b.relu].zero_frac,  # ReLU output is >= 0: non-zero means > 0
                    projection=projection,
                    residual_from=r.name,
                    shortcut_from=s.name if projection else f"{b.name} input ({s.name})",
                    output_norm=by_node[b.add].l2,
                )
            )
        return [by_node[n] for n in self.order], blocks


# Tracing costs about a third of a CPU forward pass, so a model's graph is kept while
# its module tree is unchanged (a pruned or re-headed model is traced again).
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[str, int, int], ...], fx.GraphModule]] = weakref.WeakKeyDictionary()


def traced_graph(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` graph of ``model``, cached per model while its module tree is the same."""
    # A forward swapped on an instance (plain_network, a probe) changes the graph too.
    key = tuple((name, id(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules())
    hit = _GRAPHS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    gm = trace_graph(model)
    _GRAPHS[model] = (key, gm)
    return gm


@torch.no_grad()
def trace_model(model: nn.Module, x: torch.Tensor, options: TraceOptions | None = None) -> Trace:
    """Run ``model`` once on ``x`` and record every operation's output statistics.

    Args:
        model: a torchvision-style ResNet (any module ``torch.fx`` can trace).
        x: an NCHW batch (a 1x3xHxW image is the usual case); a CHW tensor is batched.
        options: which layers' full output maps to keep.

    Returns:
        A :class:`Trace`; ``trace.logits`` equals ``model(x)``.
    """
    opts = options or TraceOptions()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    interp = _StatsInterpreter(traced_graph(model), set(opts.keep_maps or ()))
    out = interp.run(x)
    layers, blocks = interp.results()
    logits = class_logits(out)
    return Trace(logits=logits, layers=layers, blocks=blocks, maps=interp.maps)


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
    from ..image import load_image

    x = preprocessing(load_image(image)).unsqueeze(0)
    return trace_model(model, x, options)
