"""The chart page (``/``) and the docs viewer (``/api/v1/docs``) in a real browser: Debian's Chromium
driven by Playwright (never ``playwright install``), against a live Hypercorn server.

- the page draws candles with no console error, loading nothing from another origin, and a live
  bar arrives over the WebSocket;
- after the server restarts (across a bucket close) the page resumes with ``since`` and shows
  exactly the bars of /ohlcv over the same range: no hole, no duplicate;
- the badge says ``stale`` during a provider outage (exchange emulator fault) and ``live`` after;
- scrolling left pages back without a gap or an overlap;
- Swagger UI renders every operation of our OpenAPI document with the examples filled in.

Frame handling against a stand-in WebSocket: ``tests/blueprints/test_page_frames.py``; the kit:
``tests/support/browser.py``.

Screenshots go to the test's tmp dir; ``SAVE_DOCS_SCREENSHOT=1`` also writes docs/chart.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser

from app_extensions.auth import hash_key
from tests.support import browser as kit
from tests.support.browser import (
    ROOT,
    SIM_PAGE,
    Watch,
    as_rows,
    badge,
    candle_pixels,
    live_server,
    open_page,
    page_bars,
    rest_bars,
)
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401
from tests.support.live_server import free_port
from tests.support.ws import wait_for

pytestmark = pytest.mark.slow
browser, installed, isolated_env = kit.browser, kit.installed, kit.isolated_env  # fixtures


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

        async def applied() -> bool:
            return bool((await page_bars(page))[-1]["time"] * 1000 >= frame["bar"][0])
        await wait_for(applied, within=5)
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
    async with live_server(emulator_env(isolated_env, emulator)) as base:
        page, _ = await open_page(browser, base + "/?market=crypto&provider=binance&symbol=BTC%2FUSDT&timeframe=1m")
        assert await candle_pixels(page) > 500
        emulator.inject("/api/v3/klines", status=503, times=None)  # the exchange's gateway fails
        await badge(page, "stale")
        assert "provider_unavailable" in (await page.get_attribute("#status", "title") or "")
        await page.screenshot(path=str(tmp_path / "stale.png"))
        emulator.clear_faults()
        await badge(page, "live")


async def test_a_bar_the_exchange_revises_is_redrawn_where_it_stands(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator  # noqa: F811
) -> None:
    async with live_server(emulator_env(isolated_env, emulator)) as base:
        page, watch = await open_page(browser, base + "/?market=crypto&provider=binance&symbol=BTC%2FUSDT&timeframe=1m")
        # A bar the stream published as closed (only those are revised), inside the revision window.
        await wait_for(lambda: any(f["closed"] for f in watch.bar_frames()), within=75)
        ts = next(f for f in watch.bar_frames() if f["closed"])["bar"][0]
        before = await page_bars(page)
        target = next(b for b in before if b["time"] * 1000 == ts)
        candle = emulator.revise("BTCUSDT", ts)  # close +0.1 %, volume x1.5, as an exchange's correction
        await wait_for(lambda: any(f.get("revised") and f["bar"][0] == ts for f in watch.bar_frames()), within=20)
        await page.wait_for_function(f"window.chartPage.revisions >= 1 && window.chartPage.store.bars"
                                     f".find((b) => b.time === {target['time']}).close === {candle[4]}")
        after = await page_bars(page)
        moved = next(b for b in after if b["time"] == target["time"])
        assert (moved["close"], moved["volume"], moved["closed"]) == (candle[4], candle[5], True)
        assert (await page.evaluate(f"window.chartPage.drawn({target['time']})"))["close"] == candle[4]
        assert [b["time"] for b in after][: len(before)] == [b["time"] for b in before]  # nothing added before it
        assert watch.errors == []


async def test_with_api_keys_on_the_page_asks_for_one_and_then_works(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    key = "k" * 32
    env = {**isolated_env, "AUTH_ENABLED": "true", "API_KEYS": hash_key(key), "API_KEYS_FROM_DB": "false"}
    async with live_server(env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        await page.goto(base + SIM_PAGE)  # the page and its files are open; the API is not
        await page.wait_for_selector("#auth:not([hidden])", timeout=20_000)
        assert "unauthorized" in await page.inner_text("#message")
        await page.fill("#apikey", key)
        await page.click("#auth button")
        await page.wait_for_function("window.chartPage.firstCandlesMs !== null", timeout=30_000)
        await badge(page, "live")  # the WebSocket took the key in its first message (not in the URL)
        assert await candle_pixels(page) > 500


async def test_docs_viewer_renders_every_operation_from_our_origin(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    async with live_server(isolated_env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        watch = Watch(page)
        await page.goto(base + "/api/v1/docs")
        spec = await page.evaluate("fetch('/api/v1/openapi.json').then((r) => r.json())")
        operations = sum(len(ops) for ops in spec["paths"].values())
        await page.wait_for_function(f"document.querySelectorAll('.opblock').length === {operations}",
                                     timeout=30_000)
        await page.click("#operations-market-get_ohlcv .opblock-summary")  # expand: examples filled in
        # market lists the values this server serves (an enum): Swagger UI draws it as a select
        market = page.locator("#operations-market-get_ohlcv tr[data-param-name='market'] select")
        await market.wait_for()
        assert await market.input_value() == "sim"
        assert watch.errors == []
        assert all(url.startswith(base) or url.startswith("data:") for url in watch.requests), watch.requests


def emulator_env(env: dict[str, str], emulator: ExchangeEmulator) -> dict[str, str]:  # noqa: F811
    """A live server whose ``binance`` is the emulator, with quick retries."""
    return {**env, "ENABLED_MARKETS": "sim,crypto", "CCXT_EXCHANGES": "binance",
            "PROVIDER_URLS": json.dumps({"binance": emulator.url}), "PROVIDER_TIMEOUT": "1",
            "PROVIDER_RETRIES": "1", "PROVIDER_RETRY_MAX_WAIT": "0.05", "POLL_MAX_BACKOFF_SECONDS": "0.5",
            "PROVIDER_BUDGETS": json.dumps({"binance": "off"}), "PROVIDER_BAN_DEFAULT": "0.1"}


async def _until_second(low: int, high: int) -> None:
    """Wait until the wall clock's second of the minute lies in [low, high)."""
    second = time.time() % 60
    if not low <= second < high:
        await asyncio.sleep((low - second) % 60)
