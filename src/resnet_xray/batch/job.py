"""``classify --out``: a whole collection into a results file, resumable, at the engine's throughput.

The job takes the output's lock, reads which paths the output already holds, streams the
inputs past them in batches, and appends each batch's records whole. Killed at any point and
run again, it finishes the job with every image recorded exactly once. Ctrl-C stops it between
batches, with what was written valid.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from itertools import chain
from typing import Any

from ..errors import XrayError
from ..locks import file_lock
from ..progress import progress
from ..provenance import WeightsInfo
from .decode import decoded_batches
from .engines import checked, model_source, open_engine, takes_pixels
from .inputs import Item, count_inputs, iter_inputs
from .on_ray import require_ray, run_on_ray
from .options import BatchOptions, BatchResult
from .records import Settings, check_out, discard_empty, open_records, record, topk_lists


class Pending:
    """The inputs the output does not hold yet, in batches; a path listed twice is classified once."""

    def __init__(self, items: Iterable[Item], done: set[str], size: int):
        self.items, self.done, self.size = items, done, size
        self.already = 0  # inputs the output held before this run

    def __iter__(self) -> Iterator[list[tuple[str, str | None]]]:
        chunk: list[tuple[str, str | None]] = []
        for it in self.items:
            if it.path in self.done:
                self.already += 1
                continue
            self.done.add(it.path)
            chunk.append((it.path, it.error))
            if len(chunk) == self.size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def classify_to(model: Any, images: Iterable[str | os.PathLike], out: str | os.PathLike, options: BatchOptions,
                *, manifest: str | os.PathLike | None = None, ray: str | None = None) -> BatchResult:
    """Classify every input into ``out`` (``.jsonl`` or ``.parquet``), resuming what it holds.

    ``model``: a deployed file (``.xml`` / ``.onnx``), a LoadedModel, a ``(module, meta)`` pair or a
    weights path. ``ray``: a Ray address (``"local"`` starts a local instance) to run the job as a
    Ray Data pipeline instead. The output is locked for the run: a second run on it gets exit 2.
    """
    opts, out = options, check_out(out)
    if ray is not None:
        require_ray()  # says how to install it before any model loads
    images = list(images)
    t0 = time.perf_counter()
    with file_lock(out, "--out"):  # before the model loads: a second run stops at once
        source, meta, ident = model_source(model, opts.threads)
        settings = Settings(ident, opts.topk, meta.preprocessing.to_dict(), len(meta.class_names))
        writer, done = open_records(out, settings, overwrite=opts.overwrite)
        held = len(done)
        pending = Pending(iter_inputs(images, manifest), done, opts.batch_size)
        run = _Run(writer, ident, meta.class_names, opts.topk)
        try:
            if ray is not None:
                run.engine = run_on_ray(source, meta.preprocessing, pending, run, opts, ray)
            else:
                _run_here(source, meta.preprocessing, pending, run, opts, images, manifest, held)
        except KeyboardInterrupt:
            print(f"classify: stopped; {run.written} record(s) written to {out} this run, all whole; "
                  "run the same command again to finish", file=sys.stderr)
            raise
        finally:
            writer.close()
    if run.written == 0 and pending.already == 0:
        if not held:  # nothing was there and nothing came: leave no settings file behind either
            discard_empty(out)
        raise XrayError(f"no image files found in: {' '.join(map(str, images + ([manifest] if manifest else [])))}")
    ready = run.ready or time.perf_counter()
    return BatchResult(out, run.written, run.errors, pending.already, time.perf_counter() - ready, run.engine, ident,
                       WeightsInfo.of(meta), ray, ready - t0, run.steady_img_s())


class _Run:
    """Records out of logits, and what this run wrote."""

    def __init__(self, writer: Any, ident: str, class_names: list[str], topk: int):
        self.writer, self.ident, self.class_names, self.topk = writer, ident, class_names, topk
        self.written = self.errors = 0
        self.engine = ""
        self.ready: float | None = None  # perf_counter when the engine (or Ray) was ready to classify
        self.first: tuple[float, int] | None = None  # (perf_counter, records) when the first batch was written
        self.last = 0.0  # perf_counter of the latest write

    def steady_img_s(self) -> float | None:
        """Records/s after the first batch: the pace of a long job, without the pipeline's start (None: one batch)."""
        if self.first is None or self.last <= self.first[0]:
            return None
        return (self.written - self.first[1]) / (self.last - self.first[0])

    def write(self, paths: list[str], tops: list[list[dict[str, Any]]], errors: list[tuple[str, str]]) -> int:
        recs = [record(p, self.ident, top) for p, top in zip(paths, tops)]
        recs += [record(p, self.ident, error=why) for p, why in errors]
        self.writer.append(recs)
        self.written += len(recs)
        self.errors += len(errors)
        self.last = time.perf_counter()
        self.first = self.first or (self.last, self.written)
        return len(recs)


def _run_here(source: Any, pre: Any, pending: Pending, run: _Run, opts: BatchOptions, images: list, manifest: Any,
              held: int) -> None:
    """The single-machine loop: decode (in workers) -> engine -> append, in order.

    The engine runs in a thread of its own, one batch ahead: while it infers batch N, this thread
    writes batch N-1's records and takes batch N+1 from the decoders, so the engine never waits
    on either (the engines release the GIL while they infer).
    """
    shown = opts.shows_bar()
    total = max(0, count_inputs(images, manifest) - held) if shown else None  # counted only for the bar's ETA
    pixels = takes_pixels(source)
    batches = decoded_batches(pending, pre, opts.workers, pixels)
    with closing(batches), progress("classify", total=total, quiet=not shown) as bar:
        first = next(batches, None)  # workers fork before the engine starts its threads
        if first is None:
            run.engine = "none (nothing left to classify)"
            return
        engine = open_engine(source, pre if pixels else None)
        run.engine, run.ready = engine.name, time.perf_counter()

        def infer(d: Any) -> Any:
            return checked(engine, d.x, d.paths, run.ident) if d.paths else None

        def write(d: Any, logits: Future) -> None:
            got = logits.result()
            n = run.write(d.paths, topk_lists(got, run.class_names, run.topk) if got is not None else [], d.errors)
            bar.stage(f"{run.written / max(time.perf_counter() - run.ready, 1e-9):.1f} img/s", steps=n)

        with ThreadPoolExecutor(1, thread_name_prefix="classify-engine") as ahead:
            prev = None
            for d in chain([first], batches):
                nxt = (d, ahead.submit(infer, d))
                if prev is not None:
                    write(*prev)
                prev = nxt
            write(*prev)
