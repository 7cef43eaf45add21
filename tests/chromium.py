"""Headless Chromium for the browser tests: Playwright driving the machine's own chromium (no browser download).

Playwright's bundled browsers are never fetched: ``executable_path`` points at Debian's
``chromium`` (``make browser-deps`` installs it), so the tests run offline. Where there is
no chromium, or no playwright, the tests skip and say why. Page errors are collected as
they happen: uncaught exceptions and console errors (a CSP violation or a failed request
lands there).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Root in a container needs --no-sandbox; the rest keeps a test run off the network.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions")


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _why_not() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `pip install -e '.[test]'`"
    if find_chromium() is None:
        return "chromium is not installed: `make browser-deps` (apt-get install chromium)"
    return None


needs_chromium = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@dataclass
class Session:
    """The page, and every error it reported."""

    page: object
    errors: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)


@contextmanager
def chromium(width: int = 1280, height: int = 900, *, mobile: bool = False) -> Iterator[Session]:
    """One headless Chromium with one page of ``width`` x ``height``; closed on exit whatever happened."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
        try:
            ctx = browser.new_context(viewport={"width": width, "height": height}, is_mobile=mobile, device_scale_factor=1)
            page = ctx.new_page()
            s = Session(page)
            s.watch(page)
            yield s
        finally:
            browser.close()
