"""Property: any values of any command's numeric flags give exit 0 or 2 (or 1, a failed model check, where
that is the documented verdict), never a traceback or a hang,
a refusal is one line naming a flag, and nothing is left half-written.

Flags are discovered from the CLI's own parser (``show``'s pictures included), so a new numeric
flag is covered the day it is added, and a new command fails ``test_every_command_is_covered``
until it has a cheap command line here. Each example draws one to three of a command's numeric
flags and runs the command in-process through ``main(argv)`` on tiny inputs (resnet18, 32 px
images, an ONNX file made once per module). Values a command refuses never load a model; values
it accepts run the whole command, kept short by the base command line (``--epochs 1``,
``--repeats 1``, ``--analyze-only``, ``--no-compile``...) and by capping positive values of flags
that only make a run longer or bigger (:data:`COST_CAPS`): a long run is not a defect; zero,
negative, NaN, infinite, huge seeds and malformed values are not capped.

Profiles (``tests/hypothesis_profiles.py``): the default ``ci`` one runs a few derandomised
examples per command; ``RESNET_XRAY_HYPOTHESIS=slow`` runs 500 per command with random seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from resnet_xray import options
from resnet_xray.cli import build_parser, main
from resnet_xray.image import bundled_cat

from .hypothesis_profiles import PROFILE, examples

# Positive values above these only buy a longer run or a bigger (valid) allocation.
COST_CAPS = {"--epochs": 1, "--per-class": 3, "--val-per-class": 2, "--classes": 3, "--size": 64, "--image-size": 64,
             "--steps": 2, "--batch-size": 8, "--workers": 1, "--input-size": 64, "--stop-after-steps": 4,
             "--checkpoint-every": 4, "--warmup-epochs": 2.0, "--repeats": 2, "--latency-repeats": 2, "--count": 8,
             "--channels": 4, "--max-images": 4, "--calib-images": 4, "--eval-images": 2, "--limit": 4, "--threads": 2,
             "--prune-steps": 1, "--finetune-epochs": 1, "--compile-timeout": 60, "--runs": 2, "--warmup": 1}

# Past these the options refuse a value in one line, before any work: such values are drawn uncapped.
REFUSED_ABOVE = {**dict.fromkeys(("--size", "--image-size", "--input-size", "--timing-size"), options.MAX_IMAGE_SIDE),
                 "--threads": options.max_threads(), "--workers": options.max_threads(), "--channels": 64,
                 "--batch-size": options.memory_bytes() // (32 * 32 * options.INFER_BYTES_PER_PIXEL)}

NET = ["--arch", "resnet18", "--weights", "random"]


def _command_lines(tmp: Path, inputs: dict[str, Path]) -> dict[str, list[str]]:
    """A cheap, valid command line per command; the flags under test are appended (argparse: last wins)."""
    cat, data, onnx, ckpt = str(bundled_cat()), str(inputs["data"]), str(inputs["onnx"]), str(inputs["ckpt"])
    train = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--image-size", "32", "--no-progress", "--device", "cpu"]
    return {
        "classify": ["classify", cat, *NET],
        "anatomy": ["anatomy", "--arch", "resnet18", "--input-size", "32"],
        "demo": ["demo", *NET, "--out", str(tmp / "demo"), "--quiet"],
        "trace": ["trace", cat, *NET],
        "gradflow": ["gradflow", *NET, "--batch-size", "2", "--input-size", "32"],
        "show features": ["show", "features", cat, "--layer", "layer1.0.relu_1", *NET, "-o", str(tmp / "f.png")],
        "show kernels": ["show", "kernels", *NET, "--count", "4", "-o", str(tmp / "k.png")],
        "show cam": ["show", "cam", cat, "--method", "gradcam", *NET, "-o", str(tmp / "c.png")],
        "show stages": ["show", "stages", cat, "--channels", "2", *NET, "-o", str(tmp / "s.png")],
        "report": ["report", cat, *NET, "-o", str(tmp / "report"), "--no-gradflow", "--sections", "input,cam", "--quiet"],
        "explore": ["explore", *NET, "--no-browser", "--check", "--port", "0"],
        "make-dataset": ["make-dataset", str(tmp / "ds"), "--classes", "2", "--per-class", "2", "--val-per-class", "1",
                         "--size", "32", "--overwrite", "--quiet"],
        "finetune": ["finetune", data, "--out", str(tmp / "ft"), *NET, *train],
        "finetune-multitask": ["finetune-multitask", data, "--out", str(tmp / "ftm"), *NET, *train],
        "bench-data": ["bench-data", data, "--arch", "resnet18", "--batch-size", "4", "--workers", "0", "--steps", "1",
                       "--image-size", "32"],
        "fuse": ["fuse", *NET, "-o", str(tmp / "fused.pt")],
        "export": ["export", *NET, "-o", str(tmp / "m.onnx"), "--exporter", "torchscript", "--no-openvino"],
        "quantize": ["quantize", onnx, "--calib", str(inputs["data"] / "train"), "-o", str(tmp / "q.onnx"),
                     "--max-images", "2", "--min-agreement", "0", "--no-time-check"],
        "bench": ["bench", "--model", onnx, "--no-compile", "--repeats", "1"],
        "layers": ["layers", onnx, "--runs", "1", "--warmup", "0", "--threads", "1"],
        "evaluate": ["evaluate", data, "--model", onnx, "--limit", "2"],
        "optimize": ["optimize", ckpt, "--data", data, "-o", str(tmp / "opt"), "--engines", "ort", "--repeats", "1",
                     "--calib-images", "2", "--eval-images", "2", "--no-mixed-precision", "--threads", "1"],
        "prune": ["prune", *NET, "--analyze-only", "--input-size", "32", "--out", str(tmp / "prune")],
    }


# Commands with no numeric flag at all (nothing to draw).
NO_NUMERIC_FLAGS = {"preprocess"}


def _numeric_flags() -> dict[str, list[tuple[str, type]]]:
    """{command (``show cam`` for show's pictures): [(flag, int|float)]} from the parser itself."""

    def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        sub = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        return sub[0].choices if sub else {}

    out: dict[str, list[tuple[str, type]]] = {}
    for name, sp in subcommands(build_parser()).items():
        for leaf, lp in ({f"{name} {k}": v for k, v in subcommands(sp).items()} or {name: sp}).items():
            flags = [(max(a.option_strings, key=len), a.type) for a in lp._actions if a.option_strings and a.type in (int, float)]
            if flags:
                out[leaf] = flags
    return out


FLAGS = _numeric_flags()
# The commands whose one accepted run costs several seconds (a demo, a report, Grad-CAM): fewer CI examples.
COSTLY = {"demo", "report", "show cam", "optimize", "export", "quantize"}


def test_every_command_is_covered():
    lines = _command_lines(Path("."), {"data": Path("d"), "onnx": Path("m.onnx"), "ckpt": Path("c.pt")})
    assert set(FLAGS) == set(lines), "add a cheap command line for the new command"
    names = {c.split()[0] for c in FLAGS} | NO_NUMERIC_FLAGS
    from resnet_xray.cli import COMMANDS

    assert names == {c.name for c in COMMANDS}


def _value(kind: type):
    ints = st.integers(-3, 3) | st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1]) | st.integers(-(2**70), 2**70)
    floats = (st.floats(allow_nan=True, allow_infinity=True)
              | st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1.0, 0.5, 1.0, 100.0, 101.0]))
    malformed = st.sampled_from(["", "nan", "inf", "-inf", "1e400", "0x10", "1_000", " 3", "three", "--", "１", "1e3"])
    nums = (ints if kind is int else floats | ints).map(str)
    return nums | malformed


