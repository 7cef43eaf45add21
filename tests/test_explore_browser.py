"""The explorer page in a real headless Chromium: layer map, feature maps, a channel, Grad-CAM for a searched class,
a second photo, two tabs and a reload mid-request, all under the page's own Content-Security-Policy."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

import resnet_xray as rx
from resnet_xray.image import Preprocessing

from .chromium import chromium, needs_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

IDLE = "() => window.__xray.ready && window.__xray.busy === 0"
LOADED = "(sel) => { const i = document.querySelector(sel); return !!i && !i.hidden && i.complete && i.naturalWidth > 0; }"


@pytest.fixture(scope="module")
def url():
    m = rx.load_model("resnet18", weights="random")
    m = rx.LoadedModel(m.module, dataclasses.replace(m.meta, preprocessing=Preprocessing(resize=110, crop=96)))
    with rx.explore(m, browser=False, port=0).running() as u:
        yield u


def idle(page, timeout_s: float = 30) -> None:
    # a function, not a string: the page's CSP refuses eval, and Playwright compiles a string predicate with it
    page.wait_for_function(IDLE, timeout=timeout_s * 1000)


def test_explore_in_chromium(url, tmp_path):
    photo = tmp_path / "stripes.png"
    Image.new("RGB", (300, 200), (30, 90, 200)).save(photo)
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    with chromium(1400, 1000) as s:
        page = s.page
        page.goto(url)
        idle(page)
        blocks = page.eval_on_selector_all("#layer-map .block", "bs => bs.map(b => b.dataset.block)")
        assert blocks == ["stem", *[f"layer{i}.{j}" for i in range(1, 5) for j in range(2)], "head"]
        ops = page.eval_on_selector_all("#layer-map .op", "bs => bs.map(b => b.dataset.layer)")
        assert ops[0] == "conv1" and ops[-1] == "fc" and len(ops) == 69
        assert "RANDOM" in page.inner_text("#banner") and page.is_visible("#banner")
        assert len(page.query_selector_all("#topk li")) == 5
        assert "not known to be trained" in page.inner_text("#provenance-note")

        page.click('#layer-map [data-layer="layer2.0.relu"]')
        idle(page)
        assert page.get_attribute('[data-layer="layer2.0.relu"]', "aria-selected") == "true"
        assert page.wait_for_function(LOADED, arg="#feature-grid")
        assert "layer2.0.relu" in page.inner_text("#detail-title")
        page.click("#channel-list button >> nth=2")
        idle(page)
        for img in ("#channel-map", "#rf-photo", "#kernel-img"):
            page.wait_for_function(LOADED, arg=img)
        assert page.eval_on_selector("#rf-box", "b => b.getBoundingClientRect().width") > 0

        page.fill("#label-search", "tabby")
        page.click("#label-results button")
        idle(page)
        page.select_option("#cam-layer", "layer3")
        idle(page)
        assert page.get_attribute("#cam-figure", "data-cls") == "281"
        assert "tabby" in page.inner_text("#cam-caption") and "layer3" in page.inner_text("#cam-caption")

        page.set_input_files("#file-input", str(photo))
        page.wait_for_function("() => document.querySelectorAll('#photo-select option').length === 2")
        idle(page)
        assert page.eval_on_selector("#photo-select", "s => s.selectedOptions[0].textContent") == "stripes.png"
        assert "300×200" in page.inner_text("#steps")
        assert s.errors == [], s.errors

        page.set_input_files("#file-input", str(notes))  # refused with the loader's one line, shown in the page
        page.wait_for_function("() => document.getElementById('upload-status').classList.contains('error')")
        assert page.inner_text("#upload-status") == "notes.png: not an image PIL can read"
        assert all("status of 400" in e for e in s.errors), s.errors  # Chromium logs the refused request, nothing else

        # A second tab, and a reload while a request is in flight: the server keeps answering both.
        other = page.context.new_page()
        other.goto(url)
        page.click('#layer-map [data-layer="layer4.1.add"]')
        page.reload()
        idle(page)
        idle(other)
        other.click('#layer-map [data-layer="layer3.1.conv2"]')
        idle(other)
        assert other.wait_for_function(LOADED, arg="#feature-grid")


def test_a_deployed_table_in_chromium_opens_its_layers(tmp_path):
    import json

    m = rx.load_model("resnet18", weights="random")
    m = rx.LoadedModel(m.module, dataclasses.replace(m.meta, preprocessing=Preprocessing(resize=72, crop=64)))
    res = rx.layers(m, engines=("torch",), runs=2, warmup=1, threads=1, progress=False)
    path = tmp_path / "r18.layers.json"
    path.write_text(json.dumps(res.to_dict()))
    with rx.explore(m, browser=False, port=0, layers=[path]).running() as u, chromium(1400, 1000) as s:
        page = s.page
        page.goto(u)
        idle(page)
        assert page.is_visible("#deployed-panel")
        rows = page.eval_on_selector_all("#deployed-tables tbody tr", "rs => rs.map(r => r.dataset.layer)")
        assert rows == [r.name for r in res.rows]
        assert "r18.layers.json" in page.inner_text("#deployed-tables h3")
        page.click('#deployed-tables tr[data-layer="layer3.1.conv2"]')
        idle(page)
        assert "layer3.1.conv2" in page.inner_text("#detail-title")
        row = next(r for r in res.rows if r.name == "layer3.1.conv2")
        assert f"torch-fp32 {row.times_ms['torch-fp32']:.3f} ms" in page.inner_text("#detail-caption")
        assert s.errors == [], s.errors
