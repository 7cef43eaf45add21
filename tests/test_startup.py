"""Fast start: --help and --version load no torch; a command loads only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "matplotlib", "torch_pruning", "numba")

PROBE = """
import json, sys
from resnet_xray.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
sys.stdout.flush()
print(json.dumps({"rc": rc, "loaded": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
""" % (HEAVY,)


def loaded_after(*argv: str) -> tuple[int, list[str]]:
    """Run the CLI in a fresh interpreter; which heavy modules did it import?"""
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300)
    doc = json.loads(r.stderr.strip().splitlines()[-1])
    return doc["rc"], doc["loaded"]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_no_torch(flag):
    rc, loaded = loaded_after(flag)
    assert rc == 0
    assert loaded == []


def test_import_resnet_xray_is_cheap():
    code = "import sys, resnet_xray as rx; rx.__version__; print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]"


def test_classify_imports_only_what_it_uses(cat_path):
    rc, loaded = loaded_after("classify", str(cat_path), "--arch", "resnet18", "--weights", "random", "--json")
    assert rc == 0
    assert "torch" in loaded and "torchvision" in loaded
    assert not {"onnx", "onnxruntime", "openvino", "matplotlib", "torch_pruning", "numba"} & set(loaded)


def test_every_command_is_listed_once_and_builds():
    from resnet_xray.cli import COMMANDS, build_parser

    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    parser = build_parser()  # every command's flags: a broken setup function fails here
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == names


def test_no_command_module_imports_the_cli():
    from pathlib import Path

    import resnet_xray

    root = Path(resnet_xray.__file__).parent
    for f in root.rglob("*.py"):
        if f.name in ("cli.py", "__main__.py"):
            continue
        text = f.read_text()
        assert "from ..cli import" not in text and "from .cli import" not in text and "from .. import cli" not in text, f


def test_every_commands_help_prints(capsys):
    # argparse formats help text with %: one literal "80%" in a flag's help made `layers --help` a traceback
    from resnet_xray.cli import COMMANDS, main

    for c in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([c.name, "--help"])
        assert e.value.code == 0, c.name
        assert "usage:" in capsys.readouterr().out
