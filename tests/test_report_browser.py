"""The report in a real headless Chromium: no JavaScript errors, the navigator responds to a click, screenshots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

import resnet_xray as rx
from resnet_xray.image import Preprocessing, bundled_cat
from resnet_xray.model import load_model
from resnet_xray.reporting import ReportOptions, build_report
from resnet_xray.reporting.sections import SECTION_IDS

from .chromium import chromium, needs_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

DETAIL = "(() => ({name: document.querySelector('#layer-detail h3').textContent,"\
         " grid: (document.getElementById('detail-grid') || {}).src || null,"\
         " selected: [...document.querySelectorAll('#layer-list button[aria-selected=true]')].map(b => b.dataset.layer)}))()"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    model, meta = load_model("resnet18", "random")
    meta = dataclasses.replace(meta, preprocessing=Preprocessing(resize=64, crop=64))
    out = tmp_path_factory.mktemp("browser_report")
    # every section, the deployed one too: a table `layers --json` would write, profiled here on the PyTorch engine
    table = out / "layers.json"
    table.write_text(json.dumps(rx.layers(rx.LoadedModel(model, meta), engines=("torch",), runs=2, warmup=1, threads=1,
                                          progress=False).to_dict()))
    return build_report(bundled_cat(), model, meta, ReportOptions(out_dir=out, gradflow_batch=2, gradflow_size=64,
                                                                  layers=str(table))).html


def page_url(html) -> str:
    return Path(html).resolve().as_uri()


def test_report_renders_and_navigator_clicks(report_html, tmp_path):
    with chromium(1280, 900) as s:
        b = s.page
        b.goto(page_url(report_html))
        assert b.evaluate("window.__xray.ready") is True
        assert b.evaluate("window.__xray.errors") == []
        broken = b.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
        assert broken == []
        assert b.evaluate("document.querySelectorAll('#layer-list button').length") == 69

        before = b.evaluate(DETAIL)
        assert before["name"] == "conv1" and before["selected"] == ["conv1"]
        b.click('#layer-list button[data-layer="layer3.0.add"]')
        after = b.evaluate(DETAIL)
        assert after["name"] == "layer3.0.add" and after["selected"] == ["layer3.0.add"]
        assert after["grid"] and after["grid"] != before["grid"]
        assert "256×4×4" in b.evaluate("document.getElementById('layer-detail').textContent")

        # A layer with no spatial maps says so instead of showing a grid.
        b.click('#layer-list button[data-layer="fc"]')
        assert b.evaluate(DETAIL)["grid"] is None

        laptop = tmp_path / "laptop.png"
        b.screenshot(path=laptop)
        assert s.errors == [], s.errors
    with chromium(390, 844, mobile=True) as s:
        b = s.page
        b.goto(page_url(report_html))
        overflow = b.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than a phone"
        phone = tmp_path / "phone.png"
        b.screenshot(path=phone)
        assert s.errors == [], s.errors
    with Image.open(laptop) as im:
        assert im.format == "PNG" and im.size == (1280, 900)
    with Image.open(phone) as im:
        assert im.size == (390, 844)


def test_sections_in_the_seeds_order_each_with_its_figure(report_html):
    with chromium(1280, 900) as s:
        b = s.page
        b.goto(page_url(report_html))
        assert b.evaluate("[...document.querySelectorAll('main > section')].map(s => s.id)") == list(SECTION_IDS)
        toc = b.evaluate("[...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))")
        assert toc == [f"#{sid}" for sid in SECTION_IDS]
        bare = b.evaluate("[...document.querySelectorAll('main > section')]"
                          ".filter(s => ![...s.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)).map(s => s.id)")
        assert bare == []
        # The navigator sits in the stages section, next to the stage sheets.
        assert b.evaluate("document.getElementById('layer-list').closest('section').id") == "stages"
        assert b.evaluate("document.querySelectorAll('.interp').length") == 0  # random weights: nothing interpreted
        assert s.errors == [], s.errors
