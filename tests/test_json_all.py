"""Every command with --json prints exactly one JSON document on stdout, with the weights' provenance.

Each runs in a real process, so prints from C libraries (ONNX Runtime's calibrator) would
land on the same stdout file descriptor as the JSON if they were not diverted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_xray.cli import COMMANDS, build_parser

R18 = ["--arch", "resnet18", "--weights", "random"]


def run_json(*argv: str, timeout: int = 600) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "resnet_xray", *map(str, argv), "--json"], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    doc = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))  # exactly one document
    assert isinstance(doc, dict)
    w = doc["weights"]
    assert set(w) == {"source", "pretrained", "trained", "trained_evidence", "training", "warning"}, w
    assert isinstance(w["pretrained"], bool) and (w["warning"] is None or isinstance(w["warning"], str))
    assert w["trained"] in (True, False, "unknown") and isinstance(w["trained_evidence"], str)
    assert (w["warning"] is None) == (w["trained"] is True), w  # a warning exactly when the weights are not known trained
    return doc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny reference dataset (with boxes) and a folder of a few images."""
    from resnet_xray.datasets import ReferenceOptions, make_reference_dataset

    root = tmp_path_factory.mktemp("json")
    make_reference_dataset(root / "data", ReferenceOptions(classes=2, per_class=4, val_per_class=2, size=32, seed=0))
    return root


def test_every_json_command_is_covered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    def has_json(p) -> bool:  # show's pictures are sub-sub-commands: each must have it
        subs = [a for a in p._actions if a.dest == "picture"]
        if subs:
            return all(has_json(q) for q in subs[0].choices.values())
        return any(a.dest == "json" for a in p._actions)

    with_json = {n for n, p in sub.choices.items() if has_json(p)}
    assert with_json == COVERED


COVERED = {"classify", "preprocess", "anatomy", "trace", "gradflow", "report", "fuse", "export", "quantize", "bench", "finetune",
           "finetune-multitask", "bench-data", "evaluate", "optimize", "show", "make-dataset", "layers"}
assert COVERED <= {c.name for c in COMMANDS}


def test_classify_preprocess_anatomy_trace(cat_path):
    doc = run_json("classify", cat_path, *R18, "--topk", "2")
    assert doc["weights"]["pretrained"] is False and "meaningless" in doc["weights"]["warning"]
    assert len(doc["results"][0]["topk"]) == 2
    assert run_json("preprocess", cat_path)["weights"]["source"] is None
    assert run_json("anatomy", "--arch", "resnet18", "--input-size", "64")["totals"]["params"] == 11_689_512
    doc = run_json("trace", cat_path, *R18)
    assert doc["weights"]["source"] == "random (seed 0)" and doc["layers"]


def test_gradflow(tmp_path):
    doc = run_json("gradflow", "--arch", "resnet18", "--input-size", "32", "--batch-size", "2", "--regime", "batch")
    assert doc["weights"]["pretrained"] is False and "batch" in doc["init"]


def test_report(cat_path, tmp_path):
    doc = run_json("report", cat_path, *R18, "-o", tmp_path / "r", "--sections", "cost", "--no-gradflow", "--quiet")
    assert Path(doc["html"]) == tmp_path / "r" / "report.html" and Path(doc["html"]).stat().st_size == doc["html_bytes"]
    assert json.loads(Path(doc["json"]).read_text())["sections"] == ["cost"]
    assert doc["weights"]["source"] == "random (seed 0)" and doc["total_s"] > 0


@pytest.mark.slow
def test_fuse_export_quantize(work, tmp_path, cat_path):
    doc = run_json("fuse", *R18, "-o", tmp_path / "fused.pt")
    assert doc["output"].endswith("fused.pt") and doc["folded"] == 20
    doc = run_json("export", *R18, "-o", tmp_path / "m.onnx", "--exporter", "torchscript")
    assert doc["check"]["passed"] and doc["weights"]["source"] == "random (seed 0)"
    # the calibrator prints "Collecting tensor data and making histogram ..." on stdout: must not reach ours
    doc = run_json("quantize", tmp_path / "m.onnx", "--calib", work / "data" / "train", "-o", tmp_path / "q.onnx",
                   "--method", "entropy", "--max-images", "6", "--min-agreement", "0")
    assert {k: doc["weights"][k] for k in ("source", "pretrained", "trained")} == {"source": "random (seed 0)", "pretrained": False, "trained": False}
    assert Path(doc["int8_model"]).exists()
    doc = run_json("evaluate", work / "data", "--model", tmp_path / "m.onnx", "--model", tmp_path / "q.onnx", "--threads", "1")
    assert doc["images"] == 4 and doc["weights"]["source"].startswith(str(tmp_path / "m.onnx"))
    import resnet_xray as rx
    from resnet_xray.cliutil import dumps

    # the Python verb returns what the command prints
    res = rx.evaluate([tmp_path / "m.onnx", tmp_path / "q.onnx"], work / "data", threads=1)
    assert json.loads(dumps(res.to_dict())) == doc


