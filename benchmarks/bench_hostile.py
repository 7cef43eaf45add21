"""Hostile cases against the CLI, each in a fresh process in its own folder: exit codes, tracebacks, hangs, memory, leftovers.

Every case is one ``resnet-xray`` command run in a new process, in a folder of its own that holds
copies of what it needs from a template. The template is built once with the common set-up:

    resnet-xray make-dataset ds --classes 3 --per-class 12 --val-per-class 6 --size 64 --quiet
    resnet-xray finetune ds --out ft --arch resnet18 --weights random --epochs 2 --no-progress
    resnet-xray export --weights ft/best.pt -o exp/model.onnx

plus small hostile files (ONNX graphs from onnx.helper, a NaN checkpoint, a zip whose member
inflates to 4 GiB) written by a helper process. For each case the harness records the exit code,
whether stderr holds a Python traceback, whether it hung (killed at --timeout), the child's peak
RSS (``os.wait4``: that one process's rusage), whether its process tree's memory (PSS, so pages
a forked worker shares count once) passed --mem-cap-gb (polled from /proc, then killed: a blow-up
is a failure, not a swapped machine), the files left behind (locks, ``*.tmp-*``, ``.quantize-*`` work folders, outputs a refused command must not
leave), and whether its inputs (dataset, checkpoint, earlier export) are byte for byte intact.
Each case states what it expects; a case that does not get it is listed with the reason.

This process imports neither torch nor PIL: Linux starts a child's peak RSS at its parent's RSS at
fork time, so the parent stays small and helper processes write the files.

Families: setup (the template's own commands), data-loss, memory, wrong-results, tracebacks,
messages, leftovers, classify-images (hostile images: the goals are peak RSS <= 1.2x the cat's,
CPU time <= 10 s, exit 0 or 2 without a traceback; CPU rather than wall time, as on a shared
machine the wall time measures the neighbours).

A command that exits non-zero must end its stderr with one ``resnet-xray: error: ...`` line (a
usage text may come before it), its only error line.

Usage: python benchmarks/bench_hostile.py [--family NAME ...] [--list] [--timeout 90]
       [--mem-cap-gb 4] [--repeats 1] [--keep DIR]
Exit status 1 when any case is not as expected (every traceback, hang, memory kill, leftover file
and damaged input is one). A whole run writes its record (figures per family and per case, the
command, date, git revision and CPU) to benchmarks/results/bench_hostile.<cpu-kind>.json.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import cpu_name  # noqa: E402  (the one CPU description the benchmarks print; stdlib only)

RSS_GOAL, CPU_GOAL_S = 1.2, 10.0  # classify-images: peak RSS against the bundled cat's; CPU seconds (user + sys)
TRACEBACK = "Traceback (most recent call last)"
ERROR_LINE = re.compile(r"^resnet-xray(?: [\w-]+)*: error: ")  # the CLI's one-line refusal (argparse's too)
JUNK = ("*resnet-xray.lock*", "*.tmp-*", ".quantize-*")  # never left behind by a finished command
NOBODY = 65534
PAGE = os.sysconf("SC_PAGE_SIZE")

# --------------------------------------------------------------------------- hostile files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = 20000) -> None:
    """A valid greyscale PNG of side x side zero pixels, compressed row by row (never held whole)."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = bytearray()
    for _ in range(side):
        idat += z.compress(row)
    idat += z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(idat)) + _png_chunk(b"IEND", b""))


def zip_bomb(path: Path, member: str = "archive/data.pkl", size: int = 4 << 30) -> None:
    """A zip (zip64 sizes) whose one deflated member of ``size`` zero bytes takes about size/1000 on disk.

    After a full flush deflate starts afresh, so one compressed chunk repeats: the 4 GiB are never
    compressed, only their CRC is computed.
    """
    chunk = 1 << 24
    assert size % chunk == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush()
    n = size // chunk
    crc, zeros = 0, bytes(chunk)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    csize = len(block) * n + len(tail)
    name = member.encode()
    extra = struct.pack("<HHQQ", 1, 16, size, csize)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra))
    with open(path, "wb") as f:
        f.write(local + name + extra)
        for _ in range(n):
            f.write(block)
        f.write(tail)
        cd_offset = f.tell()
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                              len(name), len(extra), 0, 0, 0, 0, 0) + name + extra
        f.write(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_offset, 0))


def thin_png(path: Path, w: int, h: int) -> None:
    from PIL import Image

    Image.new("RGB", (w, h), (200, 120, 40)).save(path)


def make_images(d: Path) -> None:
    """The classify-images family's files (run in its own process: see the module docstring)."""
    from PIL import Image

    from resnet_xray.image import bundled_cat

    shutil.copyfile(bundled_cat(), d / "cat.png")
    for w, h in ((10000, 2), (2, 10000), (100000, 2), (2, 100000)):
        thin_png(d / f"thin_{w}x{h}.png", w, h)
    with open(d / "x.jpg", "wb") as f:
        f.truncate(1 << 30)
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "fifo.jpg")
    png_bomb(d / "bomb.png")
    Image.new("RGB", (9000, 9000), (90, 160, 30)).save(d / "big.jpg", quality=50)
    buf = io.BytesIO()
    Image.open(bundled_cat()).convert("RGB").save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (d / "notes.png").write_text("this is not a picture\n")
    (d / "empty.jpg").write_bytes(b"")


