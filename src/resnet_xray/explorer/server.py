"""The explorer's web app (FastAPI on uvicorn): the page, its JSON documents and its pictures.

The server is an attack surface, so: it listens on 127.0.0.1 unless told otherwise and then
answers only to local host names (no DNS rebinding); uploads are capped before they are
read whole (HTTP 413) and validated by the project's image loader (HTTP 400 with the CLI's
one-line message); models and photos are named by index and key, never by path; every
response carries a strict Content-Security-Policy; a POST needs a header a cross-site form
cannot send; and no traceback ever leaves the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket
import sys
import threading
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import XrayError
from ..provenance import WeightsInfo
from ..viz.kernels import find_conv
from . import pictures, views
from .workspace import LOCAL_HOSTS, MAX_PHOTOS, ExploreOptions, Photo, Slot, Workspace, display_name

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
POST_HEADER = "x-explorer"  # a cross-site <form> cannot set it, and a script from another origin needs a preflight we refuse
log = logging.getLogger("resnet_xray.explorer")


def _png(data: bytes) -> Response:
    return Response(content=data, media_type="image/png")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def too_large(limit: int) -> JSONResponse:
    return _error(413, f"upload refused: more than the {limit / 1e6:g} MB a photo may be here; downscale or recompress it")


def _lookup(ws: Workspace, m: int, p: str | None = None) -> tuple[Slot, Photo | None]:
    try:
        return ws.slot(m), (ws.photo(p) if p is not None else None)
    except KeyError:
        raise HTTPException(404, f"no model {m}" if not 0 <= m < len(ws.slots) else f"no photo {p!r} (the latest {MAX_PHOTOS} uploads are kept)") from None


def _torch_slot(ws: Workspace, m: int, p: str | None = None) -> tuple[Slot, Photo | None]:
    slot, photo = _lookup(ws, m, p)
    if slot.deployed:
        raise HTTPException(404, f"model {m} is a compiled artefact: it has no layers to show")
    return slot, photo


def _layer(slot: Slot, name: str) -> str:
    if name not in slot.rows:
        raise HTTPException(404, f"no layer {name!r} in model {slot.key}")
    return name


def _install_guards(app: FastAPI, options: ExploreOptions) -> None:
    hosts = [*LOCAL_HOSTS, "[::1]"] if options.local else ["*"]
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        if request.method == "POST" and request.headers.get(POST_HEADER) != "1":
            response = _error(403, f"a POST needs the {POST_HEADER} header (the page sends it)")
        else:
            response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(XrayError)
    async def user_error(request: Request, e: XrayError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("explore: %s %s failed", request.method, request.url.path)  # the traceback stays in the terminal
        return _error(500, "internal error: the explorer's terminal has the details")


def _page_routes(app: FastAPI, ws: Workspace) -> None:
    index = (STATIC / "index.html").read_bytes()
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    @app.get("/")
    def page() -> Response:
        return Response(content=index, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    def asset(name: str) -> Response:
        if name not in assets:  # a fixed list: no path ever reaches the file system
            raise HTTPException(404, "no such file")
        return Response(content=assets[name], media_type=ASSETS[name])

    @app.get("/api/session")
    def session() -> dict[str, Any]:
        return views.session_doc(ws)

    @app.get("/api/layers")
    def layer_tables() -> dict[str, Any]:
        return views.tables_doc(ws)

    @app.post("/api/photos")
    async def upload(request: Request, name: str = "") -> Any:
        limit = ws.options.max_upload_mb * 10**6
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large(limit)  # refused before a byte of the body is read
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return too_large(limit)
        if not body:
            raise XrayError(f"{display_name(name)}: empty file (0 bytes)")
        photo = await run_in_threadpool(ws.add_photo, bytes(body), name)
        return {"key": photo.key, "name": photo.name, "size": list(photo.size)}

    @app.get("/api/photos/{p}/thumb.png")
    def thumb(p: str) -> Response:
        _, photo = _lookup(ws, 0, p)
        return _png(pictures.image_png(photo.thumb))


def _model_routes(app: FastAPI, ws: Workspace) -> None:
    @app.get("/api/m/{m}/p/{p}/overview")
    def overview(m: int, p: str, after: BackgroundTasks) -> dict[str, Any]:
        slot, photo = _lookup(ws, m, p)
        doc = views.overview_doc(ws, slot, photo)
        # the full trace runs once the layer map is sent: started sooner, it competes with the answer for the cores
        after.add_task(ws.prefetch, slot, photo)
        return doc

    @app.get("/api/m/{m}/p/{p}/input")
    def input_steps(m: int, p: str) -> dict[str, Any]:
        slot, photo = _lookup(ws, m, p)
        return views.input_doc(ws, slot, photo)

    @app.get("/api/m/{m}/p/{p}/input/{step}.png")
    def input_png(m: int, p: str, step: str) -> Response:
        slot, photo = _lookup(ws, m, p)
        prep = ws.prepared(slot, photo)
        if step == "resized":
            return _png(pictures.image_png(prep.resized))
        if step == "crop":
            return _png(pictures.png(slot.model.meta.preprocessing.denormalize(prep.x[0])))
        if step in ("R", "G", "B"):
            return _png(pictures.normalised_channel_png(prep.x, "RGB".index(step), float(prep.x.abs().max())))
        raise HTTPException(404, f"no step {step!r}")

    @app.get("/api/m/{m}/times")
    def times(m: int) -> dict[str, float]:
        slot, _ = _torch_slot(ws, m)
        return ws.times(slot)

    @app.get("/api/m/{m}/p/{p}/gradflow")
    def gradflow(m: int, p: str) -> dict[str, Any]:
        slot, photo = _torch_slot(ws, m, p)
        return views.gradflow_doc(ws, slot, photo)

    @app.get("/api/m/{m}/labels")
    def labels(m: int, q: str = "") -> list[dict[str, Any]]:
        slot, _ = _lookup(ws, m)
        return views.labels_doc(slot, q[:100])


def _layer_routes(app: FastAPI, ws: Workspace) -> None:
    @app.get("/api/m/{m}/p/{p}/layer/{name}")
    def layer(m: int, p: str, name: str) -> dict[str, Any]:
        slot, photo = _torch_slot(ws, m, p)
        return views.layer_doc(ws, slot, photo, _layer(slot, name))

    @app.get("/api/m/{m}/p/{p}/layer/{name}/grid.png")
    def grid(m: int, p: str, name: str) -> Response:
        slot, photo = _torch_slot(ws, m, p)
        fmap = ws.run(slot, photo).fmap(_layer(slot, name))
        if fmap.dim() != 3:
            raise HTTPException(404, f"{name} has no spatial maps")
        return _png(pictures.layer_grid(fmap).png)

    @app.get("/api/m/{m}/p/{p}/layer/{name}/channel/{c:int}")
    def channel(m: int, p: str, name: str, c: int) -> dict[str, Any]:
        slot, photo = _torch_slot(ws, m, p)
        try:
            return views.channel_doc(ws, slot, photo, _layer(slot, name), c)
        except KeyError:
            raise HTTPException(404, f"{name} has no spatial channel {c}") from None

    @app.get("/api/m/{m}/p/{p}/layer/{name}/channel/{c:int}.png")
    def channel_png(m: int, p: str, name: str, c: int) -> Response:
        slot, photo = _torch_slot(ws, m, p)
        fmap = ws.run(slot, photo).fmap(_layer(slot, name))
        if fmap.dim() != 3 or not 0 <= c < fmap.shape[0]:
            raise HTTPException(404, f"{name} has no spatial channel {c}")
        return _png(pictures.channel_png(fmap[c])[0])

    @app.get("/api/m/{m}/kernel/{conv}/{c:int}.png")
    def kernels(m: int, conv: str, c: int) -> Response:
        return _png(pictures.kernel_slices(_conv(ws, m, conv, c), c)[0])

    @app.get("/api/m/{m}/kernel/{conv}/{c:int}/rgb.png")
    def rgb_filter(m: int, conv: str, c: int) -> Response:
        data = pictures.rgb_filter_png(_conv(ws, m, conv, c), c)
        if data is None:
            raise HTTPException(404, f"{conv} does not read RGB pixels")
        return _png(data)


def _conv(ws: Workspace, m: int, name: str, c: int):
    slot, _ = _torch_slot(ws, m)
    if name not in slot.rows or slot.rows[name].type != "conv":
        raise HTTPException(404, f"no conv {name!r} in model {m}")
    conv = find_conv(slot.model.module, name)
    if not 0 <= c < conv.out_channels:
        raise HTTPException(404, f"{name} has no output channel {c}")
    return conv


def _cam_routes(app: FastAPI, ws: Workspace) -> None:
    def cam_of(m: int, p: str, cls: int, layer: str):
        slot, photo = _lookup(ws, m, p)
        if not ws.has_cam(slot):
            raise HTTPException(404, f"model {m} is a compiled artefact without a cam output (export it with --cam-output)")
        if not 0 <= cls < len(slot.model.class_names):
            raise HTTPException(404, f"no class {cls}: this model has classes 0..{len(slot.model.class_names) - 1}")
        return slot, photo, ws.cam(slot, photo, cls, layer)

    @app.get("/api/m/{m}/p/{p}/cam")
    def cam(m: int, p: str, cls: int, layer: str = "layer4") -> dict[str, Any]:
        slot, photo, r = cam_of(m, p, cls, layer)
        return views.cam_doc(slot, photo, r)

    @app.get("/api/m/{m}/p/{p}/cam.png")
    def cam_png(m: int, p: str, cls: int, layer: str = "layer4") -> Response:
        slot, photo, r = cam_of(m, p, cls, layer)
        rgb = slot.model.meta.preprocessing.denormalize(ws.prepared(slot, photo).x[0])
        return _png(pictures.cam_png(rgb, next(iter(r.maps.values()))))  # one map: Grad-CAM, or an artefact's own CAM

    @app.get("/api/p/{p}/compare")
    def compare(p: str) -> dict[str, Any]:
        _, photo = _lookup(ws, 0, p)
        return views.compare_doc(ws, photo)

    @app.get("/api/p/{p}/drift")
    def drift(p: str, cls: int | None = None, layer: str = "layer4") -> dict[str, Any]:
        _, photo = _lookup(ws, 0, p)
        if cls is not None and not 0 <= cls < len(ws.slots[0].model.class_names):
            raise HTTPException(404, f"no class {cls}")
        return views.drift_doc(ws, photo, cls, layer)


def create_app(ws: Workspace) -> FastAPI:
    """The explorer's app over ``ws``: serve it with uvicorn, or test it with FastAPI's TestClient."""
    app = FastAPI(title="resnet-xray explore", docs_url=None, redoc_url=None, openapi_url=None)
    _install_guards(app, ws.options)
    for add in (_page_routes, _model_routes, _layer_routes, _cam_routes):
        add(app, ws)
    return app


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_big_blocks(threshold: int = 1 << 20) -> None:
    """Have glibc give every freed block of ``threshold`` bytes or more straight back to the OS.

    By default glibc raises that threshold to the largest block freed so far, then keeps freed
    activations (tens of MB each) for reuse: a server that traces photo after photo through two
    ResNet-50s then holds a few hundred MB it no longer uses. Elsewhere than glibc, nothing changes.
    """
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or an XrayError naming the flag (port taken, unknown host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it every
    # keep-alive request waited about 40 ms (Nagle's algorithm against the browser's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise XrayError(f"--port {port} on --host {host}: cannot listen ({e.strerror}); choose another port, or --port 0") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class Explorer:
    """What ``rx.explore`` returns: the app over its workspace, ready to serve."""

    workspace: Workspace
    app: FastAPI

    @property
    def options(self) -> ExploreOptions:
        return self.workspace.options

    @property
    def weights(self) -> WeightsInfo:
        return self.workspace.slots[0].weights

    def to_dict(self) -> dict[str, Any]:
        return {**views.session_doc(self.workspace), "host": self.options.host, "port": self.options.port,
                "weights": self.weights.to_dict()}

    def _server(self):
        """A uvicorn server on a freshly bound socket, after the warm-up; and the page's URL."""
        import uvicorn

        sock = bind(self.options.host, self.options.port)  # a taken port is refused before the warm-up
        return_big_blocks()
        self.workspace.warm()
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        url = f"http://{host}:{sock.getsockname()[1]}/"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        return uvicorn.Server(config), sock, url

    def check(self) -> str:
        """Bind the socket and warm up as :meth:`serve` would, then let go: the URL it would serve."""
        _, sock, url = self._server()
        sock.close()
        return url

    def serve(self) -> None:
        """Listen until interrupted (Ctrl-C); open the page in a browser unless told not to."""
        server, sock, url = self._server()

        def announce() -> None:
            while not server.started and not server.should_exit:
                threading.Event().wait(0.05)
            if server.started:
                print(f"resnet-xray explore: serving {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
                if self.options.browser:
                    webbrowser.open(url)

        threading.Thread(target=announce, daemon=True).start()
        server.run(sockets=[sock])

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve from a background thread while the block runs (tests, benchmarks); yields the page's URL."""
        server, sock, url = self._server()
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the explorer's server stopped while starting")
                threading.Event().wait(0.02)
            yield url
        finally:
            server.should_exit = True
            thread.join(30)


__all__ = ["Explorer", "create_app", "bind"]


def open_explorer(models: list[Any], deployed: list[Any], opts: Any, tables: list[dict[str, Any]] | None = None) -> Explorer:
    """The explorer over PyTorch ``models`` (the first is the main one), ``deployed`` artefacts (LoadedModels) and
    per-layer ``tables`` (``layers --json`` documents)."""
    ws = Workspace(models, deployed, opts, tables)
    return Explorer(ws, create_app(ws))
