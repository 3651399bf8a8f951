"""What the chart page says while it cannot show what its pickers name, in a real browser (Debian's
Chromium, Playwright) against a live Hypercorn server:

- a switch that takes a while says ``loading`` (the old series dimmed, its channel unsubscribed),
  never ``live``;
- an unknown symbol, or a market whose exchange is down, clears the chart and says ``error``
  with the server's message; a temporary failure is retried with backoff until it works;
- opening a URL for a down exchange keeps the symbol asked for, says ``error`` (not
  ``connecting`` forever) and retries;
- the price axis and the legend use the symbol's own price step; the legend shows the OHLC and
  volume of the bar under the cursor;
- Market=stocks lists its provider and shows the server's answer (which settings, or PUT
  /credentials/alpaca); after the user stores their own Alpaca key, ``/providers`` says
  ``configured: true`` for them and the chart draws;
- the API key never goes in the WebSocket URL (a first ``{"op": "auth"}`` message instead) and is
  kept in sessionStorage, not localStorage.

``SAVE_DOCS_SCREENSHOT=1`` also writes docs/chart-loading.png, chart-error.png, chart-stale.png
and chart-stocks.png.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from playwright.async_api import Browser, Page, Route

from app_extensions.auth import hash_key
from tests.support import browser as kit
from tests.support.browser import ROOT, SIM_PAGE, Watch, badge, candle_pixels, live_server, open_page, page_bars
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401
from tests.support.ws import wait_for

pytestmark = pytest.mark.slow
browser, installed, isolated_env = kit.browser, kit.installed, kit.isolated_env  # fixtures
BTC_PAGE = "/?market=crypto&provider=binance&symbol=BTC%2FUSDT&timeframe=1m"


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=str(tmp_path / name))
    if os.environ.get("SAVE_DOCS_SCREENSHOT"):
        await page.screenshot(path=str(ROOT / "docs" / name))


async def state(page: Page) -> dict[str, Any]:
    answer: dict[str, Any] = await page.evaluate("""() => ({
        badge: document.getElementById('status').dataset.state,
        stage: document.getElementById('stage').dataset.state,
        overlay: getComputedStyle(document.getElementById('overlay')).display !== 'none'
            ? document.getElementById('overlay').textContent : null,
        message: document.getElementById('message').hidden ? null : document.getElementById('message').textContent,
        symbol: document.getElementById('symbol').value,
        market: document.getElementById('market').value,
        provider: document.getElementById('provider').value,
        store: window.chartPage.store ? window.chartPage.store.bars.length : null,
        drawn: window.chartPage.candles.data().length,
        retries: window.chartPage.retries,
    })""")
    return answer


async def test_a_slow_switch_says_loading_and_never_live_for_the_old_series(
    browser: Browser, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    async with live_server(isolated_env) as base:
        page, watch = await open_page(browser, base + SIM_PAGE)
        held = asyncio.Event()

        async def slow(route: Route) -> None:  # 1w takes seconds on a cold server: make it take until told
            await held.wait()
            await route.continue_()

        await page.route("**/api/v1/ohlcv?*timeframe=1w*", slow)
        await page.select_option("#timeframe", "1w")
        await badge(page, "loading", within_ms=5_000)
        now = await state(page)
        assert now["stage"] == "loading" and "SIM/USD 1w" in (now["overlay"] or ""), now
        assert await page.evaluate("getComputedStyle(document.getElementById('chart')).opacity") == "0.3"
        assert {"op": "unsubscribe", "channel": "sim:sim:SIM/USD:1m"} in watch.sent  # no 1m frame lands
        await asyncio.sleep(1.5)  # whatever the old channel's stream does, the badge stays `loading`
        assert (await state(page))["badge"] == "loading"
        await screenshot(page, tmp_path, "chart-loading.png")
        held.set()
        await badge(page, "live")
        assert await page.evaluate("window.chartPage.store.timeframeMs") == 7 * 86_400_000
        now = await state(page)
        assert now["overlay"] is None and now["stage"] == "live"
        assert watch.errors == []


async def test_an_unknown_symbol_clears_the_chart_and_says_error(
    browser: Browser, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    async with live_server(isolated_env) as base:
        page, watch = await open_page(browser, base + SIM_PAGE)
        assert await candle_pixels(page) > 500
        await page.fill("#symbol", "NOPE/USD")
        await page.press("#symbol", "Enter")
        await page.dispatch_event("#symbol", "change")
        await badge(page, "error", within_ms=10_000)
        now = await state(page)
        assert now["symbol"] == "NOPE/USD" and now["store"] is None and now["drawn"] == 0, now
        assert "unknown_symbol" in (now["message"] or "") and "NOPE/USD" in (now["overlay"] or ""), now
        assert await candle_pixels(page) == 0  # the SIM/USD series is gone, not frozen under NOPE/USD
        assert not await page.is_visible("#ohlc")  # and its legend with it
        assert "symbol=NOPE%2FUSD" in page.url
        await screenshot(page, tmp_path, "chart-error.png")
        await asyncio.sleep(3)
        assert (await state(page))["retries"] == 0  # an unknown symbol is not asked again
        # Back to a known symbol: drawn and live again.
        await page.fill("#symbol", "SIMA/USD")
        await page.dispatch_event("#symbol", "change")
        await badge(page, "live")
        assert await candle_pixels(page) > 500 and (await state(page))["message"] is None
        # A refused load is shown, not thrown: the only console errors are Chromium's own lines
        # for the 404 answers (/ohlcv and /udf/symbols for NOPE/USD).
        assert [e for e in watch.errors if "status of 404" not in e] == [], watch.errors


async def test_a_market_whose_exchange_is_down_clears_the_chart_and_recovers(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator  # noqa: F811
) -> None:
    emulator.inject("/api/v3/*", status=503, times=None)
    async with live_server(emulator_env(isolated_env, emulator)) as base:
        page, _ = await open_page(browser, base + SIM_PAGE)
        await page.select_option("#market", "crypto")
        await badge(page, "error", within_ms=20_000)
        now = await state(page)
        assert (now["market"], now["provider"], now["drawn"]) == ("crypto", "binance", 0), now
        assert await candle_pixels(page) == 0
        assert "unavailable" in (now["message"] or ""), now


async def test_opening_a_down_exchange_keeps_the_symbol_says_error_and_retries_until_it_works(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator, tmp_path: Path  # noqa: F811
) -> None:
    emulator.inject("/api/v3/*", status=503, times=None)
    async with live_server(emulator_env(isolated_env, emulator)) as base:
        page = await browser.new_page(viewport={"width": 1200, "height": 640}, bypass_csp=True)  # see open_page
        await page.goto(base + BTC_PAGE)
        await badge(page, "error", within_ms=20_000)
        now = await state(page)
        assert now["symbol"] == "BTC/USDT" and now["provider"] == "binance", now
        assert "provider_unavailable" in (now["message"] or ""), now
        await page.wait_for_function("window.chartPage.retries >= 2", timeout=30_000)  # backoff: 1 s, 2 s, ...
        assert (await state(page))["badge"] == "error"
        await screenshot(page, tmp_path, "chart-error-exchange.png")
        emulator.clear_faults()
        await badge(page, "live", within_ms=60_000)
        assert await candle_pixels(page) > 500
        assert (await state(page))["message"] is None


async def test_stale_badge_when_the_exchange_fails_under_a_drawn_series(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator, tmp_path: Path  # noqa: F811
) -> None:
    async with live_server(emulator_env(isolated_env, emulator)) as base:
        page, _ = await open_page(browser, base + BTC_PAGE)
        emulator.inject("/api/v3/klines", status=503, times=None)
        await badge(page, "stale")
        assert (await state(page))["stage"] == "stale"
        await page.mouse.move(600, 300)
        await screenshot(page, tmp_path, "chart-stale.png")


async def test_a_partial_history_says_stale_not_live_and_is_asked_for_again(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    """REST answered with X-Data-Incomplete (the deadline cut a cold 1w computation short, or only
    stored bars answered): the badge says stale even once the stream is live, and the page asks
    for the history again until it is whole."""
    async with live_server(isolated_env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        answers: list[bool] = []
        whole = asyncio.Event()

        async def first_partial(route: Route) -> None:
            if answers:
                await whole.wait()  # the second answer waits for the test
            response = await route.fetch()
            partial = not answers
            answers.append(partial)
            body = await response.json()
            if partial:
                body["bars"] = body["bars"][-3:]
            await route.fulfill(response=response, json=body,
                                headers={**response.headers, **({"x-data-incomplete": "true"} if partial else {})})

        await page.route("**/api/v1/ohlcv?*limit=500*", first_partial)
        await page.goto(base + SIM_PAGE)
        await badge(page, "stale", within_ms=20_000)
        assert await page.evaluate("window.chartPage.store.bars.length") == 3
        await page.wait_for_function("window.chartPage.frames > 0")  # the stream's snapshot came...
        await wait_for(lambda: len(answers) >= 1, within=10)
        assert await page.get_attribute("#status", "data-state") == "stale"  # ... yet not `live`
        await page.wait_for_function("window.chartPage.retries === 1", timeout=20_000)
        whole.set()
        await badge(page, "live", within_ms=20_000)
        assert answers[:2] == [True, False]
        assert await page.evaluate("window.chartPage.store.bars.length") >= 500


async def test_the_price_axis_uses_the_symbols_step_and_the_legend_shows_the_bar_under_the_cursor(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    async with live_server(isolated_env) as base:
        page, _ = await open_page(browser, base + SIM_PAGE)
        await page.wait_for_function("window.chartPage.precision === 2")  # SIM/USD's step is 0.01
        fmt = await page.evaluate("window.chartPage.candles.options().priceFormat")
        assert (fmt["precision"], fmt["minMove"]) == (2, 0.01)
        legend = page.locator("#ohlc")
        last = (await page_bars(page))[-1]
        assert await legend.is_visible() and await legend.get_attribute("data-time") == str(last["time"])
        box = await page.locator("#chart").bounding_box()
        assert box
        await page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
        await page.wait_for_function(f"document.getElementById('ohlc').dataset.time !== '{last['time']}'")
        shown = int(await legend.get_attribute("data-time") or 0)
        bar = next(b for b in await page_bars(page) if b["time"] == shown)
        text = await legend.inner_text()
        for name, key in (("O", "open"), ("H", "high"), ("L", "low"), ("C", "close")):
            assert f"{name} {bar[key]:.2f}" in text, (name, text)
        assert "V " in text
        await page.mouse.move(box["x"] + 5, box["y"] + box["height"] + 80)  # off the chart: the newest bar
        await page.wait_for_function("document.getElementById('ohlc').dataset.time === "
                                     "String(window.chartPage.store.last.time)")


async def test_stocks_show_the_servers_answer_and_work_with_the_users_own_alpaca_key(
    browser: Browser, isolated_env: dict[str, str], emulator: ExchangeEmulator, tmp_path: Path  # noqa: F811
) -> None:
    key = "u" * 32
    emulator.alpaca.accounts = {"user-alpaca": ("user-secret", "iex")}
    env = {**isolated_env, "AUTH_ENABLED": "true", "API_KEYS": hash_key(key), "API_KEYS_FROM_DB": "false",
           "CREDENTIALS_KEYS": Fernet.generate_key().decode(), "ENABLED_MARKETS": "sim,stocks",
           "PROVIDER_URLS": json.dumps({"alpaca": emulator.url}), "PROVIDER_TIMEOUT": "2"}
    async with live_server(env) as base:
        page = await browser.new_page(viewport={"width": 1200, "height": 640}, bypass_csp=True)  # see open_page
        await page.goto(base + SIM_PAGE)
        await page.wait_for_selector("#auth:not([hidden])", timeout=20_000)
        await page.fill("#apikey", key)
        await page.click("#auth button")
        await page.wait_for_function("window.chartPage.firstCandlesMs !== null", timeout=30_000)
        await page.select_option("#market", "stocks")
        await badge(page, "error", within_ms=20_000)
        options = await page.eval_on_selector_all("#provider option", "els => els.map(e => [e.value, e.textContent])")
        assert options == [["alpaca", "alpaca (not configured)"]]
        now = await state(page)
        assert "ALPACA_API_KEY_ID" in (now["message"] or "") and "/credentials/alpaca" in now["message"], now
        assert now["drawn"] == 0
        # The user stores their own Alpaca key: /providers says configured for them, the chart draws.
        stored = await page.evaluate(f"""fetch('/api/v1/credentials/alpaca', {{method: 'PUT',
            headers: {{'X-API-Key': '{key}', 'Content-Type': 'application/json'}},
            body: JSON.stringify({{api_key: 'user-alpaca', secret: 'user-secret'}})}}).then((r) => r.status)""")
        assert stored == 204
        providers = await page.evaluate(f"""fetch('/api/v1/providers?market=stocks',
            {{headers: {{'X-API-Key': '{key}'}}}}).then((r) => r.json())""")
        assert [(p["provider"], p["configured"]) for p in providers["providers"]] == [("alpaca", True)]
        anonymous = await page.evaluate("fetch('/api/v1/providers?market=stocks').then((r) => r.status)")
        assert anonymous == 401
        await page.goto(base + "/?market=stocks&provider=alpaca&symbol=AAPL&timeframe=1h")  # same tab: key kept
        await page.wait_for_function("window.chartPage.store && window.chartPage.store.bars.length > 10",
                                     timeout=30_000)
        assert await candle_pixels(page) > 300
        assert await page.eval_on_selector_all("#provider option", "els => els.map(e => e.textContent)") == ["alpaca"]
        assert "AAPL" in await page.eval_on_selector_all("#symbols option", "els => els.map(e => e.value)")
        await page.mouse.move(600, 300)
        await asyncio.sleep(0.5)
        await screenshot(page, tmp_path, "chart-stocks.png")


async def test_the_api_key_is_sent_in_a_first_auth_message_never_in_the_url_nor_local_storage(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    """docs/api.md, WebSocket: with auth on the key goes in the X-API-Key header or the first message;
    the page uses the message (the server side of it lands with the WebSocket work)."""
    key = "k" * 32
    env = {**isolated_env, "AUTH_ENABLED": "true", "API_KEYS": hash_key(key), "API_KEYS_FROM_DB": "false"}
    async with live_server(env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        watch = Watch(page)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(base + SIM_PAGE)
        await page.evaluate(f"localStorage.setItem('market-data.api-key', '{key}')")  # an older page's copy
        await page.wait_for_selector("#auth:not([hidden])", timeout=20_000)
        await page.fill("#apikey", key)
        await page.click("#auth button")
        await page.wait_for_function("window.chartPage.firstCandlesMs !== null", timeout=30_000)
        await wait_for(lambda: bool(sockets), within=20)
        assert all("api_key" not in url and key not in url for url in sockets), sockets
        assert await page.evaluate("localStorage.getItem('market-data.api-key')") is None
        assert await page.evaluate("sessionStorage.getItem('market-data.api-key')") == key
        # Needs the server to accept a handshake without the key (the WebSocket side of issue 23.5).
        await wait_for(lambda: bool(watch.sent), within=20)
        assert watch.sent[0] == {"op": "auth", "api_key": key}
        assert watch.sent[1]["op"] == "subscribe"
        await badge(page, "live")  # the server took the auth message


def emulator_env(env: dict[str, str], emulator: ExchangeEmulator) -> dict[str, str]:  # noqa: F811
    """A live server whose ``binance`` is the emulator, with quick retries."""
    return {**env, "ENABLED_MARKETS": "sim,crypto", "CCXT_EXCHANGES": "binance",
            "PROVIDER_URLS": json.dumps({"binance": emulator.url}), "PROVIDER_TIMEOUT": "1",
            "PROVIDER_RETRIES": "1", "PROVIDER_RETRY_MAX_WAIT": "0.05", "POLL_MAX_BACKOFF_SECONDS": "0.5",
            "PROVIDER_BUDGETS": json.dumps({"binance": "off"}), "PROVIDER_BAN_DEFAULT": "0.1"}