def _onnx_model(path: Path, input_shape: list, output_shape: list, tail: str = "", description: str = "") -> None:
    """GlobalAveragePool (+ Flatten, + a tail) over a 3-channel input: a tiny graph with any declared shapes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"])]
    inits = []
    if tail == "4d":
        nodes[-1].output[0] = "logits"
    elif tail == "1d":
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", ["pooled", "flat"], ["logits"]))
    else:
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat2d"], axis=1))
        if tail == "nan":
            inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
            nodes.append(helper.make_node("Mul", ["flat2d", "nan"], ["logits"]))
        elif tail == "empty":
            for n, v in (("s0", 0), ("e0", 0), ("ax", 1)):
                inits.append(numpy_helper.from_array(np.array([v], dtype=np.int64), n))
            nodes.append(helper.make_node("Slice", ["flat2d", "s0", "e0", "ax"], ["logits"]))
        else:
            nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if description:
        model.doc_string = description
    onnx.save(model, path)


def make_fixtures(t: Path) -> None:
    """The hostile files the cases share, beside ds/, ft/ and exp/ in the template ``t``."""
    import torch
    from PIL import Image

    val = sorted((t / "ds" / "val").rglob("*.png"))
    (Image.open(val[0]).convert("RGB") if val else Image.new("RGB", (64, 64), (9, 99, 199))).save(t / "x.png")
    ckpt = torch.load(t / "ft" / "best.pt", map_location="cpu", weights_only=True)
    ckpt["state_dict"]["fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, t / "nan.pth")
    zip_bomb(t / "bomb.pth")
    b = "batch"
    _onnx_model(t / "huge.onnx", [1, 3, 20000, 20000], [1, 3])
    _onnx_model(t / "nan.onnx", [b, 3, 224, 224], [b, 3], tail="nan")
    _onnx_model(t / "empty.onnx", [b, 3, 224, 224], [b, 0], tail="empty")
    _onnx_model(t / "batch4.onnx", [4, 3, 224, 224], [4, 3])
    _onnx_model(t / "out1d.onnx", [1, 3, 224, 224], [3], tail="1d")
    _onnx_model(t / "out4d.onnx", [1, 3, 224, 224], [1, 3, 1, 1], tail="4d")
    _onnx_model(t / "batch0.onnx", [0, 3, 224, 224], [0, 3])
    _onnx_model(t / "plain.onnx", [b, 3, 224, 224], [b, 3])


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    args: tuple[str, ...]  # after `resnet-xray`; paths are relative to the case folder, {img} is the images folder
    expect: str  # what should happen, in words
    rc: frozenset[int] = frozenset({2})  # exit codes that are as expected
    needs: tuple[str, ...] = ()  # template entries to copy, beyond those the arguments name
    guard: tuple[str, ...] = ()  # inputs that must be byte for byte unchanged
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (refused or half-made outputs)
    stderr_has: tuple[str, ...] = ()  # substrings stderr must hold (case-insensitive)
    stderr_lacks: tuple[str, ...] = ()  # substrings stderr must not hold (case-insensitive)
    check: Callable[[Path, int | None], str | None] | None = None  # extra test of the folder and exit code
    prepare: Callable[[Path], None] | None = None  # runs in this process on the case folder before the command
    as_nobody: bool = False  # run as an unprivileged user (root reads mode-000 folders)
    fsize: int | None = None  # RLIMIT_FSIZE in bytes: a full disk, as far as the command can tell
    timeout: float | None = None  # seconds; None: --timeout
    argv: tuple[str, ...] | None = None  # a whole command instead of resnet-xray (the harness's own tests)

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else "resnet-xray " + shlex.join(self.args)


@dataclass
class Result:
    family: str
    name: str
    command: str
    expect: str
    rc: int | None  # None: killed (hang or memory)
    traceback: bool
    hung: bool
    over_cap: bool
    peak_rss_mb: float  # the command's own process, from os.wait4
    tree_pss_mb: float  # the largest PSS summed over its process tree that the watchdog saw
    wall_s: float
    cpu_s: float  # user + sys of the command and the children it waited for
    left: list[str] = field(default_factory=list)  # files left behind
    damaged: list[str] = field(default_factory=list)  # inputs changed, added or removed
    failures: list[str] = field(default_factory=list)  # why the case is not as expected
    message: str = ""  # the last stderr line
    skipped: str = ""  # why the case did not run

    @property
    def as_expected(self) -> bool:
        return not self.failures and not self.skipped


# Commands that train, export or calibrate: slow on a loaded 2-core machine, so a longer wait before "hung".
HEAVY, HEAVY_TIMEOUT_S = {"finetune", "optimize", "export", "quantize", "report"}, 240.0


def _case(family: str, name: str, args: str, expect: str, **kw) -> Case:
    if "rc" in kw and not isinstance(kw["rc"], frozenset):
        kw["rc"] = frozenset(kw["rc"])
    argv = tuple(shlex.split(args))
    if argv[0] in HEAVY:
        kw.setdefault("timeout", HEAVY_TIMEOUT_S)
    return Case(family, name, argv, expect, **kw)


def _write(rel: str, text: str = "not a folder\n") -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)

    return prepare


def _unreadable_class(d: Path) -> None:
    """ds/val/triangle unreadable; the folder and a HOME writable by the unprivileged user."""
    os.chmod(d / "ds" / "val" / "triangle", 0)
    if os.geteuid() == 0:
        os.chown(d, NOBODY, NOBODY)
        (d / "home").mkdir()
        os.chown(d / "home", NOBODY, NOBODY)


def _whole_report(d: Path, rc: int | None) -> str | None:
    j, h = (d / "rep" / "report.json").exists(), (d / "rep" / "report.html").exists()
    return "rep/report.json without rep/report.html" if j and not h else None


def _needs_chart(d: Path, rc: int | None) -> str | None:
    return "exit 0 but no chart.png" if rc == 0 and not (d / "chart.png").exists() else None


def _no_txt_onnx(d: Path, rc: int | None) -> str | None:
    return "an ONNX model was written as e/m.txt" if (d / "e" / "m.txt").exists() else None


SETUP = (
    "make-dataset ds --classes 3 --per-class 12 --val-per-class 6 --size 64 --quiet",
    "finetune ds --out ft --arch resnet18 --weights random --epochs 2 --no-progress",
    "export --weights ft/best.pt -o exp/model.onnx",
)
CHEAP_OPT = " --engines ort --calib-images 8 --repeats 3 --finetune-epochs 1 --no-mixed-precision"
TRAIN = " --arch resnet18 --weights random --epochs 1 --no-progress"
ONE_LINE = "exit 2, one line, no traceback"
STALE_WORK = ".quantize-4194303-x1y2"  # a killed run's work folder: <prefix><pid>-<random>, a pid past any pid_max


def catalogue() -> list[Case]:
    """Every case, family by family, in the order they run."""
    cases = [_case("setup", f"setup {i + 1}: {a.split()[0]}", a, "exit 0, no lock or temp file left", rc={0})
             for i, a in enumerate(SETUP)]

    f = "data-loss"
    cases += [
        _case(f, "optimize -o = the dataset --overwrite", "optimize ft/best.pt --data ds -o ds --overwrite" + CHEAP_OPT,
              "refused (exit 2); ds and ft unchanged", guard=("ds", "ft")),
        _case(f, "optimize -o = the checkpoint folder --overwrite", "optimize ft/best.pt --data ds -o ft --overwrite" + CHEAP_OPT,
              "refused (exit 2); ds and ft unchanged", guard=("ds", "ft")),
        _case(f, "optimize -o inside the dataset --overwrite", "optimize ft/best.pt --data ds -o ds/opt --overwrite" + CHEAP_OPT,
              "refused (exit 2); ds unchanged (no ds/opt)", guard=("ds", "ft")),
        _case(f, "export of a NaN checkpoint over a good export", "export --weights nan.pth --allow-nonfinite -o exp/model.onnx",
              "exit 1 (nothing written); the earlier exp/ set unchanged", rc={1, 2}, guard=("exp",)),
        _case(f, "finetune --overwrite onto the dataset", "finetune ds --out ds --overwrite" + TRAIN,
              "refused (exit 2); ds unchanged", guard=("ds",)),
        _case(f, "make-dataset --overwrite onto the checkpoint folder",
              "make-dataset ft --overwrite --classes 2 --per-class 2 --val-per-class 1 --size 32 --quiet",
              "refused (exit 2); ft unchanged", guard=("ft",)),
    ]

    f = "memory"
    huge = "refused in one line (exit 2): the declared 20000x20000 input is capped"
    cases += [
        _case(f, "4 GiB zip member as classify --weights", "classify x.png --arch resnet18 --weights bomb.pth",
              "refused (exit 2) before anything is inflated"),
        _case(f, "20000x20000 ONNX to bench --model", "bench --model huge.onnx --repeats 3", huge),
        _case(f, "20000x20000 ONNX to classify --model", "classify x.png --model huge.onnx", huge),
        _case(f, "20000x20000 ONNX to evaluate", "evaluate ds/val --model huge.onnx", huge),
        _case(f, "20000x20000 ONNX to quantize", "quantize huge.onnx --calib ds/train -o q/huge.int8.onnx --max-images 8 --no-time-check",
              huge + "; no q/", absent=("q",)),
        _case(f, "make-dataset --size 100000", "make-dataset big --size 100000 --classes 2 --per-class 1 --val-per-class 1 --quiet",
              ONE_LINE + "; no big/", absent=("big",)),
        _case(f, "finetune --image-size 100000", "finetune ds --out ft2 --image-size 100000" + TRAIN, ONE_LINE + "; no ft2/",
              absent=("ft2",)),
        _case(f, "gradflow --input-size 10000 --batch-size 2", "gradflow --arch resnet18 --weights random --input-size 10000 "
              "--batch-size 2 -o gf.png", ONE_LINE + "; no gf.png", absent=("gf.png",)),
        _case(f, "evaluate --threads 100000", "evaluate ds/val --model exp/model.onnx --threads 100000", ONE_LINE),
        _case(f, "show stages --channels 100000", "show stages x.png --channels 100000 --arch resnet18 --weights random -o st.png",
              ONE_LINE + "; no st.png", absent=("st.png",)),
        _case(f, "bench --threads 100000", "bench --arch resnet18 --weights random --threads 100000 --no-compile --repeats 2",
              ONE_LINE),
        _case(f, "optimize --timing-size 100000", "optimize ft/best.pt --data ds -o opt --timing-size 100000" + CHEAP_OPT,
              ONE_LINE + "; no opt/", absent=("opt",)),
    ]

    f = "wrong-results"
    nobody = dict(prepare=_unreadable_class, as_nobody=True, needs=("ds",))
    cases += [
        _case(f, "NaN-output ONNX to classify", "classify x.png --model nan.onnx", "exit 1: non-finite outputs", rc={1}),
        _case(f, "NaN-output ONNX to evaluate", "evaluate ds/val --model nan.onnx", "exit 1: non-finite outputs", rc={1}),
        _case(f, "[1,0]-output ONNX to classify", "classify x.png --model empty.onnx", "exit 1 (or 2 at load): no outputs",
              rc={1, 2}),
        _case(f, "[1,0]-output ONNX to evaluate", "evaluate ds/val --model empty.onnx", "exit 1 (or 2 at load): no outputs",
              rc={1, 2}),
        _case(f, "finetune --multitask --class-weight nan", "finetune ds --out ftn --multitask --class-weight nan" + TRAIN,
              "refused (exit 2), or exit 1 as no step was taken; no ftn/best.pt", rc={1, 2}, absent=("ftn/best.pt",)),
        _case(f, "finetune --multitask --class-weight -1", "finetune ds --out ftn --multitask --class-weight -1" + TRAIN,
              "refused (exit 2); no ftn/best.pt", absent=("ftn/best.pt",)),
        _case(f, "unreadable class folder: finetune", "finetune ds --out ftu" + TRAIN,
              "exit 2 naming ds/val/triangle; no ftu/best.pt", absent=("ftu/best.pt",), stderr_has=("triangle",), **nobody),
        _case(f, "unreadable class folder: evaluate", "evaluate ds/val --model exp/model.onnx",
              "exit 2 naming ds/val/triangle", stderr_has=("triangle",), **nobody),
        _case(f, "unreadable class folder: classify the folder", "classify ds/val --model exp/model.onnx",
              "exit 2 naming ds/val/triangle", stderr_has=("triangle",), **nobody),
    ]

    f = "tracebacks"
    shapes = {"batch4.onnx": "fixed batch 4", "out1d.onnx": "1-D output", "out4d.onnx": "4-D output",
              "batch0.onnx": "declared batch 0"}
    for model, what in shapes.items():
        # The declared batch of 0 is known at load; a wrong output shape may only show when the model runs (exit 1).
        ok = {2} if model == "batch0.onnx" else {0, 1, 2}
        said = "exit 2 in one line" if ok == {2} else "works (exit 0), or one line (exit 1 or 2)"
        cases += [
            _case(f, f"{what} ONNX to classify", f"classify x.png --model {model}", said + ", no traceback", rc=ok),
            _case(f, f"{what} ONNX to evaluate", f"evaluate ds/val --model {model}", said + ", no traceback", rc=ok),
            _case(f, f"{what} ONNX to bench", f"bench --model {model} --repeats 3", said + ", no traceback", rc=ok),
        ]
    cases += [
        _case(f, "make-dataset onto an existing file", "make-dataset f --classes 2 --per-class 2 --val-per-class 1 --size 32 --quiet",
              ONE_LINE + "; f unchanged", prepare=_write("f"), guard=("f",)),
        _case(f, "finetune --out on a full disk", "finetune ds --out ftf" + TRAIN, "exit 1 or 2 in one line, no traceback",
              rc={1, 2}, fsize=1 << 20),
        _case(f, "finetune --resume on a full disk", "finetune ds --out ft --resume --arch resnet18 --weights random --epochs 3 "
              "--no-progress", "exit 1 or 2 in one line, no traceback; ft's checkpoints unchanged", rc={1, 2}, fsize=1 << 20,
              guard=("ft/best.pt", "ft/last.pt")),
    ]

    f = "messages"
    cases += [
        _case(f, "classify --weights m.onnx", "classify x.png --weights exp/model.onnx", "exit 2 in one line that names --model",
              stderr_has=("--model",)),
        _case(f, "classify --top-k 3", "classify x.png --top-k 3", "exit 2 with 'did you mean' --topk",
              stderr_has=("did you mean", "--topk")),
        _case(f, "export -o m.txt", "export --weights ft/best.pt -o e/m.txt --no-openvino",
              "refused (exit 2), or the file named correctly (exit 0); never ONNX as e/m.txt", rc={0, 2}, check=_no_txt_onnx),
        _case(f, "bench two --model -o chart.png", "bench --model exp/model.onnx --model plain.onnx --repeats 3 -o chart.png",
              "the chart written (exit 0), or the flag refused (exit 2)", rc={0, 2}, check=_needs_chart),
        _case(f, "ONNX with no description", "classify x.png --model plain.onnx",
              "exit 0; says unknown weights, not RANDOM", rc={0}, stderr_lacks=("random weights",)),
        _case(f, "show features --weights random", "show features x.png --layer layer1.0.relu_1 --arch resnet18 --weights random -o feat.png",
              "exit 0 with a warning on stderr that the weights are random", rc={0}, stderr_has=("random",)),
    ]

    f = "leftovers"
    cases += [
        _case(f, "finetune with weights that cannot load", "finetune ds --out ftw --arch resnet18 --weights missing.pt "
              "--epochs 1 --no-progress", ONE_LINE + "; no ftw/ left", absent=("ftw",)),
        _case(f, "quantize beside a killed run's work folder", "quantize exp/model.onnx --calib ds/train -o q/m.int8.onnx "
              "--max-images 8 --no-time-check", "exit 0; the dead run's .quantize-* folder removed, no new one left", rc={0},
              prepare=_write(f"q/{STALE_WORK}/m.onnx", "half-made"), absent=(f"q/{STALE_WORK}",)),
        _case(f, "report, a plain run", "report x.png --arch resnet18 --weights random --no-gradflow -o rep --quiet",
              "exit 0; no lock left in rep/", rc={0}),
        _case(f, "report on a full disk", "report x.png --arch resnet18 --weights random --no-gradflow -o rep --quiet",
              "exit 1 or 2 in one line; never report.json without report.html", rc={1, 2}, fsize=1 << 20, check=_whole_report),
    ]

    f = "classify-images"
    images = {"cat (bundled)": "cat.png", "10000x2 PNG": "thin_10000x2.png", "2x10000 PNG": "thin_2x10000.png",
              "100000x2 PNG": "thin_100000x2.png", "2x100000 PNG": "thin_2x100000.png", "sparse 1 GB x.jpg": "x.jpg",
              "FIFO fifo.jpg": "fifo.jpg", "PNG bomb 20000x20000": "bomb.png", "9000x9000 JPEG": "big.jpg",
              "truncated JPEG": "truncated.jpg", "text as x.png": "notes.png", "empty file": "empty.jpg"}
    if not hasattr(os, "mkfifo"):
        del images["FIFO fifo.jpg"]
    for name, file in images.items():
        cases.append(_case(f, name, f"classify {{img}}/{file} --arch resnet18 --weights random --json",
                           f"exit 0 or 2, no traceback, peak RSS <= {RSS_GOAL}x the cat's, CPU <= {CPU_GOAL_S:.0f} s",
                           rc={0} if name.startswith("cat") else {0, 2}))
    return cases


FAMILIES = ("setup", "data-loss", "memory", "wrong-results", "tracebacks", "messages", "leftovers", "classify-images")

# --------------------------------------------------------------------------- running one case


@dataclass
class Proc:
    rc: int | None
    stdout: str
    stderr: str
    peak_rss_mb: float
    tree_pss_mb: float
    wall_s: float
    cpu_s: float
    hung: bool
    over_cap: bool


def _memory(pid: int) -> int:
    """Bytes of ``pid``'s proportional set size (shared pages split among their users), else its RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _tree_pss_mb(pid: int) -> float:
    """Memory of ``pid`` and its descendants (DataLoader workers, helpers): PSS, so forked copies count once."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += _memory(p)
            for t in os.listdir(f"/proc/{p}/task"):
                stack += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            pass
    return total / 2**20


def execute(argv: list[str], cwd: Path, *, timeout: float, mem_cap_mb: float, as_limit: int | None = None,
            fsize: int | None = None, env: dict[str, str] | None = None) -> Proc:
    """Run ``argv`` in a new session; kill the whole group at ``timeout`` s or past ``mem_cap_mb`` of tree PSS."""

    def limits() -> None:  # in the child, before exec
        if as_limit:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, like ENOSPC
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        t = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=so, stderr=se, preexec_fn=limits,
                             start_new_session=True)
        hung = over = killed = False
        tree = 0.0
        while True:
            done, status, ru = os.wait4(p.pid, os.WNOHANG)
            if done:
                break
            tree = max(tree, _tree_pss_mb(p.pid))
            if not killed and (tree > mem_cap_mb or time.perf_counter() - t > timeout):
                over, hung = tree > mem_cap_mb, tree <= mem_cap_mb
                _kill_group(p.pid)
                killed = True
            time.sleep(0.05)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        _kill_group(p.pid)  # workers the command left running
        so.seek(0)
        se.seek(0)
        out, err = so.read().decode(errors="replace"), se.read().decode(errors="replace")
    return Proc(None if killed else p.returncode, out, err, ru.ru_maxrss / 1024, tree, wall, ru.ru_utime + ru.ru_stime,
                hung, over)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def is_junk(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in JUNK)


def listing(d: Path) -> set[str]:
    """Every path under ``d`` (files, folders, links, FIFOs), relative, without following links."""
    out: set[str] = set()
    for root, dirs, files in os.walk(d):
        rel = Path(root).relative_to(d)
        out.update(str(rel / n) for n in dirs + files)
    return out


def digest(d: Path, paths: Iterable[str]) -> dict[str, str]:
    """rel path -> sha256 (or 'folder') for everything under ``paths``; lock and temp files left out."""
    out: dict[str, str] = {}
    for rel in paths:
        top = d / rel
        if top.is_file():
            out[rel] = _sha256(top)
            continue
        if not top.is_dir():
            continue
        out[rel] = "folder"
        for p in sorted(top.rglob("*")):
            if any(is_junk(part) for part in p.relative_to(d).parts):
                continue
            out[str(p.relative_to(d))] = _sha256(p) if p.is_file() else "folder" if p.is_dir() else "other"
    return out


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def leftovers(before: set[str], after: set[str]) -> list[str]:
    """New lock, temp and work files; inside a new junk folder only the folder counts."""
    new = sorted(after - before)
    return [p for p in new if is_junk(Path(p).name) and not any(is_junk(a) for a in Path(p).parts[:-1])]


def stage(case: Case, template: Path | None, folder: Path) -> None:
    """Make the case folder: copies of the template entries the case names, then its own preparation."""
    folder.mkdir(parents=True)
    if template is not None and template.is_dir():
        wanted = set(case.needs) | {g.split("/")[0] for g in case.guard}
        for tok in case.args:
            for part in tok.split("="):
                wanted.add(part.split("/")[0])
        for name in sorted(wanted):
            src = template / name
            if name and src.exists():
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / name)
    if case.prepare:
        case.prepare(folder)


def nobody_prefix() -> list[str] | None:
    """The wrapper that runs a command unprivileged: [] when this process is not root, None when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if setpriv else None