def test_evaluate_verb_refuses_bad_options_by_name(tmp_path):
    import resnet_xray as rx
    from resnet_xray.options import OptionError

    with pytest.raises(OptionError) as e:
        rx.evaluate(tmp_path / "missing.onnx", tmp_path, limit=0)  # refused before the (missing) model is opened
    assert e.value.option == "limit" and str(e.value).startswith("limit 0:")


@pytest.mark.slow
def test_optimize(work, tmp_path):
    from resnet_xray.model import ModelMeta, build_model, save_checkpoint
    from resnet_xray.image import Preprocessing

    names = sorted(p.name for p in (work / "data" / "train").iterdir())
    ckpt = save_checkpoint(tmp_path / "r18.pt", build_model("resnet18", num_classes=len(names)).eval(),
                           ModelMeta("resnet18", "random (test)", names, Preprocessing(resize=40, crop=32), False))
    doc = run_json("optimize", ckpt, "--data", work / "data", "-o", tmp_path / "opt", "--engines", "ort", "--repeats", "2",
                   "--calib-images", "4", "--no-mixed-precision", "--max-drop", "100", "--threads", "1")
    assert doc["winner"] and str(doc["weights"]["source"]).endswith("r18.pt")


@pytest.mark.slow
def test_bench(tmp_path):
    doc = run_json("bench", *R18, "--no-compile", "--repeats", "1", timeout=900)
    assert doc["rows"] and doc["weights"]["pretrained"] is False


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finetune", "finetune-multitask"])
def test_finetune(work, tmp_path, command):
    doc = run_json(command, work / "data", "--out", tmp_path / "run", *R18, "--epochs", "1", "--batch-size", "4",
                   "--workers", "0", "--no-progress")
    assert 0 <= doc["final_accuracy"] <= 1 and doc["weights"]["source"] == "random (seed 0)"


def test_layers():
    doc = run_json("layers", *R18, "--engine", "torch", "--input-size", "32", "--runs", "1", "--warmup", "0")
    assert doc["weights"]["pretrained"] is False and set(doc["end_to_end_ms"]) == {"torch-fp32"}
    assert {"layer1.0.conv1", "fc"} <= {r["name"] for r in doc["rows"]} and all(r["error"] is None for r in doc["rows"])


def test_bench_data(work):
    doc = run_json("bench-data", work / "data", "--arch", "resnet18", "--batch-size", "2", "--steps", "1", "--workers", "0",
                   "--image-size", "32")
    assert doc["loader_images_per_s"] > 0 and doc["weights"]["pretrained"] is False


def test_json_output_diverts_third_party_prints_at_the_fd_level():
    code = (
        "import os, sys\n"
        "from resnet_xray.cliutil import json_output, print_json\n"
        "with json_output():\n"
        "    print('python noise')\n"
        "    os.write(1, b'C noise\\n')\n"
        "    print_json({'a': float('nan'), 'b': [float('inf'), 1.5]})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout) == {"a": None, "b": [None, 1.5]}
    assert "python noise" in r.stderr and "C noise" in r.stderr


def test_show_and_make_dataset_match_their_verbs(cat_path, tmp_path):
    import resnet_xray as rx
    from resnet_xray.cliutil import dumps

    doc = run_json("show", "kernels", *R18, "-o", tmp_path / "k.png", "--count", "8")
    assert Path(doc["path"]) == tmp_path / "k.png" and doc["picture"] == "kernels" and doc["weights"]["pretrained"] is False
    res = rx.show(rx.load_model("resnet18", weights="random"), "kernels", tmp_path / "k2.png", count=8)
    assert {**json.loads(dumps(res.to_dict())), "path": doc["path"]} == doc
    doc = run_json("show", "features", cat_path, *R18, "--layer", "layer1.0.relu_1", "-o", tmp_path / "f.png")
    assert doc["layer"] == "layer1.0.relu_1" and len(doc["channels"]) == 64 and (tmp_path / "f.png").stat().st_size > 0
    doc = run_json("make-dataset", tmp_path / "d", "--classes", "2", "--per-class", "2", "--val-per-class", "1", "--size", "32")
    assert doc["classes"] and doc["weights"]["source"] is None and (tmp_path / "d" / "train").is_dir()
    res = rx.make_dataset(tmp_path / "d2", classes=2, per_class=2, val_per_class=1, size=32)
    assert {**json.loads(dumps(res.to_dict())), "out": doc["out"]} == doc
