"""Cross-layer equalisation keeps the function and gives each conv -> relu -> conv pair one range per channel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from resnet_xray.deploy.equalize import conv_pairs, equalize_onnx
from resnet_xray.deploy.fuse import fuse_model
from resnet_xray.deploy.onnx import ExportOptions, export_onnx
from resnet_xray.deploy.qdq import pre_process
from resnet_xray.model import build_model


def _run(path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _ranges(model: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair: the first conv's largest weight per output channel, the second's per input channel."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for a, b in conv_pairs(model.graph):
        w1, w2 = w[a.input[1]], w[b.input[1]]
        out.append((np.abs(w1).reshape(w1.shape[0], -1).max(1), np.abs(w2).swapaxes(0, 1).reshape(w2.shape[1], -1).max(1)))
    return out


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    with torch.no_grad():  # BN statistics that differ per channel, so the fused convs' channel ranges differ as trained ones do
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.1, 4.0)
                m.weight.uniform_(0.2, 3.0)
    root = tmp_path_factory.mktemp("cle")
    export_onnx(fuse_model(model.eval()), root / "r18.onnx", ExportOptions(exporter="torchscript", input_size=64))
    return pre_process(root / "r18.onnx", root / "r18.prep.onnx")  # what the INT8 repair equalises


def test_equalising_a_resnet_keeps_its_outputs_and_evens_each_pairs_ranges(resnet18_onnx, tmp_path) -> None:
    out, pairs = equalize_onnx(resnet18_onnx, tmp_path / "eq.onnx")
    assert pairs == 8  # conv1 -> relu -> conv2 in each of resnet18's 8 basic blocks; the residual adds are left alone
    before, after = _ranges(onnx.load(str(resnet18_onnx))), _ranges(onnx.load(str(out)))
    # before: the two sides of a pair differ by large factors per channel; after: one range per channel
    assert max(float(np.max(np.maximum(r1 / r2, r2 / r1))) for r1, r2 in before) > 4
    assert all(np.allclose(r1, r2, rtol=1e-3) for r1, r2 in after)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = _run(resnet18_onnx, x), _run(out, x)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def _graph(second_reader: bool, group: int) -> onnx.ModelProto:
    """x -> conv A -> relu -> conv B -> y, with an optional second reader of the relu and a grouped B."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("wa", (4, 2, 1, 1)), ("ba", (4,)), ("wb", (4, 4 // group, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"), helper.make_node("Relu", ["a"], ["r"], name="R"),
             helper.make_node("Conv", ["r", "wb"], ["y"], name="B", group=group)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Identity", ["r"], ["r2"], name="I"))
        outputs.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("second_reader, group, shared, paired", [(False, 1, False, True), (True, 1, False, False),
                                                                  (False, 2, False, False), (False, 1, True, True)])
def test_only_a_relu_read_by_one_ungrouped_conv_alone_is_equalised(tmp_path, second_reader, group, shared, paired) -> None:
    # a second reader of the relu would see its channels rescaled; a grouped conv mixes no channels to absorb the scale
    src = tmp_path / "g.onnx"
    g = _graph(second_reader, group)
    if shared:  # another node reads conv A's weights too: it must keep them as they were
        g.graph.node.append(helper.make_node("Identity", ["wa"], ["wa_out"], name="W"))
        g.graph.output.append(helper.make_tensor_value_info("wa_out", TensorProto.FLOAT, None))
    onnx.save(g, str(src))
    out, pairs = equalize_onnx(src, tmp_path / "eq.onnx")
    assert pairs == int(paired)
    changed = {t.name for t, u in zip(onnx.load(str(src)).graph.initializer, onnx.load(str(out)).graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))}
    assert changed == ({"ba", "wb"} | ({"wa"} if not shared else set()) if paired else set())
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)
    for a, b in zip(_run_all(src, x), _run_all(out, x)):  # every output, the shared weights' reader's too
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def _run_all(path, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})