def judge(case: Case, folder: Path, proc: Proc, before: set[str], guarded: dict[str, str]) -> Result:
    """Compare what happened with what the case expects."""
    after = listing(folder)
    left = leftovers(before, after) + [a for a in case.absent if (folder / a).exists() or (folder / a).is_symlink()]
    damaged = _diff(guarded, digest(folder, case.guard))
    err_lines = proc.stderr.strip().splitlines()
    r = Result(case.family, case.name, case.command, case.expect, proc.rc, TRACEBACK in proc.stderr, proc.hung, proc.over_cap,
               round(proc.peak_rss_mb, 1), round(proc.tree_pss_mb, 1), round(proc.wall_s, 2), round(proc.cpu_s, 2), left, damaged,
               message=err_lines[-1][:160] if err_lines else "")
    fails = r.failures
    if proc.hung:
        fails.append(f"hung: killed after {proc.wall_s:.0f} s")
    elif proc.over_cap:
        fails.append(f"memory: killed at {proc.tree_pss_mb / 1024:.1f} GiB (PSS of its process tree)")
    elif proc.rc not in case.rc:
        fails.append(f"exit {proc.rc}, expected {'/'.join(map(str, sorted(case.rc)))}")
    if r.traceback:
        fails.append("traceback")
    elif proc.rc not in (0, None) and (why := _not_one_line(err_lines)):
        fails.append(why)
    if left:
        fails.append("left behind: " + ", ".join(left[:4]) + (" ..." if len(left) > 4 else ""))
    if damaged:
        fails.append("inputs changed: " + ", ".join(damaged[:4]) + (" ..." if len(damaged) > 4 else ""))
    low = proc.stderr.lower()
    fails += [f"stderr lacks {s!r}" for s in case.stderr_has if s.lower() not in low]
    fails += [f"stderr holds {s!r}" for s in case.stderr_lacks if s.lower() in low]
    if case.check and not proc.hung and not proc.over_cap and (why := case.check(folder, proc.rc)):
        fails.append(why)
    return r


