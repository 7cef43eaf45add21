"""Each op's share of a forward pass, timed node by node on the model's own ``torch.fx`` graph.

The trace measures what each op outputs, not how long it takes, so the layer map's
"share of time" comes from here: the same graph the trace runs (so the names are the
anatomy's), interpreted once per node with a clock around each, over a few passes.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from torch import fx, nn

from ..dissect.layers import _node_name, _node_type
from ..tracing.capture import traced_graph


class _Clocked(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def run_node(self, n: fx.Node) -> Any:
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.seconds[n.name].append(time.perf_counter() - t0)
        return out


@torch.inference_mode()
def op_times(model: nn.Module, x: torch.Tensor, passes: int = 3) -> dict[str, float]:
    """Share of the time of one forward pass of ``x`` per traced op name (the median over ``passes``, after one warm-up)."""
    gm = traced_graph(model)
    modules = dict(gm.named_modules())
    clock = _Clocked(gm)
    clock.run(x)  # warm-up: allocator and kernel selection
    clock.seconds.clear()
    for _ in range(passes):
        clock.run(x)
    names = {}
    for n in gm.graph.nodes:
        mod = modules.get(n.target) if n.op == "call_module" else None
        if n.op in ("call_module", "call_function", "call_method") and _node_type(n, mod) is not None:
            names[n.name] = _node_name(n)
    median = {names[k]: statistics.median(v) for k, v in clock.seconds.items() if k in names}
    total = sum(median.values()) or 1.0
    return {k: v / total for k, v in median.items()}