def _cap(flag: str, text: str) -> str:
    cap = COST_CAPS.get(flag)
    try:
        v = float(text)
    except ValueError:
        return text
    if cap is not None and math.isfinite(v) and cap < v <= REFUSED_ABOVE.get(flag, math.inf):
        return str(type(cap)(cap))
    return text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny labelled dataset (with boxes), an ONNX resnet18 and a 2-class 32 px checkpoint, made once."""
    from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
    from resnet_xray.image import Preprocessing
    from resnet_xray.model import ModelMeta, build_model, save_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    make_reference_dataset(root / "data", ReferenceOptions(classes=2, per_class=4, val_per_class=1, size=32, seed=0))
    assert main(["export", *NET, "-o", str(root / "m.onnx"), "--exporter", "torchscript", "--no-openvino"]) == 0
    torch.manual_seed(0)
    names = sorted(p.name for p in (root / "data" / "train").iterdir())
    save_checkpoint(root / "r18.pt", build_model("resnet18", num_classes=len(names)).eval(),
                    ModelMeta("resnet18", "random (test)", names, Preprocessing(resize=40, crop=32), False))
    return {"data": root / "data", "onnx": root / "m.onnx", "ckpt": root / "r18.pt"}


# Exit 1 is a documented verdict for these: the model failed its equivalence check (fuse, export,
# quantize: one line, nothing written) or no candidate met the accuracy budget (optimize).
CHECK_FAILS = {"fuse": "fused.pt", "export": "m.onnx", "quantize": "q.onnx", "optimize": None}


def check_run(argv: list[str], drawn: list[str], tmp: Path, capsys, command: str = "") -> int:
    """Run ``argv`` in-process and assert the property; returns the exit status."""
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusal
        rc = e.code
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc in (0, 2) or (rc == 1 and command in CHECK_FAILS), f"{argv}: exit {rc}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{argv}\n{err[-3000:]}"
    if rc == 1:
        assert err.strip().splitlines()[-1].startswith("resnet-xray: error: "), f"{argv}: no verdict line\n{err[-2000:]}"
        written = CHECK_FAILS[command]
        assert written is None or not (tmp / written).exists(), f"{argv}: failed its check but wrote {written}"
    if rc == 2:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert re.match(r"resnet-xray( [\w-]+)*: error: ", last), f"{argv}: no one-line error\n{err[-2000:]}"
        assert any(f in last for f in drawn), f"{argv}: the error does not name {drawn}: {last}"
    # Nothing half-written: no temp files and no lock-owner notes left behind, in any output folder,
    # and every artefact that is there reads back whole.
    leftovers = [p for p in tmp.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".lock.json")]
    assert not leftovers, f"{argv}: left {leftovers}"
    for p in tmp.rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=True)
        elif p.suffix in (".png", ".onnx", ".html", ".csv"):
            assert p.stat().st_size > 0, f"{argv}: empty {p}"
    return rc


def _examples(command: str) -> int:
    return 3 if command in COSTLY else 5


@pytest.mark.parametrize("command", [pytest.param(c, id=c.replace(" ", "-"), marks=[pytest.mark.slow] if c in COSTLY else [])
                                     for c in sorted(FLAGS)])
def test_numeric_flags_exit_0_or_2(command, inputs, tmp_path_factory, capsys, one_thread):
    flags = FLAGS[command]
    runs = []

    @examples(_examples(command))
    @given(data=st.data())
    def run(data):
        chosen = data.draw(st.lists(st.sampled_from(flags), min_size=1, max_size=min(3, len(flags)), unique_by=lambda f: f[0]))
        tmp = tmp_path_factory.mktemp("run")
        drawn = [f for f, _ in chosen]
        tail = [f"{f}={_cap(f, data.draw(_value(kind), label=f))}" for f, kind in chosen]
        try:
            runs.append(check_run([*_command_lines(tmp, inputs)[command], *tail], drawn, tmp, capsys, command))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # 500 finetune runs would keep 45 GB of checkpoints

    run()
    if PROFILE != "ci":  # how many runs the long profile made, past pytest's capture
        with capsys.disabled():
            print(f"\n{command}: {len(runs)} runs, {runs.count(0)} exit 0, {runs.count(1)} exit 1, {runs.count(2)} exit 2")