def _not_one_line(err_lines: list[str]) -> str | None:
    """Why a failed command's stderr does not end in its one error line, or None."""
    errors = [line for line in err_lines if ERROR_LINE.match(line)]
    if not errors:
        return "no 'resnet-xray: error:' line on stderr"
    if len(errors) > 1:
        return f"{len(errors)} error lines"
    if err_lines[-1] != errors[0]:
        return "the error line is not the last line of stderr"
    return None


def _diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    gone = [f"{k} (removed)" for k in before if k not in after]
    changed = [f"{k} (changed)" for k in before if k in after and after[k] != before[k]]
    added = [f"{k} (added)" for k in after if k not in before]
    return gone + changed + added


def run_case(case: Case, template: Path | None, root: Path, *, timeout: float = 60.0, mem_cap_mb: float = 4096,
             as_limit: int | None = None, images: Path | None = None, folder: Path | None = None) -> Result:
    """Stage, run and judge one case. ``folder``: run in this existing folder instead (the template's set-up)."""
    if folder is None:
        folder = root / "".join(c if c.isalnum() else "-" for c in f"{case.family}-{case.name}")[:80]
        n = 1
        while folder.exists():
            folder = folder.with_name(f"{folder.name.rstrip('0123456789-')}-{n}")
            n += 1
        stage(case, template, folder)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    prefix: list[str] = []
    if case.as_nobody:
        prefix = nobody_prefix()
        if prefix is None:
            return Result(case.family, case.name, case.command, case.expect, None, False, False, False, 0.0, 0.0, 0.0, 0.0,
                          skipped="needs setpriv to run as an unprivileged user (root reads mode-000 folders)")
        if prefix:
            env["HOME"] = str(folder / "home")
    argv = list(case.argv) if case.argv else [sys.executable, "-m", "resnet_xray",
                                              *(a.replace("{img}", str(images)) for a in case.args)]
    before, guarded = listing(folder), digest(folder, case.guard)
    proc = execute(prefix + argv, folder, timeout=case.timeout or timeout, mem_cap_mb=mem_cap_mb, as_limit=as_limit,
                   fsize=case.fsize, env=env)
    return judge(case, folder, proc, before, guarded)


