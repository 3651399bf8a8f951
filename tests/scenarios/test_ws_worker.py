"""SubscriptionWorker through /api/v1/ws on a clock running 60x (a minute bucket every second):
closed bars carry the provider's final values, an outage gives ``stale`` then ``live`` and no
missing bar in the stream or in storage, ``ts`` never goes backwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from app import create_app
from app_extensions.services import get_services
from core.errors import NetworkPluginError
from core.timeframes import MINUTE_MS, bucket_start, resample, round_bar
from core.types import Series
from plugins.sim import sim_bar
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import assert_same_bars, fetch_klines
from tests.support.helpers import clear_shared_markets, select_1m_bars
from tests.support.tcp_proxy import TcpProxy
from tests.support.ws import WS_TEST_CONFIG, assert_ts_monotonic, collecting, metric, wait_for

emulator = fixtures.emulator
SPEED = 60
SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1m",
       "history": 3}


@pytest.fixture
def fast_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Milliseconds on a clock running ``SPEED`` times faster than the wall clock."""
    real0 = time.time()

    def now() -> int:
        return int((real0 + (time.time() - real0) * SPEED) * 1000)

    for module in ("plugins.sim", "services.bars.orchestrator", "services.live.poller", "services.live.service"):
        monkeypatch.setattr(f"{module}.now_ms", now)
    return now


def closed(frames: list[dict[str, Any]]) -> list[list[float]]:
    return [f["bar"] for f in frames if f["type"] == "bar" and f["closed"]]


def assert_stale_live_and_no_hole(frames: list[dict[str, Any]]) -> list[list[float]]:
    """One stale/live pair, ts never backwards, and contiguous closed 1m bars; returns them."""
    statuses = [(f["state"], f["reason"]) for f in frames if f["type"] == "status"]
    assert statuses == [("stale", "provider_unavailable"), ("live", "recovered")]
    assert_ts_monotonic(frames)
    got = closed(frames)
    ts = [int(b[0]) for b in got]
    assert ts == list(range(ts[0], ts[-1] + 1, MINUTE_MS)), "a closed bar is missing"
    return got


