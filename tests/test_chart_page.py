"""The chart page (``/``) and the docs viewer (``/api/v1/docs``) in a real browser: Debian's Chromium
driven by Playwright (never ``playwright install``), against a live Hypercorn server.

- the page draws candles with no console error, loading nothing from another origin, and a live
  bar arrives over the WebSocket;
- after the server restarts (across a bucket close) the page resumes with ``since`` and shows
  exactly the bars of /ohlcv over the same range: no hole, no duplicate;
- the badge says ``stale`` during a provider outage (exchange emulator fault) and ``live`` after;
- Swagger UI renders every operation of our OpenAPI document with the examples filled in.

Screenshots go to the test's tmp dir; ``SAVE_DOCS_SCREENSHOT=1`` also writes docs/chart.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import DATABASE_URL, REDIS_URL
from tests.exchange_emulator import ExchangeEmulator
from tests.exchange_emulator.fixtures import emulator  # noqa: F401
from tests.helpers import delete_prefix
from tests.live_server import free_port, hypercorn_server
from tests.ws_support import wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
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
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
        await delete_prefix(REDIS_URL, prefix)


@asynccontextmanager
async def live_server(env: dict[str, str], port: int | None = None) -> AsyncIterator[str]:
    """``tests.live_server.hypercorn_server`` started and stopped off the event loop."""
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
    page = await browser.new_page(viewport={"width": 1200, "height": 640})
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


async def test_page_draws_candles_without_console_errors_and_a_live_bar_arrives(
    browser: Browser, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    async with live_server(isolated_env) as base:
        page, watch = await open_page(browser, base + SIM_PAGE)
        assert await candle_pixels(page) > 500, "the chart's canvas is blank"
        assert len(await page_bars(page)) == 500
        seen = len(watch.bar_frames())
        await page.wait_for_function("window.chartPage.frames > 1", timeout=20_000)
        await wait_for(lambda: len(watch.bar_frames()) > seen, within=20)
        frame = watch.bar_frames()[-1]
        assert frame["channel"] == "sim:sim:SIM/USD:1m" and isinstance(frame["seq"], int)
        assert await page.evaluate("window.chartPage.gaps") == 0  # seq went up one at a time
        await asyncio.sleep(0.2)
        last = (await page_bars(page))[-1]
        assert last["time"] * 1000 >= frame["bar"][0]  # applied in place or followed by a newer one
        # The pickers come from /markets, /providers and /symbols.
        assert "sim" in await page.eval_on_selector_all("#market option", "els => els.map(e => e.value)")
        assert await page.eval_on_selector_all("#provider option", "els => els.map(e => e.value)") == ["sim"]
        symbols = await page.eval_on_selector_all("#symbols option", "els => els.map(e => e.value)")
        assert symbols == ["SIM/USD", "SIMA/USD", "SIMB/EUR", "SIMC/USD"]
        assert len(await page.eval_on_selector_all("#timeframe option", "els => els.map(e => e.value)")) == 12
        # Reconnect delays double up to 15 s, each with half of it random.
        delays = await page.evaluate("""import('/assets/store.js').then((m) => [0, 1, 2, 3, 10].map(
            (n) => [m.backoffDelay(n, 500, 15000, () => 0), m.backoffDelay(n, 500, 15000, () => 1)]))""")
        assert delays == [[250, 500], [500, 1000], [1000, 2000], [2000, 4000], [7500, 15000]]
        # Another timeframe: its own history and channel.
        await page.select_option("#timeframe", "5m")
        await page.wait_for_function("window.chartPage.selection.timeframe === '5m' && window.chartPage.store"
                                     " && window.chartPage.store.timeframeMs === 300000", timeout=20_000)
        await wait_for(lambda: any(f.get("type") == "snapshot" and f["channel"].endswith(":5m")
                                   for f in watch.received), within=20)
        times = [b["time"] for b in await page_bars(page)]
        assert len(times) == 500 and times == list(range(times[0], times[-1] + 1, 300))
        assert {"op": "unsubscribe", "channel": "sim:sim:SIM/USD:1m"} in watch.sent
        assert "timeframe=5m" in page.url
        assert await page.locator("a[href='/api/v1/docs']").count() == 1
        assert await page.locator("a[href='https://www.tradingview.com/']").count() == 1
        await page.screenshot(path=str(tmp_path / "chart.png"))
        if os.environ.get("SAVE_DOCS_SCREENSHOT"):
            await page.screenshot(path=str(ROOT / "docs" / "chart.png"))
        assert watch.errors == []
        assert all(url.startswith(base) or url.startswith("data:") for url in watch.requests), watch.requests


async def test_scrolling_left_pages_back_contiguously(browser: Browser, isolated_env: dict[str, str]) -> None:
    async with live_server(isolated_env) as base:
        page, watch = await open_page(browser, base + SIM_PAGE)
        first = (await page_bars(page))[0]["time"]
        await page.evaluate("window.chartPage.chart.timeScale().scrollToPosition(-490, false)")
        await page.wait_for_function("window.chartPage.store.bars.length >= 1000", timeout=20_000)
        shown = await page_bars(page)
        older = [b for b in shown if b["time"] < first]
        assert len(older) >= 500 and older[-1]["time"] == first - 60  # joined without a gap or overlap
        times = [b["time"] for b in shown]
        assert times == list(range(times[0], times[0] + 60 * len(times), 60))  # the sim never skips a minute
        asked = [u for u in watch.requests if "/api/v1/ohlcv" in u and "end=" in u]
        assert asked and f"end={first * 1000}" in asked[0]
        rest = await rest_bars(page, older[0]["time"] * 1000, first * 1000)
        assert as_rows(older[:500]) == rest[:500]


async def test_page_resumes_after_a_server_restart_with_no_hole_and_no_duplicate(
    browser: Browser, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    async with live_server(isolated_env, port) as base:
        page, watch = await open_page(browser, base + SIM_PAGE)
        await _until_second(40, 55)  # stop shortly before a minute closes...
        before = (await page_bars(page))[-1]
    await badge(page, "reconnecting")
    await _until_second(2, 20)  # ... and come back after it closed, the page still retrying
    async with live_server(isolated_env, port):
        await badge(page, "live", within_ms=60_000)
        resumed = [m for m in watch.sent if m.get("op") == "subscribe"]
        assert len(resumed) >= 2 and resumed[-1]["since"] >= before["time"] * 1000, resumed
        await page.wait_for_function(f"window.chartPage.store.last.time > {before['time']}", timeout=30_000)
        await asyncio.sleep(1)
        shown = await page_bars(page)
        closed = [b for b in shown if b["closed"]]
        rest = await rest_bars(page, closed[0]["time"] * 1000, closed[-1]["time"] * 1000 + 60_000)
        await page.screenshot(path=str(tmp_path / "resumed.png"))
    times = [b["time"] for b in shown]
    assert times == sorted(set(times)), "a duplicate or out-of-order bar"
    assert [r[0] for r in as_rows(closed)] == [r[0] for r in rest], "a hole"
    for got, want in zip(as_rows(closed), rest, strict=True):
        assert got == pytest.approx(want, rel=1e-9), (got, want)
    assert closed[-1]["time"] >= before["time"]  # the bar forming at the stop closed during the outage


async def test_badge_is_stale_during_a_provider_outage_and_live_after(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator, tmp_path: Path  # noqa: F811
) -> None:
    env = {**isolated_env, "ENABLED_MARKETS": "sim,crypto", "CCXT_EXCHANGES": "binance",
           "PROVIDER_URLS": json.dumps({"binance": emulator.url}), "PROVIDER_TIMEOUT": "1",
           "PROVIDER_RETRIES": "1", "PROVIDER_RETRY_MAX_WAIT": "0.05", "POLL_MAX_BACKOFF_SECONDS": "0.5",
           "PROVIDER_BUDGETS": json.dumps({"binance": "off"}), "PROVIDER_BAN_DEFAULT": "0.1"}
    async with live_server(env) as base:
        page, _ = await open_page(browser, base + "/?market=crypto&provider=binance&symbol=BTC%2FUSDT&timeframe=1m")
        assert await candle_pixels(page) > 500
        emulator.inject("/api/v3/klines", status=503, times=None)  # the exchange's gateway fails
        await badge(page, "stale")
        assert "provider_unavailable" in (await page.get_attribute("#status", "title") or "")
        await page.screenshot(path=str(tmp_path / "stale.png"))
        emulator.clear_faults()
        await badge(page, "live")


class FakeStream:
    """Stands in for /api/v1/ws (Playwright routes the page's WebSocket here): answers a subscribe
    with a snapshot, then sends what the test tells it to."""

    def __init__(self) -> None:
        self.route: Any = None
        self.subscribes: list[dict[str, Any]] = []
        self.channel = "sim:sim:SIM/USD:1m"
        self.snapshot: list[list[float]] = []

    def attach(self, route: Any) -> None:
        self.route = route
        route.on_message(self._message)

    def _message(self, text: str | bytes) -> None:
        message = json.loads(text)
        if message.get("op") == "subscribe":
            self.subscribes.append(message)
            self.send({"type": "subscribed", "channel": self.channel, "id": message.get("id")})
            self.send({"type": "snapshot", "channel": self.channel, "bars": self.snapshot, "seq": 10})

    def send(self, frame: dict[str, Any]) -> None:
        self.route.send(json.dumps(frame))

    def bar(self, row: list[float], seq: int, closed: bool = False, revised: bool = False) -> None:
        frame = {"type": "bar", "channel": self.channel, "bar": row, "closed": closed, "seq": seq}
        if revised:
            frame["revised"] = True
        self.send(frame)


async def test_frames_update_in_place_revisions_land_where_they_belong_and_a_seq_gap_refetches(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    fake = FakeStream()
    async with live_server(isolated_env) as base:
        page = await browser.new_page()
        watch = Watch(page)
        await page.route_web_socket("**/api/v1/ws", fake.attach)
        await page.goto(base + SIM_PAGE)
        await badge(page, "live")
        bars = await page_bars(page)
        last, older = bars[-1], bars[-11]
        assert fake.subscribes[0]["since"] == last["time"] * 1000 and "history" not in fake.subscribes[0]
        # The forming bar changes: updated in place, still drawn pale.
        row = [last["time"] * 1000, last["open"], last["high"] + 1, last["low"], last["high"] + 1, last["volume"] + 5]
        fake.bar(row, 11)
        await page.wait_for_function(f"window.chartPage.store.last.close === {row[4]}")
        drawn = await page.evaluate(f"window.chartPage.drawn({last['time']})")
        assert drawn["close"] == row[4] and drawn.get("color"), drawn  # pale: its own colour
        # A revision of a bar ten minutes back: changed where it stands, nothing appended.
        revised = [older["time"] * 1000, older["open"], older["high"], older["low"] - 1, older["low"] - 1, 1.5]
        fake.bar(revised, 12, closed=True, revised=True)
        await page.wait_for_function("window.chartPage.revisions === 1")
        shown = await page_bars(page)
        assert len(shown) == len(bars) and shown[-11]["close"] == revised[4] and shown[-11]["volume"] == 1.5
        assert (await page.evaluate(f"window.chartPage.drawn({older['time']})"))["close"] == revised[4]
        # The bucket closes: drawn in full colour.
        fake.bar(row, 13, closed=True)
        await page.wait_for_function("window.chartPage.store.last.closed === true")
        assert not (await page.evaluate(f"window.chartPage.drawn({last['time']})")).get("color")
        # A seq jump (14 was lost): the bars since the newest closed one are fetched again.
        watch.requests.clear()
        fake.bar([row[0] + 60_000, row[4], row[4], row[4], row[4], 1.0], 15)
        await page.wait_for_function("window.chartPage.gaps === 1")
        await wait_for(lambda: any("start=" in u and "/api/v1/ohlcv" in u for u in watch.requests), within=10)
        refetch = next(u for u in watch.requests if "start=" in u)
        assert f"start={last['time'] * 1000}" in refetch, refetch
        fake.bar([row[0] + 60_000, row[4], row[4], row[4], row[4], 9.0], 15)  # a repeat: ignored
        await asyncio.sleep(0.3)
        assert (await page_bars(page))[-1]["volume"] == 1.0
        assert watch.errors == []


async def test_a_snapshot_that_starts_after_since_is_joined_over_rest(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    """Away longer than a snapshot holds (1000 bars): the bars between come from /ohlcv."""
    fake = FakeStream()
    async with live_server(isolated_env) as base:
        page = await browser.new_page()
        watch = Watch(page)
        await page.route_web_socket("**/api/v1/ws", fake.attach)
        await page.goto(base + SIM_PAGE)
        await badge(page, "live")
        held = await page_bars(page)
        # The page last saw a bar 30 minutes ago; the server's snapshot holds only the last 5.
        await page.evaluate("window.chartPage.store.bars.splice(-30); window.chartPage.redraw()")
        since = held[-31]["time"] * 1000
        recent = await rest_bars(page, held[-5]["time"] * 1000, held[-1]["time"] * 1000 + 60_000)
        fake.snapshot = recent
        watch.requests.clear()
        await fake.route.close()
        await wait_for(lambda: len(fake.subscribes) == 2, within=20)
        assert fake.subscribes[1]["since"] == since
        await page.wait_for_function(f"window.chartPage.store.bars.length === {len(held)}", timeout=20_000)
        refill = [u for u in watch.requests if "/api/v1/ohlcv" in u and "start=" in u]
        assert refill and f"start={since}" in refill[0] and f"end={held[-5]['time'] * 1000}" in refill[0]
        shown = await page_bars(page)
        assert [b["time"] for b in shown] == [b["time"] for b in held]  # no hole, no duplicate
        closed = [b for b in shown if b["closed"]]
        rest = await rest_bars(page, closed[0]["time"] * 1000, closed[-1]["time"] * 1000 + 60_000)
        assert as_rows(closed) == rest
        assert watch.errors == []


async def test_docs_viewer_renders_every_operation_from_our_origin(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    async with live_server(isolated_env) as base:
        page = await browser.new_page()
        watch = Watch(page)
        await page.goto(base + "/api/v1/docs")
        spec = await page.evaluate("fetch('/api/v1/openapi.json').then((r) => r.json())")
        operations = sum(len(ops) for ops in spec["paths"].values())
        await page.wait_for_function(f"document.querySelectorAll('.opblock').length === {operations}",
                                     timeout=30_000)
        await page.click("#operations-default-get_ohlcv .opblock-summary")  # expand: examples filled in
        market = page.locator("#operations-default-get_ohlcv input[placeholder='market']")
        await market.wait_for()
        assert await market.input_value() == "sim"
        assert watch.errors == []
        assert all(url.startswith(base) or url.startswith("data:") for url in watch.requests), watch.requests


async def _until_second(low: int, high: int) -> None:
    """Wait until the wall clock's second of the minute lies in [low, high)."""
    second = time.time() % 60
    if not low <= second < high:
        await asyncio.sleep((low - second) % 60)
