"""``report.html`` in real headless Chromium: loads from file, no console errors, not blank.

How the console check works: Chromium is started with ``--remote-debugging-pipe`` and driven
over the Chrome DevTools Protocol with the standard library only (JSON messages separated by
NUL bytes; we write commands to the browser's fd 3 and read replies and events from its fd 4).
After attaching to a page with ``Runtime``, ``Log``, ``Page`` and ``Network`` enabled, the test
navigates to the ``file://`` URL, waits for ``Page.loadEventFired`` and counts as errors:
``Runtime.exceptionThrown`` (uncaught exceptions), ``Runtime.consoleAPICalled`` of type
``error``/``assert``, ``Log.entryAdded`` of level ``error`` (e.g. "Failed to load resource")
and ``Network.loadingFailed``; every request must be ``file:``/``data:``/``about:`` (the report
is self-contained and makes no network request). Unlike scanning ``--enable-logging`` stderr,
this sees each event as structured data and cannot miss one because of log formatting. The
screenshot comes from ``Page.captureScreenshot`` at a 1280x2000 viewport (the same picture
``--screenshot --window-size=1280,2000`` gives). A control page with a deliberate
``console.error`` and a missing image proves that the check does catch errors.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vldistill.platform.report import build_report

CHROMIUM = "/usr/bin/chromium"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep_rows"
WIDTH, HEIGHT = 1280, 2000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} not installed (Debian package `chromium`)")


class DevTools:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (stdlib only)."""

    def __init__(self, user_data_dir: Path):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def wire_fds():  # in the child: the protocol wants exactly fd 3 (in) and fd 4 (out)
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", f"--user-data-dir={user_data_dir}",
             f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain only
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
                  session=True)

    def _reader(self) -> None:
        buf = b""
        while chunk := os.read(self._r, 1 << 16):
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                self._inbox.put(json.loads(m))

    def _pump(self, until, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("no answer from Chromium") from None
            if "id" not in msg:
                self.events.append(msg)
            if until(msg):
                return msg

    def call(self, method: str, params: dict | None = None, session: bool = False,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        reply = self._pump(lambda m: m.get("id") == msg["id"], timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def visit(self, url: str) -> tuple[list[str], bytes, dict]:
        """Load ``url``; returns (errors, screenshot PNG, image check)."""
        self.events = []
        self.call("Page.navigate", {"url": url}, session=True)
        self._pump(lambda m: m.get("method") == "Page.loadEventFired", 60.0)
        check = ("({n: document.images.length, ok: Array.from(document.images)"
                 ".every(i => i.complete && i.naturalWidth > 0)})")
        images = self.call("Runtime.evaluate", {"expression": check, "returnByValue": True},
                           session=True)["result"]["value"]
        png = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
        return self._errors(), png, images

    def _errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"uncaught: {p['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                out.append(f"network: {p.get('errorText')}")
            elif method == "Network.requestWillBeSent" and not \
                    p["request"]["url"].startswith(("file:", "data:", "about:")):
                out.append(f"external request: {p['request']['url']}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _distinct_colours(png: bytes) -> tuple[int, tuple[int, int], float]:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    white = next((n for n, c in colours if c == (255, 255, 255)), 0)
    return len(colours), img.size, 1 - white / (img.size[0] * img.size[1])


def test_report_html_loads_without_console_errors_and_is_not_blank(browser, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(FIXTURE, sweep)
    page = build_report(sweep, tmp_path / "report")["report.html"]
    errors, png, images = browser.visit(page.as_uri())
    shot = tmp_path / "report_screenshot.png"
    shot.write_bytes(png)
    shutil.copy(shot, "/tmp/report_screenshot.png")  # for a human to look at
    assert errors == []
    assert images["n"] >= 5 and images["ok"], images  # every embedded plot decoded
    n_colours, size, inked = _distinct_colours(png)
    assert size == (WIDTH, HEIGHT)
    assert n_colours > 200, f"screenshot looks blank: {n_colours} colours"
    assert inked > 0.05, f"screenshot is {1 - inked:.1%} white"


def test_console_check_catches_errors_on_a_broken_page(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>broken</p><img src='missing.png'>"
                   "<script>console.error('boom')</script></body></html>")
    errors, _, images = browser.visit(bad.as_uri())
    assert any("console.error" in e and "boom" in e for e in errors), errors
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors
    assert not images["ok"]
