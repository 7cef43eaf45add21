"""Peak memory and time of `classify` on hostile files, against the bundled cat (issue 12's memory goal).

Each input runs in a fresh process:
    resnet-xray classify FILE --arch resnet18 --weights random --json
and its own peak RSS comes from ``os.wait4`` (the rusage of that one child; RUSAGE_CHILDREN would
keep the largest of all children). Linux starts a child's peak RSS at its parent's RSS at fork
time, so this process stays small: it imports neither PIL nor torch, and a separate process
writes the hostile files. Goals: peak RSS <= 1.2x the cat's, wall time <= 10 s, exit 0
or 2 (a one-line refusal), never a traceback. The hostile files are written to a temp folder:
long thin PNGs (10000x2, 2x10000, 100000x2, 2x100000), a sparse 1 GB ``x.jpg``, a FIFO, a PNG
decompression bomb (20000x20000, 400 MB of pixels in a few hundred KB), a 9000x9000 JPEG (just under
Pillow's bomb limit), a truncated JPEG, text named ``x.png`` and an empty file.

Usage: python benchmarks/bench_hostile.py [--repeats 1] [--timeout 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import cpu_name  # noqa: E402  (the one CPU description the benchmarks print; stdlib only)

RSS_GOAL, TIME_GOAL_S = 1.2, 10.0


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


def thin_png(path: Path, w: int, h: int) -> None:
    from PIL import Image

    Image.new("RGB", (w, h), (200, 120, 40)).save(path)


def make_inputs(d: Path) -> dict[str, Path]:
    """name -> file, the cat first (run in its own process: see the module docstring)."""
    from PIL import Image

    from resnet_xray.image import bundled_cat

    files: dict[str, Path] = {"cat (bundled)": bundled_cat()}
    for w, h in ((10000, 2), (2, 10000), (100000, 2), (2, 100000)):
        thin_png(p := d / f"thin_{w}x{h}.png", w, h)
        files[f"{w}x{h} PNG"] = p
    sparse = d / "x.jpg"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)
    files["sparse 1 GB x.jpg"] = sparse
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo := d / "fifo.jpg")
        files["FIFO fifo.jpg"] = fifo
    png_bomb(bomb := d / "bomb.png")
    files["PNG bomb 20000x20000"] = bomb
    big = d / "big.jpg"
    Image.new("RGB", (9000, 9000), (90, 160, 30)).save(big, quality=50)
    files["9000x9000 JPEG"] = big
    buf = io.BytesIO()
    Image.open(bundled_cat()).convert("RGB").save(buf, "JPEG")
    (trunc := d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    files["truncated JPEG"] = trunc
    (text := d / "notes.png").write_text("this is not a picture\n")
    files["text as x.png"] = text
    (empty := d / "empty.jpg").write_bytes(b"")
    files["empty file"] = empty
    return files


@dataclass
class Run:
    rc: int | None  # None: killed at the timeout
    rss_mb: float
    wall_s: float
    message: str  # the last stderr line (a refusal), or ""


def classify_once(path: Path, out: Path, timeout: float) -> Run:
    argv = [sys.executable, "-m", "resnet_xray", "classify", str(path), "--arch", "resnet18", "--weights", "random", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
        t = time.perf_counter()
        pid = os.posix_spawn(sys.executable, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, so.fileno(), 1),
                                                                       (os.POSIX_SPAWN_DUP2, se.fileno(), 2)])
        killed = False
        while True:
            done, status, ru = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - t > timeout and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        wall = time.perf_counter() - t
    err = (out / "stderr").read_text(errors="replace").strip().splitlines()
    rc = None if killed else os.waitstatus_to_exitcode(status)
    if err and any("Traceback" in line for line in err):
        rc = rc if rc not in (0, 2) else -999  # a traceback never counts as a clean exit
    return Run(rc, ru.ru_maxrss / 1024, wall, err[-1][:90] if err else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="runs per input: max RSS and median time are reported")
    ap.add_argument("--timeout", type=float, default=60.0, help="kill a run after this many seconds")
    ap.add_argument("--keep", type=Path, default=None, help="write the hostile files here and keep them")
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)  # internal: write the files, print them
    args = ap.parse_args()
    if args.make:
        import json

        print(json.dumps({k: str(v) for k, v in make_inputs(args.make).items()}))
        return
    d = args.keep or Path(tempfile.mkdtemp(prefix="hostile-"))
    d.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    try:
        import json
        import subprocess

        made = subprocess.run([sys.executable, __file__, "--make", str(d)], check=True, capture_output=True, text=True)
        files = {k: Path(v) for k, v in json.loads(made.stdout).items()}
        results: dict[str, list[Run]] = {name: [] for name in files}
        for _ in range(args.repeats):  # round-robin, so a burst of load hits every input alike
            for name, path in files.items():
                results[name].append(classify_once(path, d, args.timeout))
    finally:
        if args.keep is None:
            shutil.rmtree(d, ignore_errors=True)
    load1 = os.getloadavg()

    cat = results["cat (bundled)"]
    cat_rss, cat_wall = max(r.rss_mb for r in cat), statistics.median(r.wall_s for r in cat)
    print(f"CPU: {cpu_name()}; load average {load0[0]:.1f} before, {load1[0]:.1f} after (shared machine)")
    print(f"command: resnet-xray classify FILE --arch resnet18 --weights random --json; {args.repeats} run(s) each, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"goals: peak RSS <= {RSS_GOAL}x the cat's, wall <= {TIME_GOAL_S:.0f} s, exit 0 or 2 without a traceback\n")
    head = f"{'input':<22} {'exit':>4} {'peak RSS MB':>11} {'x cat':>6} {'wall s':>7} {'x cat':>6}  {'RSS':<4} {'time':<4} message"
    print(head)
    print("-" * len(head))
    met_all = True
    for name, runs in results.items():
        rss, wall = max(r.rss_mb for r in runs), statistics.median(r.wall_s for r in runs)
        rcs = {r.rc for r in runs}
        ok_rc = rcs <= {0, 2}
        ok_rss, ok_time = rss <= RSS_GOAL * cat_rss, wall <= TIME_GOAL_S
        met_all &= ok_rc and ok_rss and ok_time
        rc = "kill" if None in rcs else ("TB" if -999 in rcs else "/".join(map(str, sorted(rcs))))
        msg = next((r.message for r in runs if r.rc == 2), "")
        print(f"{name:<22} {rc:>4} {rss:>11.0f} {rss / cat_rss:>6.2f} {wall:>7.2f} {wall / cat_wall:>6.2f}  "
              f"{'met' if ok_rss else 'NOT':<4} {'met' if ok_time else 'NOT':<4} {msg}")
    print(f"\nall goals met: {'yes' if met_all else 'NO'}")
    sys.exit(0 if met_all else 1)


if __name__ == "__main__":
    main()
