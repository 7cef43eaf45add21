"""What the explorer holds: the models named on the command line, the photos, and each (model, photo)'s activations.

Requests name a model by its index and a photo by its key, never by a path: the only
files a running explorer reads are the ones its command line gave. Every computation
runs under one lock, because the trace engine keeps per-model state and two passes at
once on two shared cores would only be slower; what it produces is cached (the trace of
a photo keeps every op's output, within ``cache_mb``), so a click on a traced layer is a
cache read and an image encode.
"""

from __future__ import annotations

import itertools
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..compare import Equivalence, compare
from ..deploy.runtime import cam_runner
from ..deploy.timing import TimingStats, time_models
from ..dissect import LayerRow, layer_table
from ..errors import XrayError
from ..image import Preprocessing, bundled_cat, load_image
from ..model import LoadedModel
from ..options import at_least, option, within
from ..provenance import WeightsInfo
from ..tracing import Trace, TraceOptions, layer_names, trace_model
from ..tracing.divergence import LayerComparison, compare_maps
from ..tracing.gradflow import NetGrad, measure_network
from ..viz.cam import CAM_STAGES, CamOptions, CamResult, check_class_index, compute_cams
from .opclock import op_times
from .pictures import cam_heat

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PHOTOS = 12  # uploads kept at once (the bundled cat stays); the oldest goes first
STAGES = CAM_STAGES  # where a CAM can be taken


@dataclass
class ExploreOptions:
    host: str = option("127.0.0.1", "interface to listen on; any other than 127.0.0.1/localhost/::1 is reachable from other machines")
    port: int = option(8765, "TCP port (0: any free port)")
    browser: bool = option(True, "open the page in the default web browser")
    topk: int = option(5, "labels listed for each photo")
    max_upload_mb: int = option(20, "largest photo accepted, in MB; a larger upload gets HTTP 413")
    cache_mb: int = option(640, "memory for the kept activations of recent (model, photo) pairs, in MiB (ResNet-50 keeps 150 per photo)")

    def __post_init__(self) -> None:
        within("port", self.port, 0, 65535)
        at_least("topk", self.topk, 1)
        within("max_upload_mb", self.max_upload_mb, 1, 256)  # 256 MiB: the most any image file may be (image.MAX_FILE_BYTES)
        at_least("cache_mb", self.cache_mb, 0)

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS


@dataclass
class Slot:
    """One model of the session: the main one, a --compare model, or a deployed --model artefact."""

    key: int
    role: str  # main | compare | artefact
    model: LoadedModel
    rows: dict[str, LayerRow] = field(default_factory=dict)  # the anatomy at the model's crop (none for an artefact)
    order: list[str] = field(default_factory=list)  # traced op names, in execution order

    @property
    def deployed(self) -> bool:
        return self.role == "artefact"

    @property
    def weights(self) -> WeightsInfo:
        return self.model.weights


@dataclass
class Prepared:
    """A photo through one preprocessing, each step kept for the page."""

    resized: Image.Image  # after Resize (and the cut of an extreme aspect ratio before it)
    crop_box: tuple[int, int, int]  # left, top, side of the centre crop in ``resized``
    x: torch.Tensor  # 1 x 3 x S x S: what the network sees

    @classmethod
    def of(cls, image: Image.Image, pp: Preprocessing) -> Prepared:
        bounded, resize, crop, to_tensor, normalize = pp.transform().transforms  # the pipeline's own steps
        resized = resize(bounded(image))
        rw, rh = resized.size
        left, top = int(round((rw - pp.crop) / 2.0)), int(round((rh - pp.crop) / 2.0))  # as CenterCrop places it
        return cls(resized, (left, top, pp.crop), normalize(to_tensor(crop(resized))).unsqueeze(0))


@dataclass
class Photo:
    key: str
    name: str  # for people only: never used as a path
    size: tuple[int, int]  # of the decoded file
    thumb: Image.Image  # at most 512 px on its long side, for the page
    prepared: dict[Preprocessing, Prepared] = field(default_factory=dict)


