"""Another process holding a resnet-xray lock, for tests of the second writer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def held_elsewhere(path: Path, lock: str = "output_lock", **kwargs: object) -> Iterator[subprocess.Popen]:
    """A child process holding ``lock(path, **kwargs)`` from :mod:`resnet_xray.locks` until the block ends."""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    code = (f"import sys, time\nfrom resnet_xray.locks import {lock}\n"
            f"with {lock}(sys.argv[1]{args}):\n    print('held', flush=True)\n    time.sleep(120)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
