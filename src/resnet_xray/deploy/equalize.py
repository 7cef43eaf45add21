"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019) of an FP32 ONNX graph.

Where one convolution feeds the next through a ReLU alone (``conv1 -> relu -> conv2`` inside a
residual block), the first one's output channel ``i`` can be divided by ``s_i`` and the second
one's input channel ``i`` multiplied by it without changing the function, because
``relu(x / s) = relu(x) / s`` for ``s > 0``. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``,
``r2_i``: the largest weight of that channel in each) gives both the same range, so neither
layer has channels INT8 resolves to a few levels, and the ReLU's output channels are rescaled
with them. Residual additions are left alone: both of their inputs would have to scale alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SWEEPS = 4  # a conv in the middle of a chain is equalised against both neighbours; a few passes settle it


def conv_pairs(graph: object) -> list[tuple[object, object]]:
    """(first, second) Conv nodes joined by one ReLU that nothing else reads, the second not grouped."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pairs = []
    for a in graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or len(consumers.get(a.output[0], [])) != 1:
            continue
        relu = consumers[a.output[0]][0]
        if relu.op_type != "Relu" or len(consumers.get(relu.output[0], [])) != 1:
            continue
        b = consumers[relu.output[0]][0]
        grouped = any(at.name == "group" and at.i != 1 for at in b.attribute)
        if b.op_type == "Conv" and not grouped and b.input[0] == relu.output[0]:
            pairs.append((a, b))
    return pairs


def equalize_onnx(src: Path, dst: Path) -> tuple[Path, int]:
    """``src`` with every :func:`conv_pairs` pair equalised, written to ``dst``; and how many pairs there were."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    pairs = [(a, b) for a, b in conv_pairs(g) if all(n in inits for n in (*a.input[1:], b.input[1]))]
    _own_weights(g, inits, [(node, k) for a, b in pairs for node, k in ((a, 1), (a, 2), (b, 1)) if k < len(node.input)])
    arrays = {n: numpy_helper.to_array(inits[n]).astype(np.float64) for a, b in pairs for n in (*a.input[1:], b.input[1])}
    for _ in range(SWEEPS):
        for a, b in pairs:
            w1, w2 = arrays[a.input[1]], arrays[b.input[1]]
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
            r2 = np.abs(w2).swapaxes(0, 1).reshape(w2.shape[1], -1).max(1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            arrays[a.input[1]] = w1 / s.reshape(-1, *[1] * (w1.ndim - 1))
            if len(a.input) > 2:
                arrays[a.input[2]] = arrays[a.input[2]] / s
            arrays[b.input[1]] = w2 * s.reshape(1, -1, *[1] * (w2.ndim - 2))
    for name, arr in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(inits[name]).dtype), name))
    onnx.save(model, str(dst))
    return dst, len(pairs)


def _own_weights(g: object, inits: dict, slots: list[tuple[object, int]]) -> None:
    """Give each (node, input index) an initializer of its own: exporters share equal tensors (all-zero biases), and
    rescaling a shared one would change every other node that reads it."""
    from onnx import numpy_helper

    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for node, k in slots:
        name = node.input[k]
        if uses[name] > 1:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]).copy(), f"{name}.{node.name or k}.equalized")
            g.initializer.append(copy)
            inits[copy.name] = g.initializer[-1]
            uses[name] -= 1
            node.input[k] = copy.name