def merge(runs: list[Result]) -> Result:
    """Repeats of one case: the largest RSS, the median times, every failure."""
    r = runs[0]
    if len(runs) == 1:
        return r
    r.peak_rss_mb = max(x.peak_rss_mb for x in runs)
    r.tree_pss_mb = max(x.tree_pss_mb for x in runs)
    r.wall_s = round(statistics.median(x.wall_s for x in runs), 2)
    r.cpu_s = round(statistics.median(x.cpu_s for x in runs), 2)
    r.traceback, r.hung, r.over_cap = (any(getattr(x, k) for x in runs) for k in ("traceback", "hung", "over_cap"))
    r.left = sorted({p for x in runs for p in x.left})
    r.damaged = sorted({p for x in runs for p in x.damaged})
    r.failures = list(dict.fromkeys(f for x in runs for f in x.failures))
    if len({x.rc for x in runs}) > 1:
        r.failures.append("exit codes differ across repeats: " + "/".join(str(x.rc) for x in runs))
    return r


def judge_against_cat(results: list[Result]) -> None:
    """classify-images: peak RSS against the bundled cat's, and CPU time."""
    cat = next((r for r in results if r.name.startswith("cat") and not r.skipped), None)
    if cat is None or cat.peak_rss_mb <= 0:
        return
    for r in results:
        if r.skipped or r.hung or r.over_cap:
            continue
        if r.peak_rss_mb > RSS_GOAL * cat.peak_rss_mb:
            r.failures.append(f"peak RSS {r.peak_rss_mb / cat.peak_rss_mb:.2f}x the cat's (goal <= {RSS_GOAL}x)")
        if r.cpu_s > CPU_GOAL_S:
            r.failures.append(f"CPU {r.cpu_s:.1f} s (goal <= {CPU_GOAL_S:.0f} s)")


