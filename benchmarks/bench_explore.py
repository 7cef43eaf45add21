"""``resnet-xray explore`` against its goals, on ResNet-50 and the bundled cat.

Four figures, each measured side by side with what it is judged against, in one run:

* first page: from navigation to the layer map, the top-k and the first feature maps drawn, in
  headless Chromium, after the server is up (goal <= 3 s);
* a click on an already-traced layer: from the click to its feature maps drawn, median over the
  layers clicked (goal <= 150 ms);
* a new photo: upload until its top-k and layer map are answered, against one ``rx.trace`` of
  the same photo in this process (goal <= 1.5x);
* peak RSS of a server holding two ResNet-50s (``--compare``), after the comparison page, in a
  process of its own (goal < 2.5 GB).

Chromium is Debian's (``make browser-deps``), driven by Playwright; without it the two browser
figures are timed over HTTP instead (the record says which). Writes
``benchmarks/results/bench_explore.<cpu-kind>.json``.

    python benchmarks/bench_explore.py [--arch resnet50] [--clicks 20] [--photos 3]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_trace import cpu_description  # noqa: E402  (the one CPU description the benchmarks print)

GOALS = {"first_page_s": 3.0, "click_ms": 150.0, "new_photo_ratio": 1.5, "rss_two_models_gb": 2.5}
IDLE = "() => window.__xray.ready && window.__xray.busy === 0"
FIRST = ("() => document.querySelectorAll('#layer-map .op').length > 0 && document.querySelectorAll('#topk li').length > 0"
         " && (i => i.complete && i.naturalWidth > 0)(document.getElementById('feature-grid'))")
CLICK_LAYERS = ("conv1", "maxpool", "layer1.0.relu_1", "layer1.2.add", "layer2.0.conv2", "layer2.0.downsample.1", "layer2.3.relu_2",
                "layer3.0.conv1", "layer3.2.bn2", "layer3.5.add", "layer4.0.conv3", "layer4.2.relu_2")


def _model(arch: str, seed: int = 0):
    import resnet_xray as rx

    return rx.load_model(arch, weights="random", seed=seed)


def _photo(i: int) -> bytes:
    """A 640x480 photo-like test image: the cat, flipped and tinted differently each time (a new trace each)."""
    from PIL import Image, ImageOps

    from resnet_xray.image import bundled_cat

    with Image.open(bundled_cat()) as im:
        im = im.convert("RGB").resize((640, 480))
    if i % 2:
        im = ImageOps.mirror(im)
    im = Image.blend(im, Image.new("RGB", im.size, (40 * i % 255, 90, 160)), 0.1 + 0.05 * i)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def browser_figures(url: str, clicks: int) -> dict:
    """First page and clicks in headless Chromium (Playwright on the machine's chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_function(FIRST, timeout=60000)
            first = time.perf_counter() - t0
            page.wait_for_function(IDLE, timeout=120000)
            times = []
            for name in (CLICK_LAYERS * (clicks // len(CLICK_LAYERS) + 1))[:clicks]:
                t0 = time.perf_counter()
                page.click(f'#layer-map [data-layer="{name}"]')
                page.wait_for_function(IDLE, timeout=60000)
                times.append(time.perf_counter() - t0)
        finally:
            browser.close()
    return {"via": "chromium", "first_page_s": first, "click_ms": 1e3 * statistics.median(times), "click_ms_all": [1e3 * t for t in times]}


def http_figures(url: str, clicks: int) -> dict:
    """The same two figures over HTTP (no browser here): the page's requests, without the drawing."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        t0 = time.perf_counter()
        for path in ("/", "/static/app.js", "/static/app.css", "/api/session", "/api/m/0/p/cat/overview",
                     "/api/m/0/p/cat/layer/conv1", "/api/m/0/p/cat/layer/conv1/grid.png"):
            c.get(path).raise_for_status()
        first = time.perf_counter() - t0
        times = []
        for name in (CLICK_LAYERS * (clicks // len(CLICK_LAYERS) + 1))[:clicks]:
            t0 = time.perf_counter()
            c.get(f"/api/m/0/p/cat/layer/{name}").raise_for_status()
            c.get(f"/api/m/0/p/cat/layer/{name}/grid.png").raise_for_status()
            times.append(time.perf_counter() - t0)
    return {"via": "http", "first_page_s": first, "click_ms": 1e3 * statistics.median(times), "click_ms_all": [1e3 * t for t in times]}


def new_photo_figures(url: str, model, photos: int, tmp: Path) -> dict:
    """Upload + top-k + layer map of a new photo, against one rx.trace of that photo, alternating."""
    import httpx

    import resnet_xray as rx

    ours, traces = [], []
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(photos):
            data = _photo(i + 1)
            path = tmp / f"photo{i}.jpg"
            path.write_bytes(data)
            t0 = time.perf_counter()
            rx.trace(model, path)
            traces.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = c.post("/api/photos", params={"name": path.name}, content=data, headers={"x-explorer": "1"})
            r.raise_for_status()
            c.get(f"/api/m/0/p/{r.json()['key']}/overview").raise_for_status()
            ours.append(time.perf_counter() - t0)
            # the trace that keeps every output runs on in the background: let it finish before the next timing
            c.get(f"/api/m/0/p/{r.json()['key']}/layer/conv1").raise_for_status()
    return {"new_photo_s": statistics.median(ours), "trace_s": statistics.median(traces),
            "new_photo_ratio": statistics.median(ours) / statistics.median(traces)}


def memory_probe(arch: str) -> None:
    """In a process of its own: two models served, every panel of the comparison asked for; print the peak RSS."""
    import httpx

    import resnet_xray as rx

    ex = rx.explore(_model(arch), compare=[_model(arch, seed=1)], browser=False, port=0)
    with ex.running() as url, httpx.Client(base_url=url, timeout=300) as c:
        key = c.post("/api/photos", params={"name": "p.jpg"}, content=_photo(1), headers={"x-explorer": "1"}).json()["key"]
        for p in ("cat", key):
            for m in (0, 1):
                c.get(f"/api/m/{m}/p/{p}/overview").raise_for_status()
                c.get(f"/api/m/{m}/p/{p}/layer/layer1.0.relu/grid.png").raise_for_status()
            c.get(f"/api/p/{p}/compare").raise_for_status()
            c.get(f"/api/p/{p}/drift", params={"layer": "layer3"}).raise_for_status()
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--clicks", type=int, default=24)
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.arch)

    import tempfile

    import torch

    import resnet_xray as rx

    model = _model(args.arch)
    t0 = time.perf_counter()
    ex = rx.explore(model, browser=False, port=0)
    with ex.running() as url, tempfile.TemporaryDirectory() as tmp:
        up = time.perf_counter() - t0
        page = browser_figures(url, args.clicks) if shutil.which("chromium") else http_figures(url, args.clicks)
        photo = new_photo_figures(url, model, args.photos, Path(tmp))
    mem = json.loads(subprocess.run([sys.executable, __file__, "--memory-probe", "--arch", args.arch], check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    load = __import__("os").getloadavg()[0]
    figures = {"arch": args.arch, "threads": torch.get_num_threads(), "server_up_s": up, **page, **photo,
               "rss_two_models_gb": mem["peak_rss_gb"], "goals": GOALS, "load_average_end": load}
    print(f"explore, {args.arch}, random weights, {torch.get_num_threads()} threads, {cpu_description()} (load average {load:.1f})")
    print(f"  server up (models loaded, cat traced, op times, Grad-CAM): {up:.1f} s")
    rows = [("first page after the server is up", f"{figures['first_page_s']:.2f} s", f"<= {GOALS['first_page_s']} s",
             figures["first_page_s"] <= GOALS["first_page_s"]),
            (f"click on a traced layer (median of {args.clicks}, {page['via']})", f"{figures['click_ms']:.0f} ms",
             f"<= {GOALS['click_ms']:.0f} ms", figures["click_ms"] <= GOALS["click_ms"]),
            (f"new photo {photo['new_photo_s']:.2f} s / rx.trace {photo['trace_s']:.2f} s", f"{photo['new_photo_ratio']:.2f}x",
             f"<= {GOALS['new_photo_ratio']}x", photo["new_photo_ratio"] <= GOALS["new_photo_ratio"]),
            (f"peak RSS, two {args.arch}s compared", f"{mem['peak_rss_gb']:.2f} GB", f"< {GOALS['rss_two_models_gb']} GB",
             mem["peak_rss_gb"] < GOALS["rss_two_models_gb"])]
    for what, got, goal, ok in rows:
        print(f"  {what:<55} {got:>9}  goal {goal:<9} {'met' if ok else 'NOT met'}")
    from records import write_record

    print(f"wrote {write_record('bench_explore', figures)}")


if __name__ == "__main__":
    main()
