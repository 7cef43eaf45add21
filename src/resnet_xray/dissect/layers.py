"""The per-layer table: every operation the model runs, with its shape, cost and receptive field.

The model is traced with ``torch.fx`` rather than hooked, because torchvision's
Bottleneck calls one ReLU module three times and adds the shortcut with ``+=``:
FX names each call (``relu``, ``relu_1``, ``relu_2``, ``add``), hooks do not.
Shapes come from running the traced graph on the meta device, so no real
compute or memory is spent.

Cost convention: conv and fc rows count multiply-accumulates (MACs); bn, relu,
add and pooling rows count their element operations in the same column.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

LAYER_TYPES = ("conv", "bn", "relu", "maxpool", "avgpool", "add", "fc", "flatten")
WEIGHTED_TYPES = ("conv", "fc")


@dataclass
class LayerRow:
    name: str  # qualified module name; repeated calls get _1, _2 (layer1.0.relu_2)
    type: str  # one of LAYER_TYPES
    stage: str  # He et al. Table 1 stage: conv1, conv2_x ... conv5_x, pool_fc
    kernel: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None
    groups: int | None
    in_channels: int | None
    out_channels: int | None
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int  # counted once per module, on its first call
    macs: int  # MACs for conv/fc, element operations otherwise (see module docstring)
    receptive_field: int  # side, in input pixels, of the region one output unit can see
    jump: int  # effective stride: input pixels between neighbouring output units
    shortcut: bool  # part of a projection shortcut (downsample), not the main path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(v: Any) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # type: ignore[return-value]


def stage_of(name: str) -> str:
    """Map a qualified name onto the stages of He et al. 2015, Table 1."""
    head = name.split(".")[0]
    if head.startswith("layer") and head[5:].isdigit():
        return f"conv{int(head[5:]) + 1}_x"
    if head == "maxpool":
        return "conv2_x"  # Table 1 puts the 3x3 max pool at the start of conv2_x
    if head in ("avgpool", "flatten", "fc"):
        return "pool_fc"
    return "conv1"


class _Recorder(fx.Interpreter):
    """Runs the traced graph and keeps each node's output shape."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        return out