@dataclass
class Run:
    """One model on one photo: the trace with every op's output kept, and the class probabilities."""

    x: torch.Tensor
    probs: torch.Tensor  # softmax of the logits, one row
    logits: torch.Tensor
    trace: Trace | None  # None for a deployed artefact: it has no per-layer outputs
    seconds: float

    @property
    def nbytes(self) -> int:
        return 0 if self.trace is None else sum(t.numel() * t.element_size() for t in self.trace.maps.values())

    def fmap(self, name: str) -> torch.Tensor:
        if self.trace is None or name not in self.trace.maps:
            raise KeyError(name)
        return self.trace.maps[name][0]


def display_name(name: str | None) -> str:
    """An upload's file name as the page shows it: the last path part, printable, at most 80 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return (base or "upload")[:80]


class Workspace:
    def __init__(self, models: list[LoadedModel], artefacts: list[LoadedModel], options: ExploreOptions | None = None,
                 tables: list[dict[str, Any]] | None = None):
        self.options = options or ExploreOptions()
        self.tables = tables or []  # per-layer tables of deployed models (``layers --json``), shown as they are
        roles = ["main"] + ["compare"] * (len(models) - 1)
        self.slots = [self._slot(i, role, m) for i, (role, m) in enumerate(zip(roles, models))]
        self.slots += [Slot(len(self.slots) + i, "artefact", a) for i, a in enumerate(artefacts)]
        self.lock = threading.RLock()
        self.photos: OrderedDict[str, Photo] = OrderedDict()
        self._runs: OrderedDict[tuple[int, str], Run] = OrderedDict()
        self._stats: dict[tuple[int, str], Run] = {}  # statistics-only traces, until the full one replaces them
        self._cams: OrderedDict[tuple, CamResult] = OrderedDict()
        self._cam_runners: dict[int, Callable[[Any], Any] | None] = {}  # an artefact's cam output, opened on first use
        self._grads: dict[tuple[int, str], NetGrad] = {}
        self._times: dict[int, dict[str, float]] = {}
        self._latency: dict[int, TimingStats] = {}
        self._ids = itertools.count(1)
        self._tmp = tempfile.TemporaryDirectory(prefix="xray-explore-")
        self._keep("cat", "chelsea.png (the bundled cat)", load_image(bundled_cat()))

    @staticmethod
    def _slot(key: int, role: str, m: LoadedModel) -> Slot:
        rows = layer_table(m.module, m.meta.preprocessing.crop)
        return Slot(key, role, m, {r.name: r for r in rows}, layer_names(m.module))

    def slot(self, key: int) -> Slot:
        if not 0 <= key < len(self.slots):
            raise KeyError(key)
        return self.slots[key]

    def photo(self, key: str) -> Photo:
        return self.photos[key]

    # --- photos ---

    def _keep(self, key: str, name: str, image: Image.Image) -> Photo:
        thumb = image.copy()
        thumb.thumbnail((512, 512))
        photo = Photo(key, name, image.size, thumb)
        for s in self.slots:
            pp = s.model.meta.preprocessing
            if pp not in photo.prepared:
                photo.prepared[pp] = Prepared.of(image, pp)
        with self.lock:
            self.photos[photo.key] = photo
            uploads = [k for k in self.photos if k != "cat"]
            for old in uploads[: max(0, len(uploads) - MAX_PHOTOS)]:
                self.forget(old)
        return photo

    def add_photo(self, data: bytes, name: str | None) -> Photo:
        """Validate ``data`` with the project's image loader and keep it; XrayError names the upload, not a temp file."""
        shown = display_name(name)
        key = f"p{next(self._ids)}"
        path = Path(self._tmp.name) / key
        path.write_bytes(data)
        try:
            image = load_image(path)
        except XrayError as e:
            raise XrayError(str(e).replace(str(path), shown)) from None
        finally:
            path.unlink(missing_ok=True)
        return self._keep(key, shown, image)

    def forget(self, key: str) -> None:
        with self.lock:
            self.photos.pop(key, None)
            for k in [k for k in self._runs if k[1] == key]:
                del self._runs[k]
            for k in [k for k in self._stats if k[1] == key]:
                del self._stats[k]
            for k in [k for k in self._cams if k[1] == key]:
                del self._cams[k]
            for k in [k for k in self._grads if k[1] == key]:
                del self._grads[k]

    def prepared(self, slot: Slot, photo: Photo) -> Prepared:
        return photo.prepared[slot.model.meta.preprocessing]

    # --- computations, each cached ---

    def warm(self) -> None:
        """Everything the first page asks for on the bundled cat (trace, op times, gradient flow, Grad-CAM), computed once."""
        cat = self.photos["cat"]
        for s in self.slots:
            run = self.run(s, cat)
            if not s.deployed:
                self.times(s)
                self.gradflow(s, cat)
                self.cam(s, cat, int(run.probs.argmax()), STAGES[-1])

    def _trace(self, slot: Slot, photo: Photo, keep: bool) -> Run:
        x = self.prepared(slot, photo).x
        t0 = time.perf_counter()
        if slot.deployed:
            with torch.inference_mode():
                logits, tr = slot.model.module(x), None
        else:
            tr = trace_model(slot.model.module, x, TraceOptions(keep_maps=set(slot.order) if keep else None))
            logits = tr.logits
        return Run(x, torch.softmax(logits[0].float(), 0), logits, tr, time.perf_counter() - t0)

    def run(self, slot: Slot, photo: Photo) -> Run:
        """The trace of ``photo`` through ``slot`` with every op's output kept, from the cache when it is there."""
        key = (slot.key, photo.key)
        hit = self._runs.get(key)  # a cached run is read without the lock: a click must not wait behind a Grad-CAM
        if hit is not None:
            return hit
        with self.lock:
            hit = self._runs.get(key)  # traced by another request while this one waited
            if hit is None:
                hit = self._runs[key] = self._trace(slot, photo, keep=True)
                self._stats.pop(key, None)
                self._trim()
            return hit

    def summary(self, slot: Slot, photo: Photo) -> Run:
        """The top-k and every op's statistics, as soon as possible.

        Keeping every op's output costs a trace about half as much again, so a new photo's
        layer map comes from a statistics-only trace; :meth:`prefetch` makes the full one for
        the clicks that come next, once the layer map is sent.
        """
        key = (slot.key, photo.key)
        hit = self._runs.get(key) or self._stats.get(key)
        if hit is not None:
            return hit
        with self.lock:
            hit = self._runs.get(key) or self._stats.get(key)
            if hit is None:
                hit = self._stats[key] = self._trace(slot, photo, keep=slot.deployed)
            return hit

    def prefetch(self, slot: Slot, photo: Photo) -> None:
        """The full run of a photo whose layer map was just sent, so that its first click finds it ready."""
        if slot.deployed or (slot.key, photo.key) in self._runs:
            return
        try:
            if photo.key in self.photos:  # not already dropped for newer uploads
                self.run(slot, photo)
        except Exception:  # noqa: BLE001 - a click that needs it will compute it again and report what fails
            pass

    def _trim(self) -> None:
        """Drop the oldest runs past ``cache_mb`` (the newest always stays)."""
        budget = self.options.cache_mb * 2**20
        while len(self._runs) > 1 and sum(r.nbytes for r in self._runs.values()) > budget:
            self._runs.popitem(last=False)

    def cam(self, slot: Slot, photo: Photo, class_index: int, layer: str) -> CamResult:
        """Grad-CAM on ``layer`` for a PyTorch model; an artefact's own layer4 CAM, whatever ``layer``."""
        if layer not in STAGES:
            raise XrayError(f"layer {layer!r}: choose one of {', '.join(STAGES)}")
        key = (slot.key, photo.key, class_index, STAGES[-1] if slot.deployed else layer)
        with self.lock:
            hit = self._cams.get(key)
            if hit is None:
                if slot.deployed:
                    hit = self._exported_cam(slot, photo, class_index)
                else:
                    x = self.prepared(slot, photo).x
                    opts = CamOptions(class_index=class_index, layer=layer, methods=("gradcam",))
                    hit = compute_cams(slot.model.module, x, slot.model.class_names, opts)
                self._cams[key] = hit
                while len(self._cams) > 32:
                    self._cams.popitem(last=False)
            return hit

    def has_cam(self, slot: Slot) -> bool:
        """Every PyTorch model has a CAM; an artefact only when it was exported with its cam output."""
        if not slot.deployed:
            return True
        with self.lock:
            if slot.key not in self._cam_runners:
                self._cam_runners[slot.key] = cam_runner(slot.model.module.path)
            return self._cam_runners[slot.key] is not None

    def _exported_cam(self, slot: Slot, photo: Photo, class_index: int) -> CamResult:
        """The map the file computes from its own layer4 output, drawn as Grad-CAM draws its own (for an FP32 file, the
        same map as Grad-CAM on layer4: its weights are fc's over h * w)."""
        if not self.has_cam(slot):
            raise XrayError(f"model {slot.key}: {slot.model.module.path} has no cam output; export it with --cam-output")
        run = self.run(slot, photo)
        idx = check_class_index(class_index, run.probs.numel())
        raw = self._cam_runners[slot.key](run.x.numpy())[0, idx]
        names = slot.model.class_names
        label = names[idx] if idx < len(names) else f"class_{idx}"
        heat = cam_heat(raw, run.x.shape[-1])
        return CamResult(STAGES[-1], idx, label, float(run.probs[idx]), idx == int(run.probs.argmax()), {"cam": heat})

    def gradflow(self, slot: Slot, photo: Photo) -> NetGrad:
        """One backward pass from the top-1 class: how each block splits the gradient (shortcut vs residual)."""
        key = (slot.key, photo.key)
        with self.lock:
            if key not in self._grads:
                run = self.run(slot, photo)
                y = run.probs.argmax().reshape(1)
                self._grads[key] = measure_network(slot.model.module, run.x, y, plain=False, regime="running")
                slot.model.module.eval()
            return self._grads[key]

    def times(self, slot: Slot) -> dict[str, float]:
        """Each op's share of one forward pass, timed once per model on the bundled cat."""
        with self.lock:
            if slot.key not in self._times:
                self._times[slot.key] = op_times(slot.model.module, self.prepared(slot, self.photos["cat"]).x)
            return self._times[slot.key]

    def latency(self) -> dict[int, TimingStats]:
        """Each model's forward pass on one image, timed round-robin in this process (once per session)."""
        with self.lock:
            if not self._latency:
                cat = self.photos["cat"]
                runners: dict[int, Callable[[], Any]] = {}
                for s in self.slots:
                    x = self.prepared(s, cat).x
                    runners[s.key] = (lambda m, x: lambda: _infer(m, x))(s.model.module, x)
                self._latency = time_models(runners, warmup=1, repeats=6, rounds=3)
            return self._latency

    def agreement(self, photo: Photo) -> list[Equivalence | None]:
        """Each model's logits against the main model's on ``photo`` (None for the main model itself)."""
        ref = self.run(self.slots[0], photo)
        return [None] + [compare(ref.logits, self.run(s, photo).logits, names=("main", f"model {s.key}"))
                         for s in self.slots[1:]]

    def layers_against_main(self, slot: Slot, photo: Photo) -> LayerComparison | None:
        """``slot``'s ops against the main model's, layer by layer (None for an artefact: outputs only)."""
        if slot.deployed or slot.key == 0:
            return None
        a, b = self.run(self.slots[0], photo), self.run(slot, photo)
        return compare_maps(a.trace, b.trace, names=("main", f"model {slot.key}"))


def _infer(module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


__all__ = ["ExploreOptions", "LOCAL_HOSTS", "Photo", "Prepared", "Run", "STAGES", "Slot", "Workspace", "display_name"]
