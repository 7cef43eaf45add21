"""Benchmark records: each benchmark writes its figures, its command and its CPU to benchmarks/results/.

One file per benchmark and CPU kind (``NAME.<cpu-kind>.json``), so a run on one kind of CPU
replaces that kind's last record and never another kind's. ``results.py`` renders the README's
and the guides' tables from these files. Standard library only: benchmarks that keep torch out
of their own process (start-up, hostile inputs) import this too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
FORMAT_VERSION = 1

# The flags that decide which kernels PyTorch, oneDNN, OpenVINO and ONNX Runtime pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# Values of ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA that hold a bigger CPU to AVX2 kernels or less.
_HELD_VALUES = {"default", "avx2", "avx", "sse41", "avx2_vnni", "avx2_vnni_2"}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _field(info: str, name: str) -> str:
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def isa_level(flags: set[str] | frozenset[str]) -> str:
    """The widest vector ISA among ``flags``, as a reader names it."""
    if flags & {"amx_tile", "amx_int8", "amx_bf16"}:
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "no AVX2"


def short_model(name: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+' -> 'Intel Xeon'; 'AMD EPYC 7B13' -> 'AMD EPYC'."""
    name = re.sub(r"\((R|TM|tm|r)\)", "", name).split("@")[0]
    words = [w for w in name.split() if w.lower() not in {"cpu", "processor"} and not re.search(r"-Core$", w)]
    if not words:
        return platform.machine() or "unknown CPU"
    if words[0] in {"Intel", "AMD"}:
        return " ".join(words[:2])
    return " ".join(words[:3])


# (vendor, cpu family, model) -> core generation, for the CPUs these records come from. The widest ISA alone
# hides differences that decide INT8 figures: a Zen 2 EPYC ran INT8 convolutions about 1.8x slower than an
# earlier record's EPYC, and both read "AVX2". An unknown triple adds nothing to the kind.
GENERATIONS = {
    ("AuthenticAMD", 23, 1): "Zen", ("AuthenticAMD", 23, 49): "Zen 2", ("AuthenticAMD", 23, 113): "Zen 2",
    ("AuthenticAMD", 25, 1): "Zen 3", ("AuthenticAMD", 25, 17): "Zen 4", ("AuthenticAMD", 25, 160): "Zen 4c",
    ("AuthenticAMD", 26, 2): "Zen 5", ("AuthenticAMD", 26, 17): "Zen 5",
    ("GenuineIntel", 6, 85): "Cascade Lake", ("GenuineIntel", 6, 106): "Ice Lake", ("GenuineIntel", 6, 143): "Sapphire Rapids",
    ("GenuineIntel", 6, 207): "Emerald Rapids", ("GenuineIntel", 6, 173): "Granite Rapids",
}


def generation(info: str) -> str:
    """The core generation named by /proc/cpuinfo's vendor, family and model, or "" when not known."""
    try:
        key = (_field(info, "vendor_id"), int(_field(info, "cpu family")), int(_field(info, "model")))
    except ValueError:
        return ""
    return GENERATIONS.get(key, "")


def cpu_info(cpuinfo: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The CPU a record was made on: model, ISA flags, whether kernels were held to AVX2, and its kind.

    ``kind`` is what a table row names, e.g. "AMD EPYC Zen 2, AVX2" or "Intel Xeon Sapphire Rapids, AMX held
    to AVX2": one current row per figure and kind. Records made before the generation was read say only
    "AMD EPYC, AVX2".
    """
    info = _cpuinfo() if cpuinfo is None else cpuinfo
    env = os.environ if environ is None else environ
    model = _field(info, "model name") or platform.processor() or platform.machine() or "unknown CPU"
    all_flags = set(_field(info, "flags").split())
    flags = [f for f in ISA_FLAGS if f in all_flags]
    level = isa_level(all_flags)
    caps = {k: env[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "NUMBA_CPU_NAME") if env.get(k)}
    capped = any(env.get(k, "").lower() in _HELD_VALUES for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))
    held = capped and level not in ("AVX2", "no AVX2")
    gen = generation(info)
    kind = f"{short_model(model)}{' ' + gen if gen else ''}, {level}" + (" held to AVX2" if held else "")
    return {
        "model": model,
        "family_model": [_field(info, "cpu family"), _field(info, "model")],
        "generation": gen or None,
        "flags": flags,
        "isa": level,
        "run": "held to AVX2" if held else "native",
        "isa_caps": caps,
        "logical_cores": os.cpu_count(),
        "kind": kind,
    }


def kind_slug(kind: str) -> str:
    """A file-name form of a CPU kind: 'AMD EPYC, AVX2' -> 'amd-epyc-avx2'."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def record_path(name: str, kind: str, results_dir: Path | None = None) -> Path:
    return (results_dir or RESULTS_DIR) / f"{name}.{kind_slug(kind)}.json"


def git_revision(root: Path = ROOT) -> dict[str, Any]:
    """The commit the benchmark ran from, and whether the tree had uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it from the repository root: ``python benchmarks/x.py --flag ...``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script_s = str(script.resolve().relative_to(ROOT))
    except ValueError:
        script_s = str(script)
    return shlex.join(["python", script_s, *argv[1:]])


def write_record(name: str, figures: Mapping[str, Any], *, argv: list[str] | None = None, results_dir: Path | None = None,
                 cpu: Mapping[str, Any] | None = None, now: _dt.datetime | None = None) -> Path:
    """Write ``figures`` as benchmarks/results/NAME.<cpu-kind>.json, atomically, and return the path.

    The record also holds the exact command (``sys.argv``), the UTC date, the git revision and the
    CPU (model, ISA flags, native or held to AVX2). ``figures`` must be JSON data (numbers, strings,
    lists, dicts); a float that is not finite is written as null.
    """
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"record name {name!r}: lower-case letters, digits and '_' only")
    cpu = dict(cpu or cpu_info())
    when = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    doc = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "figures": _finite(figures),
        "command": command_line(argv),
        "argv": list(sys.argv if argv is None else argv),
        "date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": git_revision(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    path = record_path(name, cpu["kind"], results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"record: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({cpu['kind']})")
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_records(results_dir: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every well-formed record under ``results_dir``, by benchmark name, sorted by CPU kind.

    Files that are not records of this format (another tool's JSON) are left out.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((results_dir or RESULTS_DIR).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(doc, dict) and doc.get("format_version") == FORMAT_VERSION and isinstance(doc.get("figures"), dict)
                and isinstance(doc.get("cpu"), dict) and "kind" in doc["cpu"]):
            continue
        out.setdefault(doc["name"], []).append(doc)
    for docs in out.values():
        docs.sort(key=lambda d: d["cpu"]["kind"])
    return out
