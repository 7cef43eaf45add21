"""Engine graphs in PyTorch's words: which PyTorch layer each ONNX node, OpenVINO op or FX node belongs to.

A row of the per-layer table is one layer a user knows (``layer3.2.conv2``, ``maxpool``, ``fc``)
together with what the engines fuse into it: its BatchNorm, its ReLU, and, for the last conv
of a block, the residual add. Convs and fcs are named after their weight, which every exporter
names after the parameter (``layer3.2.conv2.weight``, through INT8 DequantizeLinear nodes too);
where it did not (TorchScript folds BatchNorm into new constants) the exporter's name scope is
used. Every other node joins the row of the node that feeds it, and nodes fed only by constants
(weight dequantisation, the input's QuantizeLinear) join the row they feed.

Engines rename nodes when they fuse them (``relu_nchwc``, ``node_Conv_292_token_1``,
``input_abcd_acdb_node_Conv_292``). So the copy an engine profiles has every node (and
tensor) renamed to a tag, ``XRAY<i>X``, which survives inside whatever name the engine
derives; :func:`row_of` reads it back.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Ops a row is named after, and what kind of row each makes.
ANCHORS = {
    "Conv": "conv", "ConvInteger": "conv", "QLinearConv": "conv", "Convolution": "conv", "GroupConvolution": "conv",
    "Gemm": "fc", "MatMul": "fc", "MatMulInteger": "fc", "QLinearMatMul": "fc", "FullyConnected": "fc",
}
POOLS = {"MaxPool": "maxpool", "AveragePool": "avgpool", "GlobalAveragePool": "avgpool", "ReduceMean": "avgpool",
         "AvgPool": "avgpool", "AdaptiveAvgPool": "avgpool"}
OTHER = "(other)"  # engine work no layer owns: layout reorders of the graph input, copies
TAG = re.compile(r"XRAY(\d+)X")
# Ops that only carry a weight to its consumer, walked back over to find the weight's name.
WEIGHT_PATH = frozenset({"DequantizeLinear", "Identity", "Transpose", "Cast", "Convert", "Multiply", "Subtract",
                         "FakeQuantize", "Reshape", "Squeeze", "Unsqueeze"})


def tag(i: int) -> str:
    return f"XRAY{i}X"


@dataclass
class GraphNode:
    name: str  # the engine's node name (ONNX node name, OpenVINO friendly name, FX node name)
    op: str  # op type (ONNX / OpenVINO), or the module kind for FX (conv, fc, maxpool, ...)
    inputs: list[str]  # the nodes feeding its non-constant inputs, in input order ("" for the graph input)
    weight: str | None = None  # the PyTorch module its weight belongs to (``layer1.0.conv1``)
    scope: str | None = None  # the PyTorch module the exporter recorded for it, when it did


@dataclass
class LayerGroups:
    """Rows of a graph: which row each node joins, the rows in execution order, and where each row's output leaves it."""

    row: dict[str, str]  # node name -> row name
    order: list[str]  # row names, in execution order
    kind: dict[str, str]  # row -> conv | fc | maxpool | avgpool
    anchor: dict[str, str] = field(default_factory=dict)  # row -> the node it is named after (its MACs and shape)
    exit: dict[str, str] = field(default_factory=dict)  # row -> the node whose output ends the row (compared there)

    def nodes(self, name: str) -> list[str]:
        return [n for n, r in self.row.items() if r == name]


def module_of_param(name: str) -> str | None:
    """``layer1.0.conv1.weight_quantized`` -> ``layer1.0.conv1``; None when the name is no parameter's."""
    head, dot, _ = name.partition(".weight")
    return head if dot and head else None


def module_of_scope(path: str) -> str | None:
    """A TorchScript node name (``/layer2/layer2.0/downsample/downsample.0/Conv``) -> ``layer2.0.downsample.0``.

    OpenVINO keeps such names and adds to them (``/conv1/Conv/WithoutBiases``).
    """
    parts = [p for p in path.split("/") if p]
    # the op comes after the modules: "Conv", and OpenVINO's "Conv/WithoutBiases"; PyTorch attributes are lower case
    cut = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts) - 1)
    names: list[str] = []
    for p in parts[:cut]:
        if names and p.startswith(names[-1] + "."):  # a Sequential's child: "downsample" then "downsample.0"
            names[-1] = p
        else:
            names.append(p)
    return ".".join(names) or None


