"""The chart page's frame handling in a real browser (Debian's Chromium, Playwright) against a live
server for REST, with the page's WebSocket routed by Playwright to a stand-in (``FakeStream``), so
the test chooses every frame: the forming bar updated in place, a revision applied where the bar
stands, a closed bar drawn in full, a ``seq`` jump refetched over REST, a repeated ``seq`` ignored,
and a snapshot that starts after ``since`` joined to what the page held over REST.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from playwright.async_api import Browser

from tests.support import browser as kit
from tests.support.browser import (
    ROOT,
    SIM_PAGE,
    FakeStream,
    Watch,
    as_rows,
    badge,
    live_server,
    page_bars,
    rest_bars,
)
from tests.support.ws import wait_for

pytestmark = pytest.mark.slow
browser, installed, isolated_env = kit.browser, kit.installed, kit.isolated_env  # fixtures


async def test_frames_update_in_place_revisions_land_where_they_belong_and_a_seq_gap_refetches(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    fake = FakeStream()
    async with live_server(isolated_env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
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
        page = await browser.new_page(bypass_csp=True)  # see open_page
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


async def test_a_silent_connection_is_replaced_and_resumed_with_since(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    """A network cut without a close: nothing arrives, not even the pongs of the page's pings, so
    after 25 s the page drops the socket, reconnects and resubscribes from its newest bar."""
    fake = FakeStream()  # it never answers a ping
    async with live_server(isolated_env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        watch = Watch(page)
        await page.route_web_socket("**/api/v1/ws", fake.attach)
        await page.goto(base + SIM_PAGE)
        await badge(page, "live")
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: len(fake.subscribes) == 2, within=60)
        waited = asyncio.get_running_loop().time() - started
        last = (await page_bars(page))[-1]
        assert 20 < waited < 50, waited
        assert fake.subscribes[1]["since"] == last["time"] * 1000
        await badge(page, "live")
        assert await page.evaluate("window.chartPage.stream.reconnects") == 1
        assert watch.errors == []


async def test_a_refused_subscription_is_shown_and_retried_when_temporary(
    browser: Browser, isolated_env: dict[str, str]
) -> None:
    fake = FakeStream()
    fake.refuse = ("provider_unavailable", "sim: unreachable (try again)")
    async with live_server(isolated_env) as base:
        page = await browser.new_page(bypass_csp=True)  # see open_page
        await page.route_web_socket("**/api/v1/ws", fake.attach)
        await page.goto(base + SIM_PAGE)
        await badge(page, "error")
        assert "unreachable" in await page.inner_text("#message")
        await wait_for(lambda: len(fake.subscribes) >= 2, within=10)  # a temporary refusal is retried
        fake.refuse = None
        await badge(page, "live", within_ms=20_000)
        assert not await page.is_visible("#message")
        count = len(fake.subscribes)
        fake.refuse = ("unknown_symbol", "unknown symbol 'NOPE/USD' for provider sim")
        await fake.route.close()  # reconnect: now refused for good
        await badge(page, "error", within_ms=20_000)
        await asyncio.sleep(2)
        assert len(fake.subscribes) == count + 1, "a permanent refusal is not retried"


def test_the_bar_store_unit_tests_pass_under_node() -> None:
    """web/public/store.js (bar merging, backoff, retry waits, legend volumes) under node's test
    runner: tests/js/store.test.mjs."""
    node = shutil.which("node")
    assert node, "needs Node.js (make run and make test need it for web/ too)"
    done = subprocess.run([node, "--test", str(ROOT / "tests" / "js" / "store.test.mjs")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# pass 7" in done.stdout and "# fail 0" in done.stdout, done.stdout
