"""Sizes shown for deployed models count every file of the artefact: .xml + .bin, .onnx + external data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_xray.deploy.artefact import artefact_bytes, artefact_files, sidecar_path


def _onnx_with_weights(n: int = 4096) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [w])
    return helper.make_model(graph)


def test_openvino_ir_counts_xml_and_bin(tmp_path):
    xml, binf = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>" * 10)
    binf.write_bytes(b"\0" * 11_000)
    sidecar_path(xml).write_text("{}")  # a description, not part of the model
    assert artefact_files(xml) == [xml, binf]
    assert artefact_bytes(xml) == xml.stat().st_size + 11_000


def test_onnx_counts_its_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_onnx_with_weights(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    assert data.stat().st_size >= 4096 * 4
    assert artefact_files(path) == [path, data]
    assert artefact_bytes(path) == path.stat().st_size + data.stat().st_size
    single = tmp_path / "single.onnx"
    onnx.save_model(_onnx_with_weights(), str(single))
    assert artefact_bytes(single) == single.stat().st_size


def test_external_data_outside_the_folder_is_not_counted(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\1" * 50_000)
    proto = _onnx_with_weights()
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    path = inner / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert artefact_files(path) == [path]


@pytest.mark.slow
def test_quantize_openvino_reports_xml_plus_bin(tmp_path, capsys):
    """The sidecar's size_int8_bytes and the printed size are the whole IR, not the .xml alone."""
    pytest.importorskip("nncf")
    import torch

    from resnet_xray.cli import main
    from resnet_xray.deploy.onnx import ExportOptions, export_onnx
    from resnet_xray.image import Preprocessing
    from resnet_xray.model import ModelMeta
    from resnet_xray.units import si

    from .test_deploy_quantize import TinyResNet, write_dataset

    torch.manual_seed(0)
    pre = Preprocessing(resize=36, crop=32, source="test 32 px")
    meta = ModelMeta("resnet18", "random (seed 0)", [f"class_{k}" for k in range(4)], pre, False)
    fp32 = export_onnx(TinyResNet(4).eval(), tmp_path / "fp32.onnx", ExportOptions(exporter="torchscript"), meta)
    data = write_dataset(tmp_path / "data", seed=0)
    out = tmp_path / "int8.xml"
    assert main(["quantize", str(fp32), "--calib", str(data), "--engine", "openvino", "-o", str(out),
                 "--min-agreement", "0", "--no-time-check"]) == 0
    text = capsys.readouterr().out
    whole = out.stat().st_size + out.with_suffix(".bin").stat().st_size
    assert out.with_suffix(".bin").stat().st_size > out.stat().st_size / 10  # the weights are not a rounding error
    assert json.loads(sidecar_path(out).read_text())["quantization"]["size_int8_bytes"] == whole
    assert f"-> {si(whole)}B" in text