def group_nodes(nodes: list[GraphNode]) -> LayerGroups:
    """Assign every node of a topologically ordered graph to a row (see the module docstring)."""
    row: dict[str, str] = {}
    kind: dict[str, str] = {}
    anchors: dict[str, str] = {}
    pools: Counter[str] = Counter(POOLS[n.op] for n in nodes if n.op in POOLS)
    for n in nodes:
        anchor = _anchor_name(n, pools)
        if anchor:
            name = anchor if anchor not in kind else f"{anchor}_{sum(k.startswith(anchor) for k in kind)}"
            row[n.name], kind[name], anchors[name] = name, ANCHORS.get(n.op) or POOLS[n.op], n.name
            continue
        fed_by = next((row[i] for i in n.inputs if i in row), None)
        if fed_by:
            row[n.name] = fed_by
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n.name)
    for n in reversed(nodes):  # fed by constants or the input only: the row it feeds
        if n.name not in row:
            fed = next((row[c] for c in consumers.get(n.name, []) if c in row), None)
            row[n.name] = fed or OTHER
    order = list(dict.fromkeys(row[n.name] for n in nodes if row[n.name] in kind))
    exits = {}
    for n in nodes:  # the last node whose output leaves its row (or leaves the graph)
        out = consumers.get(n.name, [])
        if row[n.name] in kind and (not out or any(row.get(c) != row[n.name] for c in out)):
            exits[row[n.name]] = n.name
    return LayerGroups(row, order, {r: kind[r] for r in order}, anchors, exits)


def _anchor_name(n: GraphNode, pools: Counter[str]) -> str | None:
    if n.op in ANCHORS and (n.weight or n.scope):
        return n.weight or n.scope
    if n.op in POOLS:
        # one max pool and one average pool in a ResNet: their own names even where the exporter kept no scope
        return n.scope or POOLS[n.op]
    return None


def row_of(engine_name: str, rows: dict[str, str]) -> str:
    """The row an engine's (possibly derived) node name belongs to: by the last tag in it, else :data:`OTHER`."""
    found = TAG.findall(engine_name)
    return rows.get(tag(int(found[-1])), OTHER) if found else OTHER


# --- ONNX ---


def onnx_nodes(proto: Any) -> list[GraphNode]:
    """The graph's nodes as :class:`GraphNode`; nodes computed from constants alone (weights) are left out."""
    g = proto.graph
    consts = {i.name for i in g.initializer}
    producer: dict[str, Any] = {}
    out = []
    for node in g.node:
        for o in node.output:
            producer[o] = node
        if all(i in consts or not i for i in node.input):  # Constant, weight DequantizeLinear: a weight, not an activation
            consts.update(node.output)
            continue
        inputs = [producer[i].name if i in producer else "" for i in node.input if i and i not in consts]
        weight = _onnx_weight(node, producer) if node.op_type in ANCHORS else None
        out.append(GraphNode(node.name, node.op_type, inputs, weight, _onnx_scope(node)))
    return out


def _onnx_weight(node: Any, producer: dict[str, Any]) -> str | None:
    name = node.input[1] if len(node.input) > 1 else ""
    if node.op_type in ("QLinearConv", "QLinearMatMul"):
        name = node.input[3] if len(node.input) > 3 else ""
    for _ in range(6):
        found = module_of_param(name)
        if found:
            return found
        src = producer.get(name)
        if src is None or src.op_type not in WEIGHT_PATH or not src.input:
            return None
        name = src.input[0]
    return None


