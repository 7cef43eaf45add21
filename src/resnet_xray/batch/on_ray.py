"""``classify --out ... --ray [ADDRESS]``: the same job as a Ray Data pipeline, for more than one machine.

The paths the output does not hold yet become a dataset; CPU tasks read and preprocess them
(:func:`~resnet_xray.batch.decode.decode_batch`, as the workers on one machine do); an actor pool
runs the model, one engine per actor (``map_batches`` with a callable class), in the same
throughput mode as on one machine; the driver appends the same records to the same output, so
resume and exactly-once work as they do there. Ray schedules everything: there is no scheduler here.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from ..errors import XrayError
from ..image import Preprocessing
from ..progress import progress
from .decode import decode_batch
from .engines import ModelSource, checked, open_engine, takes_pixels
from .records import labelled, topk_arrays

RAY_PIN = "ray[data]==2.60.0"  # as pyproject's ray extra
INSTALL_HINT = f"pip install 'resnet-xray[ray]' (or: pip install '{RAY_PIN}')"


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra's data part, which plain `pip install ray` lacks
    except ImportError:
        raise XrayError(f"--ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def run_on_ray(source: ModelSource, pre: Preprocessing, pending: Any, run: Any, opts: Any, address: str) -> str:
    """Run the pending batches through Ray Data and write their records with ``run``; returns the engine's name.

    ``address``: ``"local"`` starts a Ray instance on this machine (stopped again at the end); anything
    else is passed to ``ray.init`` (``auto``, ``ray://HOST:10001``, ``HOST:6379``). A process that has
    called ``ray.init`` itself keeps its own connection.
    """
    ray = require_ray()
    started = _connect(ray, address)
    try:
        rows = [{"path": p, "known": why or ""} for chunk in pending for p, why in chunk]
        if not rows:
            return "ray (nothing left to classify)"
        run.ready = time.perf_counter()  # connected: from here on Ray starts the actors and classifies
        nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
        blocks = max(1, min(len(rows) // opts.batch_size, 4 * int(ray.cluster_resources().get("CPU", 1))))  # work for every CPU
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # a decode pool of another size than the actor pool keeps Ray from fusing decoding into the actors,
        # where it would run one image at a time beside the model instead of in parallel tasks
        decoders = ray.data.TaskPoolStrategy(size=max(nodes + 1, cpus - nodes))
        pixels = takes_pixels(source)
        ds = ds.map_batches(_decode, fn_kwargs={"pre": pre, "pixels": pixels}, batch_size=opts.batch_size, batch_format="numpy",
                            num_cpus=1, compute=decoders)
        ds = ds.map_batches(Classifier, fn_constructor_args=(source, min(opts.topk, len(run.class_names)), pre if pixels else None),
                            batch_size=opts.batch_size,
                            batch_format="numpy", num_cpus=1, compute=ray.data.ActorPoolStrategy(size=nodes))
        with progress("classify (ray)", total=len(rows), quiet=not opts.shows_bar()) as bar:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ok = b["error"] == ""
                paths = [str(p) for p in b["path"][ok]]
                tops = labelled(b["index"][ok], b["prob"][ok], run.class_names)
                n = run.write(paths, tops, [(str(p), str(e)) for p, e in zip(b["path"][~ok], b["error"][~ok])])
                bar.stage(f"{run.written / max(time.perf_counter() - run.ready, 1e-9):.1f} img/s", steps=n)
        return f"ray data ({nodes} actor(s), {Classifier.engine_name(source)})"
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str) -> bool:
    """Connect to (or start) Ray; True when this call started it and must stop it."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the records and our own bar say how far it got
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if ray.is_initialized():
        return False
    try:
        if address in ("", "local"):
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise XrayError(f"--ray {address}: cannot connect ({str(e).splitlines()[0][:160]}); "
                        "start a cluster with `ray start --head`, or give no address for a local instance") from None
    return True


def _decode(batch: dict[str, np.ndarray], pre: Preprocessing, pixels: bool = False) -> dict[str, np.ndarray]:
    """A CPU task: read and preprocess one batch; unreadable files keep a row of zeros and their reason."""
    d = decode_batch([(str(p), str(k) or None) for p, k in zip(batch["path"], batch["known"])], pre, pixels)
    bad = np.zeros((len(d.errors), *d.x.shape[1:]), d.x.dtype)
    return {"path": np.array(d.paths + [p for p, _ in d.errors], dtype=object),
            "x": np.concatenate([d.x, bad]) if len(bad) else d.x,
            "error": np.array([""] * len(d.paths) + [why for _, why in d.errors], dtype=object)}


class Classifier:
    """One actor of the pool: the engine, built once in the actor, over batches of decoded images."""

    def __init__(self, source: ModelSource, topk: int, pixels: Preprocessing | None = None):  # topk: at most the class count
        self.engine, self.topk, self.ident = open_engine(source, pixels), topk, source.path or "pytorch model"
        self.dtype = np.uint8 if pixels is not None else np.float32

    @staticmethod
    def engine_name(source: ModelSource) -> str:
        names = {"openvino": "openvino throughput, uint8 input", "onnxruntime": "onnxruntime batched"}
        return names.get(source.engine, "pytorch batched")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        n = len(batch["path"])
        index = np.full((n, self.topk), -1, np.int64)
        prob = np.zeros((n, self.topk), np.float64)
        if ok.any():
            logits = checked(self.engine, np.asarray(batch["x"][ok], self.dtype), [str(p) for p in batch["path"][ok]], self.ident)
            index[ok], prob[ok] = topk_arrays(logits, self.topk)
        return {"path": batch["path"], "error": batch["error"], "index": index, "prob": prob}