# --------------------------------------------------------------------------- the summary


def family_figures(results: list[Result]) -> dict:
    tried = [r for r in results if not r.skipped]
    codes = Counter("hang" if r.hung else "mem" if r.over_cap else str(r.rc) for r in tried)
    return {
        "cases": len(tried),
        "skipped": len(results) - len(tried),
        "exit_codes": dict(sorted(codes.items())),
        "tracebacks": sum(r.traceback for r in tried),
        "hangs": sum(r.hung for r in tried),
        "over_memory_cap": sum(r.over_cap for r in tried),
        "max_peak_rss_mb": max((r.peak_rss_mb for r in tried), default=0.0),
        "files_left": sum(len(r.left) for r in tried),
        "inputs_damaged": sum(bool(r.damaged) for r in tried),
        "not_as_expected": sum(not r.as_expected for r in tried),
    }


def print_summary(by_family: dict[str, list[Result]], mem_cap_gb: float) -> bool:
    head = (f"{'family':<16} {'cases':>5}  {'exit codes':<22} {'TB':>3} {'hang':>4} {'>cap':>4} {'peak RSS MB':>11} "
            f"{'left':>4} {'damaged':>7} {'not as expected':>15}")
    print(head)
    print("-" * len(head))
    total = Counter()
    for fam, results in by_family.items():
        f = family_figures(results)
        codes = " ".join(f"{k}:{v}" for k, v in f["exit_codes"].items())
        print(f"{fam:<16} {f['cases']:>5}  {codes:<22} {f['tracebacks']:>3} {f['hangs']:>4} {f['over_memory_cap']:>4} "
              f"{f['max_peak_rss_mb']:>11.0f} {f['files_left']:>4} {f['inputs_damaged']:>7} {f['not_as_expected']:>15}")
        total.update({k: f[k] for k in ("cases", "tracebacks", "hangs", "over_memory_cap", "files_left", "inputs_damaged",
                                        "not_as_expected")})
    print("-" * len(head))
    print(f"{'all':<16} {total['cases']:>5}  {'':<22} {total['tracebacks']:>3} {total['hangs']:>4} {total['over_memory_cap']:>4} "
          f"{'':>11} {total['files_left']:>4} {total['inputs_damaged']:>7} {total['not_as_expected']:>15}")
    print(f"must be 0: TB (tracebacks), hang, >cap (tree PSS over {mem_cap_gb:g} GiB), left (files left behind), damaged")
    failing = [r for rs in by_family.values() for r in rs if not r.as_expected]
    if failing:
        print("\nnot as expected:")
        for r in failing:
            why = r.skipped and f"skipped: {r.skipped}" or "; ".join(r.failures)
            print(f"  {r.family}/{r.name}: {why}" + (f"  | {r.message}" if r.message and not r.skipped else ""))
    return not any(not r.as_expected for rs in by_family.values() for r in rs if not r.skipped)


