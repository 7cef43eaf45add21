"""Each row's output inside a deployed model: the engine run with extra outputs, for the per-layer error.

ONNX Runtime gets a copy of the graph with the tensor that leaves each row added to the graph
outputs; OpenVINO gets extra outputs on the uncompiled model; PyTorch is run through its
traced graph. A row's output is where the engine hands it to the next layer: after the ReLU,
after the residual add for the last conv of a block, after the (de)quantisation in an INT8 model.
Two models' probes are then set against each other row by row (:func:`layer_errors`).
:func:`resnet_xray.tracing.divergence.layer_diff` does this for a traced PyTorch model's every op;
here it is done in float32 BLAS, because ``layers`` compares ~50 outputs on 100 images.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..compare import output_error
from .graphmap import LayerGroups, exit_tensor, fx_nodes, group_nodes, openvino_op
from .onnx import ort_session
from .openvino import compile_cpu

Probe = Callable[[np.ndarray], dict[str, np.ndarray]]  # one image (1xCxHxW) -> row -> its output


def ort_probe(proto: Any, groups: LayerGroups, work: Path, threads: int | None = None) -> Probe:
    """The tagged graph ``proto`` in ONNX Runtime with each row's output tensor added to the graph outputs."""
    import onnx

    probed = onnx.ModelProto()
    probed.CopyFrom(proto)
    outputs = {o.name for o in probed.graph.output}
    names = {}
    for row, node in groups.exit.items():
        names[row] = exit_tensor(probed, node)
        if names[row] not in outputs:
            probed.graph.output.append(onnx.helper.make_tensor_value_info(names[row], onnx.TensorProto.FLOAT, None))
            outputs.add(names[row])
    path = work / "probe.onnx"
    with atomic_path(path) as tmp:
        onnx.save(probed, str(tmp))
    sess = ort_session(path, threads, spin=False)
    feed_name = sess.get_inputs()[0].name
    wanted = list(dict.fromkeys(names.values()))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        got = dict(zip(wanted, sess.run(wanted, {feed_name: x})))
        return {row: got[t] for row, t in names.items()}

    return run


def openvino_probe(model: Any, groups: LayerGroups, threads: int | None = None, precision: str = "f32") -> Probe:
    """The tagged, uncompiled OpenVINO ``model`` with each row's output added as a model output."""
    results = {}
    for row, node in groups.exit.items():
        # an output that is already the model's (the logits) comes back as its existing Result
        (out,) = model.add_outputs([openvino_op(model, node).output(0)])
        results[row] = out.get_node().get_friendly_name()
    order = [o.get_node().get_friendly_name() for o in model.outputs]
    index = {row: order.index(name) for row, name in results.items()}
    request = compile_cpu(model, threads, precision=precision).create_infer_request()

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return {r: np.array(request.get_output_tensor(i).data) for r, i in index.items()}

    return run


def torch_probe(module: Any) -> Probe:
    """The module through its traced graph, keeping each row's output."""
    from torch import fx

    gm = fx.symbolic_trace(module.eval())
    groups = group_nodes(fx_nodes(gm))
    keep = {node: row for row, node in groups.exit.items()}

    class Keeping(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in keep:
                self.kept[keep[n.name]] = out.detach().float().numpy().copy()
            return out

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        interp = Keeping(gm)
        interp.kept = {}
        with torch.inference_mode():
            interp.run(torch.from_numpy(x))
        return interp.kept

    return run


def layer_errors(reference: Probe, candidate: Probe, images: list[np.ndarray], rows: list[str]
                 ) -> dict[str, dict[str, float] | None]:
    """Mean over images of each row's :func:`output_error`, and its SQNR in dB.

    A row whose output shape differs (pruned channels) or that one model lacks gets None.
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    unmatched: set[str] = set()
    for x in images:
        ref, cand = reference(x), candidate(x)
        for row in rows:
            a, b = ref.get(row), cand.get(row)
            if a is None or b is None or a.shape != b.shape:
                unmatched.add(row)
                continue
            err = output_error(a, b)
            for k in ("rel_l2", "cosine", "max_rel"):  # averaged over the images
                sums[row][k] += err[k]

    out: dict[str, dict[str, float] | None] = {}
    for row in rows:
        if row in unmatched or row not in sums:
            out[row] = None
            continue
        e = {k: v / len(images) for k, v in sums[row].items()}
        rel = e["rel_l2"]
        e["sqnr_db"] = -20 * math.log10(rel) if 0 < rel < math.inf else (math.inf if rel == 0 else -math.inf)
        out[row] = e
    return out
