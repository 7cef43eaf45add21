"""Drive headless Chromium over the DevTools pipe: open a page, click, read state, take screenshots.

Only the standard library is used: Chromium's ``--remote-debugging-pipe`` speaks
NUL-terminated JSON on file descriptors 3 (commands in) and 4 (replies out), so
the report's browser test needs Debian's ``chromium`` package and nothing else.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Root in a container needs --no-sandbox; the rest keeps a test run from reaching any network.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; a context manager that always ends the process.

    Page errors are collected as they happen: uncaught exceptions, ``console.error``
    calls and browser log errors (a blocked network request or CSP violation lands there).
    """

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900, timeout_s: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no chromium executable found (apt-get install chromium)")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.errors: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._replies: queue.Queue = queue.Queue()
        self._next_id = 0
        self._session: str | None = None

    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="xray-chromium-", ignore_cleanup_errors=True)
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire_fds() -> None:
            # In the child: our pipes become its fds 3 and 4. Going through fds >= 10 first means
            # dup2 never maps an fd onto itself, which would keep its close-on-exec flag.
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            close_fds=False, preexec_fn=wire_fds,  # Python's own fds are close-on-exec; 3 and 4 are not
        )
        os.close(cmd_r)
        os.close(out_w)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_replies, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.set_viewport(self.width, self.height)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self._cmd_w)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._profile.cleanup()

    # --- the protocol ---

    def _read_replies(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._out_r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._replies.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._replies.put(json.loads(msg))

    def _handle_event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        self._events.append(msg)
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())

    def _wait(self, pred, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium: no {what} within {self.timeout_s:.0f} s")
            try:
                msg = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                err = b"".join(self._stderr).decode(errors="replace").strip().splitlines()[-3:]
                raise BrowserError(f"chromium exited while waiting for {what}: {' | '.join(err)}")
            if "method" in msg:
                self._handle_event(msg)
            if pred(msg):
                return msg

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one DevTools command to the page (or the browser, before a page is attached) and wait for its reply."""
        self._next_id += 1
        mid = self._next_id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if self._session and not method.startswith("Target."):
            msg["sessionId"] = self._session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == mid, f"reply to {method}")
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # --- what a test needs ---

    def set_viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def open(self, path_or_url: str | os.PathLike) -> None:
        """Navigate and wait for the load event (every embedded image decoded)."""
        url = str(path_or_url)
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        seen = len(self._events)
        self.send("Page.navigate", {"url": url})
        if not any(e.get("method") == "Page.loadEventFired" for e in self._events[seen:]):
            self._wait(lambda m: m.get("method") == "Page.loadEventFired", "load event")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable results only)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"evaluate {expression[:60]!r}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the first element matching ``selector``."""
        rect = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height}; })()"
        )
        if not rect or rect["w"] == 0 or rect["h"] == 0:
            raise BrowserError(f"click: nothing visible matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1})

    def screenshot(self, path: str | os.PathLike, full_page: bool = False, max_height: int = 4000) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
            params["clip"] = {"x": 0, "y": 0, "width": size["w"], "height": min(size["h"], max_height), "scale": 1}
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.browser PAGE OUT.png``: a screenshot, optionally after clicking a layer."""
    ap = argparse.ArgumentParser(prog="python -m tests.browser", description=main.__doc__)
    ap.add_argument("page")
    ap.add_argument("output")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--layer", help="click this layer in the navigator first and scroll to it")
    args = ap.parse_args(argv)
    with Browser(width=args.width, height=args.height) as b:
        b.open(args.page)
        if args.layer:
            b.click(f'#layer-list button[data-layer="{args.layer}"]')
            b.evaluate("document.getElementById('navigator').scrollIntoView()")
        b.screenshot(args.output)
        for e in b.errors:
            print(f"page error: {e}")
        return 1 if b.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
