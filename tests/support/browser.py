"""Browser-test kit: Debian's Chromium driven by Playwright (never ``playwright install``), a live
Hypercorn server with its own schema and Redis prefix, what a page did, and a stand-in for the
page's WebSocket. Fixtures: ``from tests.support.browser import browser, installed, isolated_env``.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import DATABASE_URL, REDIS_URL
from tests.support.helpers import delete_prefix, drop_schema
from tests.support.live_server import hypercorn_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
SIM_PAGE = "/?market=sim&provider=sim&symbol=SIM%2FUSD&timeframe=1m"
#: The candle colours of web/public/app.js (closed bars).
CANDLE_RGB = [(8, 153, 129), (242, 54, 69)]
FAST_POLLS = {"POLL_INTERVAL_DEFAULT": "0.5", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "CRITICAL"}


@pytest.fixture
async def isolated_env() -> AsyncIterator[dict[str, str]]:
    """A live server's own PostgreSQL schema and Redis prefix, dropped afterwards."""
    uid = uuid.uuid4().hex[:10]
    schema, prefix = f"t_page_{uid}", f"t:page:{uid}"
    try:
        yield {"DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix, **FAST_POLLS}
    finally:
        await drop_schema(DATABASE_URL, schema)
        await delete_prefix(REDIS_URL, prefix)


@asynccontextmanager
async def live_server(env: dict[str, str], port: int | None = None) -> AsyncIterator[str]:
    """``tests.support.live_server.hypercorn_server`` started and stopped off the event loop."""
    server = hypercorn_server(env, port=port)
    base = await asyncio.to_thread(server.__enter__)
    try:
        yield base
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


@pytest.fixture
def installed() -> None:
    """Chromium (.ci/run installs it) and the page's npm packages (``make test`` installs them; a
    worktree that has not run it yet skips these tests, CI never does)."""
    assert Path(CHROMIUM).exists(), "needs Debian's chromium: apt-get install -y chromium (.ci/run does)"
    if not (ROOT / "web" / "node_modules" / "lightweight-charts").is_dir():
        if os.environ.get("CI"):
            pytest.fail("web/node_modules is missing: make test runs npm ci --prefix web")
        pytest.skip("web/node_modules is missing: run `npm ci --prefix web` (make test does)")


@pytest.fixture
async def browser(installed: None) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Watch:
    """What a page did: console errors, requests, and the WebSocket frames both ways."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", self._socket)

    def _socket(self, ws: Any) -> None:
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))

    def bar_frames(self) -> list[dict[str, Any]]:
        return [f for f in self.received if f.get("type") == "bar"]


async def open_page(browser: Browser, url: str) -> tuple[Page, Watch]:
    # Playwright's polling predicates are evaluated strings, which the pages' CSP forbids; the CSP
    # itself is checked, with no bypass, by tests/blueprints/test_page_headers.py.
    page = await browser.new_page(viewport={"width": 1200, "height": 640}, bypass_csp=True)
    watch = Watch(page)
    await page.goto(url)
    await page.wait_for_function("window.chartPage && window.chartPage.firstCandlesMs !== null", timeout=30_000)
    await badge(page, "live")
    return page, watch


async def badge(page: Page, state: str, within_ms: float = 30_000) -> None:
    await page.wait_for_function(f"document.getElementById('status').dataset.state === '{state}'",
                                 timeout=within_ms)


async def candle_pixels(page: Page) -> int:
    """Pixels of the candle colours on the chart's canvases (0 for a blank chart)."""
    return int(await page.evaluate("""(colours) => {
        let count = 0;
        for (const canvas of document.querySelectorAll('#chart canvas')) {
            if (!canvas.width || !canvas.height) continue;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < data.length; i += 4) {
                if (colours.some(([r, g, b]) => data[i] === r && data[i + 1] === g && data[i + 2] === b)) count++;
            }
        }
        return count;
    }""", CANDLE_RGB))


async def page_bars(page: Page) -> list[dict[str, Any]]:
    bars: list[dict[str, Any]] = await page.evaluate("window.chartPage.store.bars")
    return bars


async def rest_bars(page: Page, first: int, end: int) -> list[list[float]]:
    answer = await page.evaluate("""async ([first, end]) => {
        const series = "market=sim&provider=sim&symbol=SIM%2FUSD&timeframe=1m";
        return (await fetch(`/api/v1/ohlcv?${series}&start=${first}&end=${end}&limit=5000`)).json();
    }""", [first, end])
    bars: list[list[float]] = answer["bars"]
    return bars


def as_rows(bars: list[dict[str, Any]]) -> list[list[float]]:
    return [[b["time"] * 1000, b["open"], b["high"], b["low"], b["close"], b["volume"]] for b in bars]


class FakeStream:
    """Stands in for /api/v1/ws (Playwright routes the page's WebSocket here): answers a subscribe
    with a snapshot, then sends what the test tells it to."""

    def __init__(self) -> None:
        self.route: Any = None
        self.subscribes: list[dict[str, Any]] = []
        self.channel = "sim:sim:SIM/USD:1m"
        self.snapshot: list[list[float]] = []
        #: An error frame (code, message) to answer subscribes with, instead of a snapshot.
        self.refuse: tuple[str, str] | None = None

    def attach(self, route: Any) -> None:
        self.route = route
        route.on_message(self._message)

    def _message(self, text: str | bytes) -> None:
        message = json.loads(text)
        if message.get("op") == "subscribe":
            self.subscribes.append(message)
            if self.refuse is not None:
                code, text = self.refuse
                self.send({"type": "error", "id": message.get("id"), "code": code, "message": text})
                return
            self.send({"type": "subscribed", "channel": self.channel, "id": message.get("id")})
            self.send({"type": "snapshot", "channel": self.channel, "bars": self.snapshot, "seq": 10})

    def send(self, frame: dict[str, Any]) -> None:
        self.route.send(json.dumps(frame))

    def bar(self, row: list[float], seq: int, closed: bool = False, revised: bool = False) -> None:
        frame = {"type": "bar", "channel": self.channel, "bar": row, "closed": closed, "seq": seq}
        if revised:
            frame["revised"] = True
        self.send(frame)