def _node_name(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if n.op == "call_module":
        key = list(stack)[-1] if stack else str(n.target)
        base, _, call = key.partition("@")
        return f"{base}_{call}" if call else base
    parent = list(stack)[-1].partition("@")[0] if stack else ""
    kind = "add" if n.target in (operator.add, operator.iadd, torch.add) else getattr(n.target, "__name__", str(n.target))
    return f"{parent}.{kind}" if parent else kind


def _node_type(n: fx.Node, mod: nn.Module | None) -> str | None:
    if mod is not None:
        if isinstance(mod, nn.Conv2d):
            return "conv"
        if isinstance(mod, nn.BatchNorm2d):
            return "bn"
        if isinstance(mod, (nn.ReLU, nn.ReLU6)):
            return "relu"
        if isinstance(mod, nn.MaxPool2d):
            return "maxpool"
        if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            return "avgpool"
        if isinstance(mod, nn.Linear):
            return "fc"
        if isinstance(mod, nn.Flatten):
            return "flatten"
        return None
    if n.target in (operator.add, operator.iadd, torch.add):
        return "add"
    if n.target in (torch.flatten,) or n.target == "flatten":
        return "flatten"
    if n.target in (torch.relu, nn.functional.relu):
        return "relu"
    return None


def trace_graph(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - surfaced as a bug with a clear cause
        raise RuntimeError(f"torch.fx could not trace {type(model).__name__}: {e}") from e


def _traced_shapes(model: nn.Module, input_size: int) -> tuple[fx.GraphModule, dict[str, tuple[int, ...]]]:
    """The traced graph of a meta-device copy of ``model`` and each node's output shape on a 1x3xSxS input."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    gm = trace_graph(meta_model)
    rec = _Recorder(gm)
    rec.run(torch.empty(1, 3, input_size, input_size, device="meta"))
    return gm, rec.shapes


def _measure(ltype: str | None, mod: nn.Module | None, shape: tuple[int, ...], in_shape: tuple[int, ...],
             r_in: int, j_in: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """One operation's geometry and cost (LayerRow fields), and the receptive field (side, jump) after it."""
    out_elems = math.prod(shape[1:]) if shape else 0
    kernel = stride = padding = None
    groups = in_ch = out_ch = None
    macs = 0
    r, j = r_in, j_in
    if ltype == "conv":
        kernel, stride, padding = _pair(mod.kernel_size), _pair(mod.stride), _pair(mod.padding)
        groups, in_ch, out_ch = mod.groups, mod.in_channels, mod.out_channels
        macs = out_elems * (in_ch // groups) * kernel[0] * kernel[1]
        dil = _pair(mod.dilation)[0]
        r, j = r_in + (kernel[0] - 1) * dil * j_in, j_in * stride[0]
    elif ltype == "maxpool":
        kernel, stride, padding = _pair(mod.kernel_size), _pair(mod.stride), _pair(mod.padding)
        in_ch = out_ch = shape[1]
        macs = out_elems * (kernel[0] * kernel[1] - 1)  # comparisons
        r, j = r_in + (kernel[0] - 1) * j_in, j_in * stride[0]
    elif ltype == "avgpool":
        in_ch = out_ch = shape[1]
        macs = math.prod(in_shape[1:])  # one addition per input element
        if len(in_shape) == 4 and len(shape) == 4:
            k = in_shape[2] // max(shape[2], 1)
            kernel, stride = (k, k), (k, k)
            r, j = r_in + (k - 1) * j_in, j_in * k
    elif ltype == "fc":
        in_ch, out_ch = mod.in_features, mod.out_features
        macs = mod.in_features * mod.out_features
    elif ltype in ("bn", "relu", "add"):
        in_ch = out_ch = shape[1] if len(shape) > 1 else None
        macs = out_elems  # bn folds to one multiply-add per element; relu/add one op each
    fields = {"kernel": kernel, "stride": stride, "padding": padding, "groups": groups, "in_channels": in_ch,
              "out_channels": out_ch, "macs": int(macs)}
    return fields, (r, j)


def layer_table(model: nn.Module, input_size: int = 224) -> list[LayerRow]:
    """Trace ``model`` on a 1x3xSxS input and return one row per operation, in execution order."""
    gm, shapes = _traced_shapes(model, input_size)
    modules = dict(gm.named_modules())

    rf: dict[str, tuple[int, int]] = {}  # node name -> (receptive field, jump)
    seen_params: set[str] = set()
    rows: list[LayerRow] = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            rf[n.name] = (1, 1)
            continue
        if n.op == "output":
            continue
        ins = [a for a in n.all_input_nodes if a.name in rf]
        r_in, j_in = max((rf[a.name] for a in ins), default=(1, 1))
        mod = modules.get(n.target) if n.op == "call_module" else None
        ltype = _node_type(n, mod)
        shape = shapes.get(n.name, ())
        in_shape = shapes.get(ins[0].name, ()) if ins else ()
        fields, rf[n.name] = _measure(ltype, mod, shape, in_shape, r_in, j_in)
        if ltype is None:
            continue  # an op we do not tabulate (e.g. a view); the field still flows through

        params = 0
        if mod is not None and n.target not in seen_params:
            seen_params.add(n.target)
            params = sum(p.numel() for p in mod.parameters(recurse=False))
        name = _node_name(n)
        r, j = rf[n.name]
        rows.append(LayerRow(name=name, type=ltype, stage=stage_of(name), **fields, output_shape=tuple(shape[1:]),
                             params=int(params), receptive_field=int(r), jump=int(j),
                             shortcut=".downsample" in name))
    return rows
