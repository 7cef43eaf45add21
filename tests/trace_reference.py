"""The first trace engine, kept as the reference the product's generated-code engine is checked against.

An :class:`torch.fx.Interpreter` that reduces every operation's output in full, as it is produced: slow,
but with nothing derived, so each number it gives is read straight off the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from resnet_xray.dissect.layers import _node_name, _node_type
from resnet_xray.interface import class_logits
from resnet_xray.tracing import BlockStats, LayerStats, Trace, TraceOptions, trace_model
from resnet_xray.tracing.capture import ZERO_COUNTED, _block_of, _block_stats, _finish, _stat_vector, traced_graph


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
        blocks = [_block_stats(b.name, by_node[b.residual], by_node[b.shortcut], by_node[b.add], by_node[b.relu], dot)
                  for b, dot in zip(self.done, dots)]
        return [by_node[n] for n in self.order], blocks


@torch.inference_mode()
def reference_trace(model: nn.Module, x: torch.Tensor, options: TraceOptions | None = None) -> Trace:
    """What :func:`resnet_xray.tracing.trace_model` returns, from the interpreter (``options.engine`` is ignored)."""
    opts = options or TraceOptions()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    interp = _StatsInterpreter(traced_graph(model), set(opts.keep_maps or ()))
    out = interp.run(x)
    layers, blocks = interp.results()
    return Trace(logits=class_logits(out), layers=layers, blocks=blocks, maps=interp.maps)


def trace_with(model: nn.Module, x: torch.Tensor, engine: str) -> Trace:
    """A trace by one of the product's engines, or by this reference where ``engine`` is "interpreter"."""
    if engine == "interpreter":
        return reference_trace(model, x)
    return trace_model(model, x, TraceOptions(engine=engine))
