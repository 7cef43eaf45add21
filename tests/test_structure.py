"""The shape of the package: imports run down, no cycles (imports inside functions count), small modules.

Read from the source with :mod:`ast`, so an import hidden inside a function is found too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnet_xray"

# The top layer: parse a command line or serve a verb. It imports the layers below inside
# functions so that `--help` and `import resnet_xray` load no torch.
TOP = ("resnet_xray", "resnet_xray.__main__", "resnet_xray.cli", "resnet_xray.cliutil", "resnet_xray.api",
       "resnet_xray.commands")
# Below it, an import inside a function is allowed only for these: third-party libraries
# that take seconds or hundreds of MB to load and that most commands never need.
HEAVY = frozenset({
    "torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "matplotlib", "numba",
    "pytorch_grad_cam", "tensorrt", "torch_pruning", "safetensors", "PIL", "tqdm", "scipy", "pyarrow", "ray",
    "fastapi", "uvicorn", "playwright",
})
# Modules of ours that exist to hold code for one heavy library (numba compiles on import): lazy like it.
HEAVY_HOMES = frozenset({"resnet_xray.tracing._numba_kernels"})
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 60
# Functions that are data, not logic: one entry per line reads better than a loop.
DATA_TABLES: frozenset[str] = frozenset()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_top(name: str) -> bool:
    return name in TOP or name.endswith(".commands")


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported module of this package or top-level third-party name, inside a function?, line) per import."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            while t.startswith("resnet_xray") and t not in MODULES:
                t = t.rpartition(".")[0]
            found.append((t, id(node) in inside, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            # importing a.b.c runs a/__init__ and a/b/__init__ first anyway: not an edge of its own
            if target in MODULES and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_the_checks_see_imports_inside_functions():
    # resnet_xray.api imports every capability inside its verbs; a reader that missed those would see none
    targets = {t for t, lazy, _ in _imports("resnet_xray.api", MODULES["resnet_xray.api"]) if lazy}
    assert "resnet_xray.tracing" in targets and "resnet_xray.deploy.bench" in targets
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_imports_run_down_to_the_command_layer_never_up():
    upward = [f"{name} imports {t} (line {line})" for name, path in MODULES.items() if not _is_top(name)
              for t, _, line in _imports(name, path) if t in MODULES and _is_top(t)]
    assert upward == []


def test_below_the_command_layer_only_heavy_libraries_load_inside_functions():
    lazy = [f"{name}:{line} imports {t}" for name, path in MODULES.items() if not _is_top(name)
            for t, inside, line in _imports(name, path) if inside and t.split(".")[0] not in HEAVY and t not in HEAVY_HOMES]
    assert lazy == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_length(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"


def test_function_length():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in DATA_TABLES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert long == []


def test_the_api_stays_a_thin_layer_and_no_result_forwards_its_attributes():
    # api.py only checks options, loads the model and calls the feature: it was 726 lines of wrappers
    assert MODULES["resnet_xray.api"].read_text().count("\n") <= 363
    forwarding = [f"{name}.{node.name}" for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ClassDef)
                  and any(isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for f in node.body)]
    assert forwarding == []