async def test_outage_gives_stale_then_live_and_no_missing_bar(
    app_config: dict[str, Any], fast_clock: Callable[[], int], pg: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with app.test_app():
        plugin = await get_services(app).markets.get_plugin("sim", "sim")
        real_fetch, down = plugin.fetch_ohlcv, asyncio.Event()

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if down.is_set():
                raise NetworkPluginError("emulated exchange outage")
            return await real_fetch(*args, **kwargs)

        monkeypatch.setattr(plugin, "fetch_ohlcv", flaky)
        async with collecting(app, SUB) as frames:
            await wait_for(lambda: len(closed(frames)) >= 1)
            down.set()
            outage_start = fast_clock()
            await wait_for(lambda: any(f["type"] == "status" for f in frames))
            # three minute buckets close while the exchange is down
            await wait_for(lambda: fast_clock() > bucket_start(outage_start, "1m") + 3 * MINUTE_MS + 500)
            down.clear()
            last_missed = bucket_start(outage_start, "1m") + 2 * MINUTE_MS
            await wait_for(lambda: any(b[0] > last_missed for b in closed(frames)))
        got = assert_stale_live_and_no_hole(frames)
        ts = [int(b[0]) for b in got]
        for bar in got:  # final values, as the provider has them
            assert bar == sim_bar(42, "SIM/USD", int(bar[0]))
        series = Series("sim", "sim", "SIM/USD")

        async def stored() -> bool:
            rows = await select_1m_bars(pg, series, ts[0], ts[-1] + MINUTE_MS)
            return [r[0] for r in rows] == ts
        await wait_for(stored)


async def test_closed_bar_equals_the_emulator_kline(
    app_config: dict[str, Any], fast_clock: Callable[[], int], emulator: ExchangeEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_shared_markets()
    monkeypatch.setattr(emulator.book, "now", fast_clock)
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto",
                      "PROVIDER_URLS": {"binance": emulator.url},
                      "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1}})
    sub = {**SUB, "market": "crypto", "provider": "binance", "symbol": "BTC/USDT"}
    async with app.test_app(), collecting(app, sub) as frames:
        await wait_for(lambda: len(closed(frames)) >= 2)
    assert_ts_monotonic(frames)
    for bar in closed(frames):
        ts = int(bar[0])
        assert_same_bars([bar], await fetch_klines(emulator.url, "1m", ts, ts + MINUTE_MS))


async def test_a_5m_channel_closes_its_bucket_with_the_aggregate_of_its_minutes(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real0 = time.time()

    def now() -> int:  # 300x: a 5m bucket a second
        return int((real0 + (time.time() - real0) * 300) * 1000)

    for module in ("plugins.sim", "services.bars.orchestrator", "services.live.poller", "services.live.service"):
        monkeypatch.setattr(f"{module}.now_ms", now)
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with app.test_app(), collecting(app, {**SUB, "timeframe": "5m"}) as frames:
        await wait_for(lambda: len(closed(frames)) >= 2)
    assert_ts_monotonic(frames)
    for bar in closed(frames):
        start = int(bar[0])
        assert start % (5 * MINUTE_MS) == 0
        minutes = [sim_bar(42, "SIM/USD", start + i * MINUTE_MS) for i in range(5)]
        assert bar == round_bar(resample(minutes, "5m")[0])  # rounded as REST rounds


async def test_closed_bars_missed_by_a_database_outage_are_written_when_it_returns(
    app_config: dict[str, Any], fast_clock: Callable[[], int], pg: asyncpg.Connection
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        url = app_config["DATABASE_URL"].replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim", "DATABASE_URL": url})
        async with app.test_app(), collecting(app, SUB) as frames:
            failed_writes = metric("ws_storage_errors_total")
            proxy.cut()
            cut_at = len(closed(frames))
            await wait_for(lambda: len(closed(frames)) >= cut_at + 3)  # streaming goes on meanwhile
            assert metric("ws_storage_errors_total") > failed_writes
            proxy.restore()
            got = [int(b[0]) for b in closed(frames)]

            async def stored() -> bool:
                rows = await select_1m_bars(pg, Series("sim", "sim", "SIM/USD"), got[0], got[-1] + MINUTE_MS)
                return [r[0] for r in rows] == got
            await wait_for(stored)
    finally:
        await proxy.stop()


async def test_emulator_outage_gives_stale_then_live_and_no_missing_bar(
    app_config: dict[str, Any], fast_clock: Callable[[], int], emulator: ExchangeEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_shared_markets()
    monkeypatch.setattr(emulator.book, "now", fast_clock)
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto",
                      "PROVIDER_URLS": {"binance": emulator.url}, "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1},
                      "PROVIDER_TIMEOUT": 0.5, "PROVIDER_RETRIES": 1, "PROVIDER_RETRY_MAX_WAIT": 0.05})
    sub = {**SUB, "market": "crypto", "provider": "binance", "symbol": "BTC/USDT"}
    async with app.test_app(), collecting(app, sub) as frames:
        await wait_for(lambda: len(closed(frames)) >= 1)
        emulator.inject("/api/v3/klines", status=503, times=None)  # the exchange's gateway fails
        outage_start = fast_clock()
        await wait_for(lambda: any(f["type"] == "status" for f in frames))
        await wait_for(lambda: fast_clock() > bucket_start(outage_start, "1m") + 3 * MINUTE_MS + 500)
        emulator.clear_faults()
        last_missed = bucket_start(outage_start, "1m") + 2 * MINUTE_MS
        await wait_for(lambda: any(b[0] > last_missed for b in closed(frames)))
    got = assert_stale_live_and_no_hole(frames)
    ts = [int(b[0]) for b in got]
    assert_same_bars(got, await fetch_klines(emulator.url, "1m", ts[0], ts[-1] + MINUTE_MS))
