"""Property: any value of any numeric flag gives exit 0 or 2, never a traceback, and leaves nothing half-written.

Flags are discovered from the CLI's own parser, so a new numeric flag is covered the day it
is added. Each command runs in-process on tiny inputs (resnet18, 32 px images). Positive
values of flags that only make a run *longer* (epochs, steps, images per class) are capped,
because a long run is not a defect; zero, negative, NaN, infinite and malformed values are not.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from resnet_xray.cli import build_parser, main
from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.image import bundled_cat

from .hypothesis_profiles import examples

pytestmark = pytest.mark.slow

# Positive values above these only buy a longer run (or a bigger, valid, allocation).
COST_CAPS = {"--epochs": 2, "--per-class": 3, "--val-per-class": 2, "--classes": 3, "--size": 64, "--image-size": 64,
             "--steps": 2, "--batch-size": 64, "--workers": 1, "--input-size": 256, "--stop-after-steps": 4,
             "--checkpoint-every": 4, "--topk": 10**6, "--warmup-epochs": 2.0}


def _bases(tmp: Path, data: Path) -> dict[str, list[str]]:
    """A cheap, valid command line per command; the flag under test is appended (argparse: last wins)."""
    cat = str(bundled_cat())
    net = ["--arch", "resnet18", "--weights", "random"]
    return {
        "classify": [cat, *net],
        "anatomy": ["--arch", "resnet18"],
        "make-dataset": [str(tmp / "ds"), "--classes", "2", "--per-class", "2", "--val-per-class", "1", "--size", "32", "--overwrite"],
        "finetune": [str(data), "--out", str(tmp / "ft"), *net, "--epochs", "1", "--batch-size", "4", "--workers", "0",
                     "--image-size", "32", "--no-progress", "--device", "cpu", "--overwrite"],
        "bench-data": [str(data), "--arch", "resnet18", "--batch-size", "4", "--workers", "0", "--steps", "1", "--image-size", "32"],
        "gradflow": [*net, "--batch-size", "2", "--input-size", "32"],
    }


# Commands left out, and why: each valid run costs tens of seconds (ONNX export, INT8 calibration,
# latency benchmarks, pruning rounds, the full HTML report) or needs an ONNX file made first.
LEFT_OUT = {"demo", "trace", "report", "fuse", "export", "quantize", "bench", "prune", "finetune-multitask", "preprocess", "show",
            "evaluate", "optimize"}


def _numeric_flags() -> list[tuple[str, str, type]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, sp in sub.choices.items():
        for a in sp._actions:
            if a.option_strings and a.type in (int, float):
                out.append((name, a.option_strings[0], a.type))
    return out


CASES = [c for c in _numeric_flags() if c[0] not in LEFT_OUT]


def test_every_command_is_covered_or_listed():
    names = {c[0] for c in _numeric_flags()}
    covered = {c[0] for c in CASES}
    assert names - covered <= LEFT_OUT
    assert covered <= set(_bases(Path("."), Path(".")))


def _values(flag: str, kind: type):
    ints = st.integers(-(2**70), 2**70) | st.integers(-3, 3) | st.sampled_from([-1, 0, 1, 2**31, 2**63])
    floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1.0])
    malformed = st.sampled_from(["", "nan", "inf", "-inf", "1e400", "0x10", "1_000", " 3", "three", "--", "１"])
    nums = (ints if kind is int else floats | ints).map(str)
    return nums | malformed


def _cap(flag: str, text: str) -> str:
    cap = COST_CAPS.get(flag)
    try:
        v = float(text)
    except ValueError:
        return text
    if cap is not None and math.isfinite(v) and v > cap:
        return str(type(cap)(cap))
    return text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "ds"
    make_reference_dataset(d, ReferenceOptions(classes=2, per_class=4, val_per_class=1, size=32, seed=0))
    return d


@pytest.mark.parametrize("command, flag, kind", CASES, ids=[f"{c}{f}" for c, f, _ in CASES])
def test_numeric_flag_exits_0_or_2(command, flag, kind, tiny_data, tmp_path_factory, capsys, one_thread):
    @examples(4)
    @given(value=_values(flag, kind))
    def run(value):
        tmp = tmp_path_factory.mktemp("run")
        argv = [command, *_bases(tmp, tiny_data)[command], f"{flag}={_cap(flag, value)}"]
        state = torch.random.get_rng_state()
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own refusal
            rc = e.code
        finally:
            torch.random.set_rng_state(state)
            torch.set_num_threads(1)
        err = capsys.readouterr().err
        assert rc in (0, 2), f"{argv}: exit {rc}\n{err[-2000:]}"
        assert "Traceback" not in err, f"{argv}\n{err[-2000:]}"
        # Nothing half-written: no temp files, no lock notes left behind.
        leftovers = [p for p in tmp.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".lock.json")]
        assert not leftovers, f"{argv}: left {leftovers}"

    run()
