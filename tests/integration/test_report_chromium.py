"""The run report in a real headless Chromium (Debian package `chromium`), driven through the DevTools
protocol over a pipe (`--remote-debugging-pipe`: no port, no client library): the page of a real
training run with a fault, against baseline runs of other seeds, loads with no console error and no
network request, every plot renders, and the numbers the browser shows are the records'."""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avro_schemas.models import EpochSummary
from consumers.drift import Baseline, DriftTracker
from consumers.telemetry_watch import Watch
from ppo_telemetry.cli import main

STEPS = 6000
FAULT_STEP = 3000


# ------------------------------------------------------------------------------------ DevTools over a pipe


class DevTools:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies and events out), each
    message JSON ended by a NUL byte. Events are kept, in order, in `events`."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends where --remote-debugging-pipe expects them
            # by way of fds above any in use, so neither end is overwritten or left close-on-exec at 3 or 4
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (to_browser_read, from_browser_write)]
            for target, fd in zip((3, 4), ends, strict=True):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        self.process = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--window-size=1280,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds, close_fds=False,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply (events meanwhile go to `events`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The first event named `method`, kept or still to come (the browser's own timeouts bound it)."""
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def png_pixels(data: bytes) -> np.ndarray:
    """The RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium's screenshots are), as an array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], None
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows = np.zeros((height, stride), dtype=np.int32)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], np.frombuffer(raw[start + 1:start + 1 + stride], dtype=np.uint8).astype(np.int32)
        if kind == 1:
            line = line.reshape(-1, channels).cumsum(axis=0).reshape(-1) & 0xFF
        elif kind == 2:
            line = (line + previous) & 0xFF
        elif kind in (3, 4):  # these depend on the pixel to the left: one pixel at a time
            out = line.copy()
            for x in range(stride):
                left = out[x - channels] if x >= channels else 0
                up, up_left = previous[x], previous[x - channels] if x >= channels else 0
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) // 2
                else:
                    estimate = left + up - up_left
                    distances = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
                    predictor = (left, up, up_left)[distances.index(min(distances))]
                out[x] = (line[x] + predictor) & 0xFF
            line = out
        rows[y] = line
        previous = line
    return rows.reshape(height, width, channels)[:, :, :3]


# ------------------------------------------------------------------------------------ a real run, its page


def train(directory: Path, seed: int, run_id: str, *fault: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "ppo_telemetry", "train", "--env", "CartPole-v1", "--total-steps", str(STEPS),
         "--seed", str(seed), "--run-id", run_id, "--ndjson-dir", str(directory), *fault],
        check=True, capture_output=True, timeout=600,
    )
    return directory


def read_records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.ndjson")) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    """A real CartPole run with `lr_spike` half-way, two healthy seeds as its baseline, and its report."""
    root = tmp_path_factory.mktemp("report")
    current = train(root / "current", 0, "cartpole.lr-spike", "--fault", f"lr_spike@{FAULT_STEP}")
    for seed in (1, 2):
        train(root / "baseline" / f"seed{seed}", seed, f"cartpole.seed{seed}")
    page = root / "report.html"
    assert main(["report", str(current), "--baseline", str(root / "baseline"), "-o", str(page)]) == 0
    baseline = [r for seed in (1, 2) for r in read_records(root / "baseline" / f"seed{seed}")]
    return {"page": page, "records": read_records(current), "baseline": baseline}


@pytest.fixture(scope="module")
def browser(system_program, tmp_path_factory) -> Iterator[DevTools]:
    chromium = system_program("chromium", "chromium")
    devtools = DevTools(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield devtools
    devtools.close()


@pytest.fixture(scope="module")
def loaded(browser: DevTools, report: dict[str, Any]) -> dict[str, Any]:
    """The report opened in a fresh tab with the console, log and network recorded from before it loads."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.events.clear()
    url = report["page"].as_uri()
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait_event("Page.loadEventFired")
    return {"session": session, "url": url, **report}


def requested_urls(browser: DevTools) -> set[str]:
    return {e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"}


def evaluate(browser: DevTools, session: str, expression: str) -> Any:
    reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
    assert "exceptionDetails" not in reply, reply
    return reply["result"]["value"]


def screenshot(browser: DevTools, session: str, clip: dict[str, float] | None = None) -> np.ndarray:
    params: dict[str, Any] = {"format": "png", "captureBeyondViewport": clip is not None}
    if clip is not None:
        params["clip"] = {**clip, "scale": 1}
    data = browser.send("Page.captureScreenshot", params, session=session)["data"]
    return png_pixels(base64.b64decode(data))


# ------------------------------------------------------------------------------------ the tests


def test_page_loads_with_no_console_error_and_no_network_request(browser, loaded):
    evaluate(browser, loaded["session"], "document.readyState")  # events of the load are all in by now
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"]
                  in ("error", "assert", "warning"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
    assert errors == []
    requested = requested_urls(browser)
    assert requested <= {loaded["url"]}  # the page itself, nothing else
    assert not [e for e in browser.events if e.get("method") == "Network.loadingFailed"]
    resources = evaluate(browser, loaded["session"], "performance.getEntriesByType('resource').length")
    assert resources == 0
    assert evaluate(browser, loaded["session"], "document.scripts.length") == 1  # the data block, not a program
    assert evaluate(browser, loaded["session"], "document.scripts[0].type") == "application/json"


def test_every_plot_renders(browser, loaded):
    figures = evaluate(browser, loaded["session"], """
        Array.from(document.querySelectorAll('figure[data-metric]')).map(figure => {
            const series = figure.querySelector('path.series');
            const box = figure.getBoundingClientRect();
            return {metric: figure.dataset.metric, points: Number(figure.dataset.points),
                    length: series.getTotalLength(), bands: figure.querySelectorAll('rect.band').length,
                    alerts: figure.querySelectorAll('rect.alert-span').length,
                    clip: {x: box.x + scrollX, y: box.y + scrollY, width: box.width, height: box.height}};
        })""")
    data = evaluate(browser, loaded["session"], "JSON.parse(document.getElementById('report-data').textContent)")
    assert [f["metric"] for f in figures] == [m["name"] for m in data["metrics"]]
    assert len(figures) >= 15
    for figure in figures:
        assert figure["points"] > 0 and figure["length"] > 0, figure["metric"]
        assert figure["bands"] > 0, f"{figure['metric']}: no baseline band"
        assert figure["alerts"] == len(data["alerts"]) > 0
        pixels = screenshot(browser, loaded["session"], figure["clip"])
        assert pixels.std() > 10, f"{figure['metric']}: the plot looks blank"
    # the series themselves are drawn: with the band and alert shapes hidden, each figure still holds the
    # series' blue (#1f5fbf; the rest left is grey: grid, frame, text)
    evaluate(browser, loaded["session"], """
        const hide = document.createElement('style'); hide.id = 'series-only';
        hide.textContent = '.band, .band-level, .alert-span, .drift-start {display: none}';
        document.head.appendChild(hide); true""")
    try:
        for figure in figures:
            pixels = screenshot(browser, loaded["session"], figure["clip"])
            bluish = (pixels[:, :, 2] - pixels[:, :, 0] > 60) & (pixels[:, :, 0] < 160)
            assert bluish.sum() > 50, f"{figure['metric']}: no series drawn"
    finally:
        evaluate(browser, loaded["session"], "document.getElementById('series-only').remove(); true")
    whole = screenshot(browser, loaded["session"])
    assert whole.std() > 10 and len(np.unique(whole.reshape(-1, 3), axis=0)) > 50


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_numbers_in_the_rendered_page_match_the_records(browser, loaded):
    records = loaded["records"]
    rows = evaluate(browser, loaded["session"], """
        Object.fromEntries(Array.from(document.querySelectorAll('#metrics-table tr[data-metric]')).map(row =>
            [row.dataset.metric, Array.from(row.querySelectorAll('td.num')).map(cell => cell.textContent)]))""")
    assert "learning_rate" in rows and "mean_episode_return" in rows
    for name, shown in rows.items():
        present = [r[name] for r in records if r.get(name) is not None]
        count, first, last, low, high = (_number(text) for text in shown)
        assert count == len(present), name
        for seen, value in ((first, present[0]), (last, present[-1]), (low, min(present)), (high, max(present))):
            assert math.isclose(seen, value, rel_tol=1e-5, abs_tol=1e-12), (name, seen, value)

    # the alert spans shown are the watch core's firings over the same records
    watch = Watch()
    firings = [t.global_step for r in records for t in watch.observe(EpochSummary.from_dict(r)) if t.state == "firing"]
    shown_starts = evaluate(browser, loaded["session"], """
        Array.from(document.querySelectorAll('#alerts-table tr[data-rule]')).map(row =>
            row.querySelectorAll('td.num')[0].textContent)""")
    assert [_number(text) for text in shown_starts] == firings
    assert any(FAULT_STEP <= step for step in firings), "the learning-rate spike is alerted"

    # the drift verdicts shown are the drift core's against the two healthy seeds
    tracker = DriftTracker(Baseline.from_records(loaded["baseline"]))
    for record in records:
        tracker.observe(record)
    expected = {name: v.verdict for name, v in tracker.summary("cartpole.lr-spike").fields.items()}
    shown = evaluate(browser, loaded["session"], """
        Object.fromEntries(Array.from(document.querySelectorAll('#drift-table tr[data-field]')).map(row =>
            [row.dataset.field, row.dataset.verdict]))""")
    assert shown == expected
    assert expected["learning_rate"] == "differs"
    valid = "document.querySelector('#validity-table tr[data-outcome=valid] td.num').textContent"
    assert evaluate(browser, loaded["session"], valid) == f"{len(records):,}"


def test_the_recorder_sees_a_request_and_a_console_error_where_a_page_makes_them(browser, tmp_path):
    """The control of the first test: what it records would show a page that fetches or logs an error."""
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/missing.png">'
                    '<script>console.error("control")</script></body></html>')
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Network", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.events.clear()
    browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired")
    evaluate(browser, session, "document.readyState")
    requested = requested_urls(browser)
    assert "http://127.0.0.1:9/missing.png" in requested
    assert any(e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error" for e in browser.events)
    browser.send("Target.closeTarget", {"targetId": target})
