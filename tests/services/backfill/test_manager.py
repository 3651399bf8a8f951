"""Backfills against the exchange emulator (real CCXT plugin and HTTP): holes, maintenance windows,
faults, non-retryable errors. Upstream calls are counted in the emulator's request log."""

from __future__ import annotations

import math
import time
from typing import Any

import asyncpg
import pytest

from core.metrics import BACKFILL_CHUNK_FAILURES
from core.types import Series
from tests.support.backfill import (
    BTC,
    DAY_MS,
    KLINES,
    MINUTE_MS,
    T0,
    candles,
    emu_config,
    manager,
    post_backfill,
    running_app,
    seed,
    stored,
    table_stats,
    wait_job,
)
from tests.support.exchange_emulator import ExchangeEmulator, fixtures

emulator = fixtures.emulator
MONTH_END = T0 + 31 * DAY_MS  # January 2024: 44,640 minutes


async def test_month_with_a_hole_fetches_only_the_hole(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    hole = (T0 + 14 * DAY_MS + 17 * MINUTE_MS, T0 + 16 * DAY_MS + 3 * MINUTE_MS)
    n = (hole[1] - hole[0]) // MINUTE_MS  # 2,866 minutes: 3 chunks of at most 1,000
    async with running_app(emu_config(app_config, emulator)) as app:
        await seed(pg, [(T0, hole[0]), (hole[1], MONTH_END)])
        assert await table_stats(pg) == (44_640 - n, 44_640 - n)
        client = app.test_client()
        status, body = await post_backfill(client, T0, MONTH_END)
        assert status == 202 and body["status"] in ("queued", "running")
        job = await wait_job(client, body["job_id"])
    assert job["status"] == "done" and job["error"] is None and job["progress"] == 1.0
    assert job["bars_written"] == n and job["chunks_total"] == math.ceil(n / 1000) == 3
    # Only the hole was asked for: 3 kline calls, each inside the hole.
    calls = emulator.requests(KLINES)
    assert len(calls) == 3
    assert all(hole[0] <= int(r.query["startTime"]) < hole[1] for r in calls)
    assert all(int(r.query["endTime"]) < hole[1] for r in calls)
    assert await table_stats(pg) == (44_640, 44_640)
    assert await stored(pg, hole[0] - 5 * MINUTE_MS, hole[1] + 5 * MINUTE_MS) == candles(
        hole[0] - 5 * MINUTE_MS, hole[1] + 5 * MINUTE_MS)


async def test_maintenance_window_is_fetched_once_then_verified_empty(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    window = (T0 + 300 * MINUTE_MS, T0 + 420 * MINUTE_MS)
    emulator.add_maintenance(*window)
    end = T0 + DAY_MS
    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, end)
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "done" and job["bars_written"] == 1440 - 120
        assert emulator.calls(KLINES) == 2
        gaps = await (await client.get(
            f"/api/v1/gaps?market=crypto&provider=binance&symbol=BTC/USDT&start={T0}&end={end}"
        )).get_json()
        assert gaps == {"missing": [], "verified_empty": [list(window)]}
        # Asked again (a new job, the first is done) and through /ohlcv: nothing is fetched.
        _, again = await post_backfill(client, T0, end)
        assert again["job_id"] != body["job_id"]
        job = await wait_job(client, again["job_id"])
        assert job["status"] == "done" and job["chunks_total"] == 0 and job["bars_written"] == 0
        resp = await client.get("/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT"
                                f"&timeframe=1h&start={T0}&end={end}")
        assert resp.status_code == 200
        hours = (await resp.get_json())["bars"]
        assert [b[0] for b in hours] == [T0 + h * 3_600_000 for h in range(24) if h not in (5, 6)]
        assert "provider" not in resp.headers["X-Data-Source"]
        assert emulator.calls(KLINES) == 2
    assert await stored(pg, window[0], window[1]) == []


async def test_injected_429_and_5xx_slow_the_job_but_do_not_fail_it(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    end = T0 + 3 * DAY_MS  # 4,320 minutes: 5 chunks
    before = BACKFILL_CHUNK_FAILURES.labels("binance", "temporary")._value.get()
    # More consecutive failures than the plugin's own retries (PROVIDER_RETRIES=1): the job's
    # chunk-level patience has to carry them.
    emulator.inject(KLINES, status=429, times=3, retry_after=0.2)
    emulator.inject(KLINES, status=503, times=3)
    emulator.inject(KLINES, status=502, times=2)
    config = emu_config(app_config, emulator, BACKFILL_CONCURRENCY=1)
    async with running_app(config) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, end)
        job = await wait_job(client, body["job_id"])
    assert job["status"] == "done", job
    assert job["bars_written"] == 4_320 and job["error"] is None
    faulted = [r for r in emulator.requests(KLINES) if r.fault == "status"]
    assert sorted(r.status for r in faulted) == [429] * 3 + [502] * 2 + [503] * 3
    assert emulator.calls(KLINES) == 5 + 8
    assert BACKFILL_CHUNK_FAILURES.labels("binance", "temporary")._value.get() >= before + 2
    assert await table_stats(pg) == (4_320, 4_320)
    assert await stored(pg, T0, end) == candles(T0, end)


async def test_non_retryable_error_fails_the_job_with_a_readable_error(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.inject(KLINES, status=401, times=None)
    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, T0 + DAY_MS)
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "failed" and job["progress"] < 1.0
        assert job["error"].startswith("provider_error: binance: credentials were refused")
        assert "chunk starting 2024-01-01" in job["error"]
        # Not retried at the job level: one call per chunk started, plugin retries excepted.
        assert emulator.calls(KLINES) <= 2
        # A symbol the exchange dropped after the job was queued fails it just as readably.
        emulator.clear_faults()
        queued, _ = await manager(app).submit(BTC, T0, T0 + 10 * MINUTE_MS)
        from core.types import Series
        from services.backfill import jobs as backfill_jobs

        async with manager(app).db.acquire() as conn:
            gone, _ = await backfill_jobs.enqueue_job(
                conn, Series("crypto", "binance", "XRP/USDT"), T0, T0 + DAY_MS)
        manager(app).runner.wake()
        failed = await wait_job(client, gone.id)
        assert failed["status"] == "failed"
        assert failed["error"].startswith("unknown_symbol: binance has no market 'XRP/USDT'")
        assert (await wait_job(client, queued.id))["status"] == "done"


async def test_stock_week_records_closed_market_hours_as_verified_empty(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    from core.types import Series
    from tests.support.exchange_emulator.candles import in_session

    config = emu_config(app_config, emulator, ALPACA_API_KEY_ID="key",
                        ALPACA_API_SECRET_KEY="secret",
                        PROVIDER_URLS={"binance": emulator.url, "alpaca": emulator.url})
    week = (T0, T0 + 7 * DAY_MS)  # Monday 2024-01-01 to the next Monday
    bars_path = "/v2/stocks/*/bars"
    async with running_app(config) as app:
        client = app.test_client()
        _, body = await post_backfill(client, *week, symbol="AAPL", market="stocks",
                                      provider="alpaca")
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "done" and job["bars_written"] == 5 * 390, job
        calls = emulator.calls(bars_path)
        gaps = await (await client.get(
            f"/api/v1/gaps?market=stocks&provider=alpaca&symbol=AAPL&start={week[0]}&end={week[1]}"
        )).get_json()
        # Every minute outside the session is known empty; nothing is missing.
        assert gaps["missing"] == []
        empty = {t for a, b in gaps["verified_empty"] for t in range(a, b, MINUTE_MS)}
        assert empty == {t for t in range(*week, MINUTE_MS) if not in_session(t)}
        _, again = await post_backfill(client, *week, symbol="AAPL", market="stocks",
                                       provider="alpaca")
        assert (await wait_job(client, again["job_id"]))["chunks_total"] == 0
        assert emulator.calls(bars_path) == calls
    stocks = Series("stocks", "alpaca", "AAPL")
    assert await table_stats(pg, stocks) == (1950, 1950)


@pytest.fixture
def short_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's binance serves only its latest 720 1m bars, as Kraken does."""
    from dataclasses import replace

    from plugins.ccxt_support import CAPABILITIES

    caps = CAPABILITIES["binance"]
    monkeypatch.setitem(CAPABILITIES, "binance",
                        replace(caps, extra={**caps.extra, "history_bars": 720}))


async def test_a_range_older_than_the_provider_serves_fails_the_job_honestly(
    emulator: ExchangeEmulator, app_config: dict[str, Any], short_history: None
) -> None:
    """Issue 24.5: it ended "done" with 0 bars and no error while /gaps showed it all missing."""
    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, T0 + DAY_MS)
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "failed" and job["bars_written"] == 0, job
        assert job["error"].startswith(
            "invalid_parameter: binance serves only its latest 720 1m bars (from "), job
        assert "1,440 minutes from 2024-01-01T00:00:00+00:00 stay missing" in job["error"]
        assert emulator.calls(KLINES) == 0
        gaps = await (await client.get(
            "/api/v1/gaps?market=crypto&provider=binance&symbol=BTC/USDT"
            f"&start={T0}&end={T0 + DAY_MS}")).get_json()
        assert gaps["missing"] == [[T0, T0 + DAY_MS]]
        # Partly served: the served part is written, the job still says what stays missing.
        now = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
        _, body = await post_backfill(client, now - 1440 * MINUTE_MS, now - 60 * MINUTE_MS)
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "failed" and 600 <= job["bars_written"] <= 660, job
        assert "serves only its latest 720 1m bars" in job["error"], job


async def test_an_unknown_symbol_with_nothing_to_fetch_fails_the_job(
    emulator: ExchangeEmulator, app_config: dict[str, Any], short_history: None
) -> None:
    """Issue 24.5: a job queued for a symbol the exchange does not list (the check at POST is
    skipped while the exchange is unreachable) ended "done" when no chunk was left to fetch."""
    from services.backfill import jobs as backfill_jobs

    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        async with manager(app).db.acquire() as conn:
            job, _ = await backfill_jobs.enqueue_job(
                conn, Series("crypto", "binance", "NOPE/USDT"), T0, T0 + DAY_MS)
        manager(app).runner.wake()
        failed = await wait_job(client, job.id)
    assert failed["status"] == "failed" and failed["error"].startswith("unknown_symbol: "), failed


async def test_queries_do_not_queue_jobs_for_minutes_the_provider_no_longer_serves(
    app_config: dict[str, Any], short_history: None
) -> None:
    """Such a job could only fail (see above): /ohlcv's automatic backfills keep to the served
    part of what they miss."""
    config = {**app_config, "CCXT_EXCHANGES": "binance", "BACKFILL_RUNNER": False}
    async with running_app(config) as app:
        backfill = manager(app)
        assert await backfill.schedule_missing(BTC, [(T0, T0 + DAY_MS)]) is None
        now = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
        job_id = await backfill.schedule_missing(BTC, [(now - DAY_MS, now - 60 * MINUTE_MS)])
        assert job_id is not None
        job = await backfill.get_job(job_id)
        assert now - 720 * MINUTE_MS < job.start_ms <= now - 700 * MINUTE_MS
        assert job.end_ms == now - 60 * MINUTE_MS