def _onnx_scope(node: Any) -> str | None:
    """The module the dynamo exporter's name scopes (or the TorchScript node name) record."""
    for m in node.metadata_props:
        if m.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(m.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None
    return module_of_scope(node.name) if node.name.startswith("/") else None


def tag_onnx(proto: Any) -> tuple[LayerGroups, dict[str, str]]:
    """Rename every node and intermediate tensor of ``proto`` (in place) to tags: the groups (by tag), and tag -> row.

    Graph inputs, outputs and weights keep their names, so the copy runs as the original does.
    """
    g = proto.graph
    for i, node in enumerate(g.node):
        node.name = node.name or f"unnamed_{i}"  # names key the groups; the exporters name every node, not every tool does
    groups = group_nodes(onnx_nodes(proto))
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {i.name for i in g.initializer}
    renamed: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for i, node in enumerate(g.node):
        by_name[node.name] = tag(i)
        node.name = tag(i)
        for k, o in enumerate(node.output):
            if o and o not in keep:
                node.output[k] = renamed[o] = f"{tag(i)}_{k}"
    for node in g.node:
        for k, i in enumerate(node.input):
            node.input[k] = renamed.get(i, i)
    for vi in g.value_info:
        vi.name = renamed.get(vi.name, vi.name)
    return _retagged(groups, by_name)


def _retagged(groups: LayerGroups, by_name: dict[str, str]) -> tuple[LayerGroups, dict[str, str]]:
    """``groups`` with its nodes called by their tags, and tag -> row for every tag (OTHER where no row)."""
    groups.row = {by_name[n]: r for n, r in groups.row.items() if n in by_name}
    groups.exit = {r: by_name[n] for r, n in groups.exit.items()}
    groups.anchor = {r: by_name[n] for r, n in groups.anchor.items()}
    return groups, {t: groups.row.get(t, OTHER) for t in by_name.values()}


def exit_tensor(proto: Any, node_name: str) -> str:
    return next(n.output[0] for n in proto.graph.node if n.name == node_name)


# --- OpenVINO ---


def openvino_nodes(model: Any) -> list[GraphNode]:
    """The ops of an uncompiled OpenVINO model as :class:`GraphNode` (constant subgraphs folded away)."""
    const: set[int] = set()
    ops = model.get_ordered_ops()
    for op in ops:
        t = op.get_type_name()
        if t == "Constant" or (t not in ("Parameter", "Result") and op.get_input_size() > 0
                               and all(id(_source(op, k)) in const for k in range(op.get_input_size()))):
            const.add(id(op))
    out = []
    for op in ops:
        t = op.get_type_name()
        if id(op) in const or t == "Result":
            continue
        inputs = []
        for k in range(op.get_input_size()):
            src = _source(op, k)
            if id(src) not in const:
                inputs.append("" if src.get_type_name() == "Parameter" else src.get_friendly_name())
        name = op.get_friendly_name()
        weight = _openvino_weight(op) if t in ANCHORS else None
        out.append(GraphNode(name, t, inputs, weight, module_of_scope(name) if name.startswith("/") else None))
    return out


def _source(op: Any, k: int) -> Any:
    return op.input_value(k).get_node()


def _openvino_weight(op: Any) -> str | None:
    w = _source(op, 1)
    for _ in range(8):
        for name in (w.get_friendly_name(), *(n for o in w.outputs() for n in o.get_names())):
            found = module_of_param(name)
            if found:
                return found
        if w.get_input_size() == 0:
            return None
        w = _source(w, 0)
    return None


def tag_openvino(model: Any) -> tuple[LayerGroups, dict[str, str]]:
    """Rename every op of ``model`` (in place) to a tag: the groups (by tag), and tag -> row."""
    groups = group_nodes(openvino_nodes(model))
    by_name: dict[str, str] = {}
    for i, op in enumerate(model.get_ordered_ops()):
        by_name[op.get_friendly_name()] = tag(i)
        op.set_friendly_name(tag(i))
    return _retagged(groups, by_name)


def openvino_op(model: Any, name: str) -> Any:
    return next(op for op in model.get_ordered_ops() if op.get_friendly_name() == name)


# --- FX (the torch engine) ---


def fx_nodes(gm: Any) -> list[GraphNode]:
    """A traced module's nodes: convs and linears named by their module, pools by theirs."""
    from torch import nn

    modules = dict(gm.named_modules())
    kinds = ((nn.Conv2d, "Conv"), (nn.Linear, "Gemm"), (nn.MaxPool2d, "MaxPool"),
             ((nn.AdaptiveAvgPool2d, nn.AvgPool2d), "GlobalAveragePool"))
    out = []
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        mod = modules.get(n.target) if n.op == "call_module" else None
        op = next((k for cls, k in kinds if isinstance(mod, cls)), n.op)
        inputs = ["" if a.op == "placeholder" else a.name for a in n.all_input_nodes if a.op != "get_attr"]
        name = str(n.target) if mod is not None else None
        out.append(GraphNode(n.name, op, inputs, name if op in ANCHORS else None, name))
    return out


__all__ = ["GraphNode", "LayerGroups", "OTHER", "fx_nodes", "group_nodes", "module_of_param", "module_of_scope",
           "onnx_nodes", "openvino_nodes", "row_of", "tag", "tag_onnx", "tag_openvino"]