def _helper(flag: str, folder: Path) -> None:
    """Run this file as a helper process (it imports torch/PIL/onnx, which this process must not)."""
    r = subprocess.run([sys.executable, __file__, flag, str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_hostile: {flag} failed:\n{r.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", action="append", choices=FAMILIES, help="run only this family (repeat for more)")
    ap.add_argument("--list", action="store_true", help="list the cases and what each expects, run nothing")
    ap.add_argument("--timeout", type=float, default=90.0,
                    help=f"seconds before a case counts as hung (default: 90; {HEAVY_TIMEOUT_S:.0f} for {', '.join(sorted(HEAVY))})")
    ap.add_argument("--mem-cap-gb", type=float, default=4.0,
                    help="kill a case whose process tree passes this PSS (default: 4; a normal run peaks near 1.2)")
    ap.add_argument("--as-limit-gb", type=float, default=12.0,
                    help="RLIMIT_AS of each case, a backstop to the memory watchdog (default: 12; export reserves ~5 GiB)")
    ap.add_argument("--repeats", type=int, default=1, help="classify-images: runs per input (max RSS, median time)")
    ap.add_argument("--keep", type=Path, default=None, help="build every case folder here and keep them")
    ap.add_argument("--make-fixtures", type=Path, default=None, help=argparse.SUPPRESS)  # helper process
    ap.add_argument("--make-images", type=Path, default=None, help=argparse.SUPPRESS)  # helper process
    args = ap.parse_args(argv)
    if args.make_fixtures:
        make_fixtures(args.make_fixtures)
        return 0
    if args.make_images:
        make_images(args.make_images)
        return 0

    families = args.family or list(FAMILIES)
    cases = [c for c in catalogue() if c.family in families or (c.family == "setup" and set(families) - {"classify-images"})]
    if args.list:
        for c in cases:
            print(f"{c.family:<16} {c.name:<48} {c.command}\n{'':<17}expects: {c.expect}")
        return 0

    root = args.keep or Path(tempfile.mkdtemp(prefix="hostile-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # the unprivileged cases must reach their folders
    opts = dict(timeout=args.timeout, mem_cap_mb=args.mem_cap_gb * 1024, as_limit=int(args.as_limit_gb * 2**30))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    by_family: dict[str, list[Result]] = {}
    template, images = root / "template", root / "images"
    try:
        for i, case in enumerate(cases, 1):
            if case.family == "setup":
                template.mkdir(exist_ok=True)
                r = run_case(case, None, root, folder=template, **opts)
            elif case.family == "classify-images":
                if not images.exists():
                    images.mkdir()
                    _helper("--make-images", images)
                r = merge([run_case(case, None, root, images=images, **opts) for _ in range(args.repeats)])
            else:
                if not (template / "x.png").exists():
                    if not (template / "ft" / "best.pt").exists():
                        raise SystemExit("bench_hostile: the set-up failed; see the setup rows:\n"
                                         + "\n".join(f"  {x.command}: {x.message}" for x in by_family.get("setup", [])))
                    _clean_template(template)
                    _helper("--make-fixtures", template)
                r = run_case(case, template, root, **opts)
            by_family.setdefault(case.family, []).append(r)
            state = "skipped" if r.skipped else "ok" if r.as_expected else "NOT as expected"
            print(f"[{i}/{len(cases)}] {case.family}/{case.name}: exit {r.rc}, {r.wall_s:.1f} s ({r.cpu_s:.1f} s CPU), "
                  f"{r.peak_rss_mb:.0f} MB: {state}", file=sys.stderr, flush=True)
        if "classify-images" in by_family:
            judge_against_cat(by_family["classify-images"])
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()

    print(f"CPU: {cpu_name()}; load average {load0[0]:.1f} before, {load1[0]:.1f} after (shared machine); "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(f"each case: a fresh process in its own folder, timeout {args.timeout:g} s ({HEAVY_TIMEOUT_S:g} s for "
          f"{', '.join(sorted(HEAVY))}), killed past {args.mem_cap_gb:g} GiB "
          f"of tree PSS (RLIMIT_AS {args.as_limit_gb:g} GiB), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}\n")
    ok = print_summary(by_family, args.mem_cap_gb)
    if args.family:  # the record, and the tables rendered from it, hold whole runs only
        print("record: not written (--family runs part of the catalogue)")
        return 0 if ok else 1

    from records import write_record

    write_record("bench_hostile", {
        "families": {fam: family_figures(rs) for fam, rs in by_family.items()},
        "cases": [asdict(r) | {"as_expected": r.as_expected} for rs in by_family.values() for r in rs],
        "timeout_s": args.timeout, "mem_cap_gb": args.mem_cap_gb, "as_limit_gb": args.as_limit_gb, "repeats": args.repeats,
        "all_as_expected": ok,
    }, argv=sys.argv if argv is None else [sys.argv[0], *argv])
    return 0 if ok else 1


def _clean_template(t: Path) -> None:
    """Remove what the set-up left behind (counted in its rows), so each case starts clean."""
    for p in sorted(t.rglob("*"), key=lambda p: -len(p.parts)):
        if is_junk(p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


if __name__ == "__main__":
    sys.exit(main())
