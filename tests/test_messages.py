"""What a user reads: refusals that name the right flag, suggestions for mistyped flags, plain sentences."""

from __future__ import annotations

import pytest

from resnet_xray.cli import main

# The first bytes of a real ONNX file (ModelProto: ir_version 10, producer "pytorch"), then filler.
ONNX_HEAD = bytes.fromhex("080a1207707974 6f726368 1a0c322e31342e31".replace(" ", "")) + b"\x00" * 64
OPENVINO_XML = b'<?xml version="1.0"?>\n<net name="onnx_Frontend_IR" version="11">\n\t<layers>\n</layers>\n</net>\n'


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "expect"), [
    ("model.onnx", ONNX_HEAD, "--model"),
    ("renamed.pt", ONNX_HEAD, "--model"),  # recognised by its bytes, not only its suffix
    ("model.xml", OPENVINO_XML, "--model"),
    ("model.bin", b"\xea\xc9\x62\xbc" * 64, "--model"),
])
def test_deployed_file_as_weights_names_model_flag(tmp_path, capsys, cat_path, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    if name.endswith(".bin"):
        (tmp_path / "model.xml").write_bytes(OPENVINO_XML)
    code, err = _run(capsys, "classify", str(cat_path), "--weights", str(path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expect in lines[0] and "would run code" not in lines[0] and "pickle" not in lines[0]
    if name.endswith(".bin"):
        assert "model.xml" in lines[0]  # the file --model wants is the .xml beside it


@pytest.mark.parametrize("content", ["png", b"hello world\n"])
def test_not_a_pickle_is_not_called_code(tmp_path, capsys, cat_path, content):
    path = tmp_path / "photo.pt"
    path.write_bytes(cat_path.read_bytes() if content == "png" else content)
    code, err = _run(capsys, "classify", str(cat_path), "--weights", str(path))
    assert code == 2 and "would run code" not in err and "not a PyTorch weights file" in err, err


def test_refusal_clause_is_not_doubled(tmp_path):
    import pickle

    from resnet_xray.checkpoint import safe_load
    from resnet_xray.errors import XrayError

    path = tmp_path / "set.pt"  # a well-formed pickle, with an instruction torch's safe loader does not read
    path.write_bytes(pickle.dumps({"x": {1, 2}}, protocol=4))
    with pytest.raises(XrayError) as e:
        safe_load(path, "--weights")
    msg = str(e.value)
    assert msg.startswith(f"--weights {path}: refused") and msg.count("never needs") <= 1, msg
    assert "would run code" not in msg  # nothing in a set runs code


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["classify", "x.png", "--top-k", "3"], "--topk"),
    (["classify", "x.png", "--top-k=3"], "--topk"),
    (["anatomy", "--input_size", "96"], "--input-size"),
])
def test_wrong_flag_suggests_nearest(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"did you mean {suggestion}?" in err, err
    assert f"usage: resnet-xray {argv[0]}" in err, err  # the subcommand's usage, not the top level's


def test_wrong_flag_without_near_match_still_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "x.png", "--zzzzqqq"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --zzzzqqq" in err and "did you mean" not in err
    assert "usage: resnet-xray classify" in err


def test_wrong_flag_is_named_even_when_a_required_one_is_missing(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "ds", "--modle", "a.onnx"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "did you mean --model?" in err and "usage: resnet-xray evaluate" in err, err


def test_mistyped_command_is_suggested(capsys):
    with pytest.raises(SystemExit) as e:
        main(["clasify", "x.png"])
    assert e.value.code == 2 and "did you mean 'classify'?" in capsys.readouterr().err


def _small_checkpoint(tmp_path, crop: int = 96):
    import torch

    from resnet_xray.image import Preprocessing
    from resnet_xray.model import ModelMeta, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()
    meta = ModelMeta("resnet18", "t", ["a", "b", "c"], Preprocessing(resize=crop, crop=crop), True)
    return save_checkpoint(tmp_path / "small.pt", model, meta), model


def test_anatomy_measures_at_the_models_crop_and_says_so(tmp_path, capsys):
    import json

    from resnet_xray.dissect import AnatomyOptions, analyze

    path, model = _small_checkpoint(tmp_path, crop=96)
    assert main(["anatomy", "--weights", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["input_size"] == 96  # as prune, export and bench measure this model, not at 224
    assert doc["totals"]["macs"] == analyze(model, "resnet18", AnatomyOptions(input_size=96)).totals.macs
    assert main(["anatomy", "--weights", str(path), "--summary"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("resnet18 at 96x96 input (the crop its preprocessing declares")
    assert "MACs, conv + fc, at 96x96)" in text and "* macs at 96x96:" in text
    assert main(["anatomy", "--weights", str(path), "--input-size", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == 128  # the flag still wins


# --- generated sentences: numbers a learner can read ---


def test_number_phrasing():
    from resnet_xray.units import below, num, of_count, times

    assert times(0.000976, "ResNet's") == "1/1,020 of ResNet's"  # not "0.000976x ResNet's"
    assert times(0.0165, "ResNet's") == "1/60.6 of ResNet's"
    assert times(0.62, "ResNet's") == "62% of ResNet's"
    assert times(1.94, "ResNet's") == "1.94x ResNet's" and times(0.0171) == "1/58.5"
    assert below(9.8e-08) == "less than 1/10,000,000"  # not "to 1e-07"
    assert below(0) == "0" and below(0.002) == "0.002"
    assert of_count(0, 12, "identity blocks") == "none of the 12 identity blocks"  # not "0 of the 12"
    assert of_count(12, 12, "identity blocks") == "all 12 identity blocks"
    assert of_count(3, 12, "identity blocks") == "3 of the 12 identity blocks"
    assert num(5.4e-05) == "0.000054" and num(0.00328) == "0.00328" and num(1.2e6) == "1,200,000"


def _prose(html: str) -> str:
    """The report's sentences: tables, scripts, styles and pictures left out."""
    import html as h
    import re

    for pattern in (r"<script.*?</script>", r"<style.*?</style>", r"<table.*?</table>", r"<img[^>]*>"):
        html = re.sub(pattern, " ", html, flags=re.S)
    return h.unescape(re.sub(r"<[^>]+>", " ", html))


@pytest.mark.slow
def test_report_sentences_have_no_e_notation_zero_counts_or_tiny_ratios(tmp_path):
    import dataclasses
    import re

    from resnet_xray.image import Preprocessing, bundled_cat
    from resnet_xray.model import load_model
    from resnet_xray.reporting import ReportOptions, build_report

    model, meta = load_model("resnet18", "random")
    meta = dataclasses.replace(meta, preprocessing=Preprocessing(resize=64, crop=64))
    res = build_report(bundled_cat(), model, meta, ReportOptions(
        out_dir=tmp_path, sections=("kernel", "channels", "residual", "gradflow", "conclusion"),
        gradflow_batch=2, gradflow_size=32, quiet=True))
    text = _prose(res.html.read_text(encoding="utf-8"))
    assert not re.findall(r"\d(?:\.\d+)?e[-+]?\d+", text)  # "1e-07", "2.6e-08", "5.4e-05"
    assert not re.findall(r"\b0 of (?:the )?\d", text)  # "In 0 of the 5 identity blocks"
    assert not re.findall(r"\b0\.\d+x\b", text)  # "0.000976x ResNet's"
    assert "differ by" in text and "identity blocks" in text


# --- third-party chatter stays out of the terminal unless --verbose ---


def test_torch_cuda_probe_line_is_dropped_unless_verbose(caplog):
    import logging

    from resnet_xray.quiet import hide_known_log_noise, verbose_mode

    hide_known_log_noise()
    log = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING):
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        assert "No CUDA runtime" not in caplog.text
        log.warning("something torch really wants said")
        assert "really wants said" in caplog.text  # only the known line is dropped
        with verbose_mode():
            log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        assert "No CUDA runtime" in caplog.text


@pytest.mark.slow
def test_torch_cuda_probe_line_never_reaches_the_terminal():
    """Where torch prints it at all (a CUDA toolkit, no GPU), the CLI's filter keeps it off stderr."""
    import subprocess
    import sys

    probe = "import torch.utils.cpp_extension"
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    if "No CUDA runtime is found" not in plain.stderr:
        pytest.skip("torch does not print its CUDA probe line on this machine")
    quiet = subprocess.run([sys.executable, "-c", "from resnet_xray.quiet import hide_known_log_noise; "
                            f"hide_known_log_noise(); {probe}"], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "No CUDA runtime" not in quiet.stderr, quiet.stderr


def _tiny_onnx_and_calib(tmp_path):
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from resnet_xray.deploy.onnx import ExportOptions, export_onnx
    from resnet_xray.image import Preprocessing
    from resnet_xray.model import ModelMeta

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    meta = ModelMeta("resnet18", "tiny test net", ["a", "b"], Preprocessing(resize=32, crop=32), True)
    onnx_path = export_onnx(model, tmp_path / "fp32.onnx", ExportOptions(dynamic_batch=True, exporter="torchscript"), meta)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    return onnx_path, calib


def test_ort_calibration_settings_are_not_printed_unless_verbose(tmp_path, capfd):
    onnx_path, calib = _tiny_onnx_and_calib(tmp_path)
    capfd.readouterr()
    argv = ["quantize", str(onnx_path), "--calib", str(calib), "--method", "percentile", "--no-time-check"]
    assert main([*argv, "-o", str(tmp_path / "q.int8.onnx")]) == 0
    out, err = capfd.readouterr()
    for noise in ("Percentile :", "Number of histogram bins", "Collecting tensor data"):
        assert noise not in out and noise not in err, (out, err)
    assert "wrote" in out  # the command's own results still reach stdout
    assert main([*argv, "-o", str(tmp_path / "v.int8.onnx"), "--verbose"]) == 0
    out, err = capfd.readouterr()
    assert "Number of histogram bins" in err and "Number of histogram bins" not in out


@pytest.mark.parametrize(("ratios", "said"), [
    ([1.2, 1.3, 1.4], "In none of the 3 identity blocks is ‖F(x)‖ smaller than ‖x‖"),  # was "In 0 of the 3 ..."
    ([0.5, 0.6, 0.7], "In all 3 identity blocks ‖F(x)‖ is smaller than ‖x‖"),
    ([0.5, 1.3, 1.4], "In 1 of the 3 identity blocks ‖F(x)‖ is smaller than ‖x‖"),
])
def test_residual_sentence_says_counts_plainly(ratios, said):
    from resnet_xray.reporting.html import _residual

    blocks = [{"name": f"layer1.{i}", "projection": False, "ratio": r, "residual_norm": 1.0, "shortcut_norm": 1.0,
               "cosine": 0.0, "active_frac": 0.5} for i, r in enumerate(ratios)]
    assert said in _residual({"blocks": blocks}, {"residual": "data:image/png;base64,"})
