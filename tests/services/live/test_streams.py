"""Stream feeds through /api/v1/ws: a Binance channel fed by the emulator's kline stream through
the real CCXT Pro client, reconciled with REST klines through the real CCXT REST client.

The emulator's clock is frozen and moved by the tests; the app reads the same clock, so a minute
passes when a test says so. Three instances run with the wall clock."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from app import create_app
from core.timeframes import MINUTE_MS
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import assert_same_bars, fetch_klines
from tests.support.ws import (
    WS_TEST_CONFIG,
    Client,
    assert_ts_monotonic,
    collecting,
    free_port,
    http_session,
    metric,
    wait_for,
    wait_healthy,
)

emulator = fixtures.emulator
ROOT = Path(__file__).resolve().parents[3]
CHANNEL = "crypto:binance:BTC/USDT:1m"
SUB = {"op": "subscribe", "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
       "timeframe": "1m", "history": 3}
CLOCKED = ("services.bars.orchestrator", "services.live.poller", "services.live.service",
           "services.live.streams")


@pytest.fixture
def clock(emulator: ExchangeEmulator, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """The app reads the emulator's frozen clock; ``clock(minutes)`` moves both. It starts ahead
    of the wall clock and only moves forward: the hub stamps snapshots with wall time, and a frame
    fetched (on this clock) before its snapshot is not sent."""
    emulator.now_ms = (int(time.time() * 1000) // MINUTE_MS + 1) * MINUTE_MS + 20_000
    emulator.streams.interval = 0.05
    for module in CLOCKED:
        monkeypatch.setattr(f"{module}.now_ms", emulator.book.now)

    def advance(minutes: int) -> None:
        assert emulator.now_ms is not None
        emulator.now_ms += minutes * MINUTE_MS
    return advance


@pytest.fixture
def stream_app(app_config: dict[str, Any], emulator: ExchangeEmulator) -> Quart:
    return create_app({
        **app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto", "CCXT_EXCHANGES": "binance",
        "PROVIDER_URLS": {"binance": emulator.url},
        "PROVIDER_WS_URLS": {"binance": emulator.ws_url},
        "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1}, "STREAM_SILENCE_SECONDS": 0.5,
        "STREAM_VERIFY_SECONDS": 1.0, "STREAM_RETRY_SECONDS": 0.3, "STREAM_RETRY_MAX_SECONDS": 1.0,
    })


def bars(frames: list[dict[str, Any]], closed: bool | None = None) -> list[list[float]]:
    return [f["bar"] for f in frames if f["type"] == "bar" and not f.get("revised")
            and (closed is None or f["closed"] == closed)]


async def feed_of(app: Quart) -> str | None:
    """The channel's ``feed`` in ``GET /api/v1/channels``."""
    resp = await app.test_client().get("/api/v1/channels")
    rows = [c for c in (await resp.get_json())["channels"] if c["channel"] == CHANNEL]
    return rows[0]["feed"] if rows else None


async def streaming(app: Quart) -> bool:
    return await feed_of(app) == "stream"


async def polled(app: Quart) -> bool:
    return await feed_of(app) == "poll"


async def test_stream_bars_and_closed_bars_equal_rest(
    stream_app: Quart, emulator: ExchangeEmulator, clock: Callable[[int], None]
) -> None:
    async with stream_app.test_app(), collecting(stream_app, SUB) as frames:
        await wait_for(lambda: streaming(stream_app))
        polls = emulator.calls("/api/v3/klines")

        async def closed(n: int) -> None:
            await wait_for(lambda: len(bars(frames, closed=True)) >= n)
        for n in range(1, 4):  # one minute at a time: each closes a bar before the next moves on
            clock(1)
            await closed(n)
        await closed(3)
        assert emulator.streams.subscriptions() == ["btcusdt@kline_1m"]
        # stream bars are pushed, not polled: only the REST checks of closed bars call klines
        assert emulator.calls("/api/v3/klines") - polls <= 3
        got = bars(frames, closed=True)
        rest = await fetch_klines(emulator.url, "1m", int(got[0][0]), int(got[-1][0]) + MINUTE_MS)
        assert_same_bars(got, rest)
        assert_ts_monotonic(frames)


async def test_dropped_stream_goes_stale_then_live_with_no_missing_bar(
    stream_app: Quart, emulator: ExchangeEmulator, clock: Callable[[int], None]
) -> None:
    async with stream_app.test_app(), collecting(stream_app, SUB) as frames:
        await wait_for(lambda: streaming(stream_app))
        clock(1)
        await wait_for(lambda: len(bars(frames, closed=True)) >= 1)
        emulator.streams.refuse = True
        emulator.streams.drop()
        await wait_for(lambda: any(f["type"] == "status" for f in frames))
        clock(3)  # three buckets close while the stream is down
        emulator.streams.refuse = False
        await wait_for(lambda: streaming(stream_app))
        clock(1)
        await wait_for(lambda: len(bars(frames, closed=True)) >= 5)
        statuses = [(f["state"], f["reason"]) for f in frames if f["type"] == "status"]
        assert statuses[0] == ("stale", "stream_dropped") and statuses[-1][0] == "live"
        got = bars(frames, closed=True)
        ts = [int(b[0]) for b in got]
        assert ts == list(range(ts[0], ts[-1] + 1, MINUTE_MS)), "a closed bar is missing"
        assert_same_bars(got, await fetch_klines(emulator.url, "1m", ts[0], ts[-1] + MINUTE_MS))
        assert_ts_monotonic(frames)
        assert metric("stream_reconnects_total",
                      {"provider": "binance", "reason": "dropped"}) >= 1


async def test_stalled_stream_falls_back_to_polling_then_returns(
    stream_app: Quart, emulator: ExchangeEmulator, clock: Callable[[int], None]
) -> None:
    async with stream_app.test_app(), collecting(stream_app, SUB) as frames:
        await wait_for(lambda: streaming(stream_app))
        emulator.streams.stalled = True
        loop = asyncio.get_running_loop()
        stalled_at = loop.time()
        await wait_for(lambda: polled(stream_app))
        assert loop.time() - stalled_at < 0.5 + 1.5  # silence bound plus a poll
        clock(1)  # polling still delivers
        await wait_for(lambda: len(bars(frames, closed=True)) >= 1)
        emulator.streams.stalled = False
        await wait_for(lambda: streaming(stream_app))
        assert emulator.streams.handshakes >= 2  # the stalled connection was closed, dialled anew
        clock(1)
        await wait_for(lambda: len(bars(frames, closed=True)) >= 2)


async def test_malformed_frames_make_the_stream_silent_then_it_is_dialled_anew(
    stream_app: Quart, emulator: ExchangeEmulator, clock: Callable[[int], None]
) -> None:
    """A frame that is not JSON (or a kline frame CCXT cannot place) ends CCXT Pro's receive
    loop, and CCXT's public API cannot see it: the feed finds the stream silent, polls, and dials
    again; no bar is lost or sent out of order."""
    async with stream_app.test_app(), collecting(stream_app, SUB) as frames:
        await wait_for(lambda: streaming(stream_app))
        before = metric("stream_reconnects_total", {"provider": "binance", "reason": "silent"})
        for n, kind in enumerate(("invalid", "json"), start=emulator.streams.handshakes + 1):
            emulator.streams.malformed_kind, emulator.streams.malformed = kind, 1
            await wait_for(lambda: emulator.streams.handshakes >= n)  # noqa: B023 (awaited here)
            await wait_for(lambda: streaming(stream_app))
        clock(1)
        await wait_for(lambda: len(bars(frames, closed=True)) >= 1)
        assert metric("stream_reconnects_total",
                      {"provider": "binance", "reason": "silent"}) - before >= 2
        assert await feed_of(stream_app) == "stream"
        assert_ts_monotonic(frames)


async def test_disagreement_with_rest_is_published_as_a_revision(
    stream_app: Quart, emulator: ExchangeEmulator, clock: Callable[[int], None]
) -> None:
    async with stream_app.test_app(), collecting(stream_app, SUB) as frames:
        await wait_for(lambda: streaming(stream_app))
        before = metric("stream_rest_disagreements_total", {"provider": "binance"})
        emulator.streams.diverge = 1
        clock(1)
        await wait_for(lambda: len(bars(frames, closed=True)) >= 1)
        ((symbol, _, ts),) = emulator.streams.diverged
        assert symbol == "BTCUSDT"
        wrong = next(b for b in bars(frames, closed=True) if int(b[0]) == ts)
        await wait_for(lambda: any(f.get("revised") for f in frames))  # the REST check was due
        revised = next(f["bar"] for f in frames if f.get("revised"))
        rest = await fetch_klines(emulator.url, "1m", ts, ts + MINUTE_MS)
        assert int(revised[0]) == ts and wrong != revised
        assert_same_bars([revised], rest)
        # counted once the check's poll is done (its frames may reach the client first)
        await wait_for(lambda: metric("stream_rest_disagreements_total",
                                      {"provider": "binance"}) - before == 1)
        assert emulator.streams.diverged == [(symbol, "1m", ts)]


async def test_three_instances_hold_one_upstream_stream_and_kill_moves_it(
    app_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    emulator.streams.interval = 0.05
    cfg = {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto", "CCXT_EXCHANGES": "binance",
           "PROVIDER_URLS": {"binance": emulator.url},
           "PROVIDER_WS_URLS": {"binance": emulator.ws_url},
           "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1}}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING",
           **{k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in cfg.items()}}
    port = free_port()
    holder = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited in the loop
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    lease_ttl = float(cfg["LEASE_TTL_SECONDS"])
    try:
        async with http_session() as session:
            await wait_healthy(session, f"http://127.0.0.1:{port}")
            first = await Client(session, f"http://127.0.0.1:{port}/api/v1/ws").open()
            await first.send(SUB)
            await wait_for(lambda: bool(first.of("snapshot")), within=20)
            await wait_for(lambda: emulator.streams.subscriptions() == ["btcusdt@kline_1m"],
                           within=20)
            b, c = create_app(cfg), create_app(cfg)
            async with b.test_app(), c.test_app(), collecting(b, SUB) as fb, \
                    collecting(c, SUB) as fc:
                await asyncio.sleep(3 * lease_ttl)
                assert emulator.streams.subscriptions() == ["btcusdt@kline_1m"]
                assert emulator.streams.to_dict()["connections"] == 1
                dials = emulator.streams.handshakes
                os.killpg(holder.pid, signal.SIGKILL)  # no lease release, no unsubscribe
                await asyncio.to_thread(holder.wait, 10)
                killed = time.monotonic()
                await wait_for(lambda: emulator.streams.handshakes > dials, within=10)
                await wait_for(lambda: emulator.streams.subscriptions() == ["btcusdt@kline_1m"])
                assert time.monotonic() - killed < 2 * lease_ttl + 1.0
                assert await streaming(b) and await streaming(c)
                await asyncio.sleep(3 * lease_ttl)  # still one upstream stream
                assert emulator.streams.subscriptions() == ["btcusdt@kline_1m"]
                mark = len(fb), len(fc)
                # the next minute begins at the exchange: the new holder's stream brings it to all
                emulator.now_ms = (int(time.time() * 1000) // MINUTE_MS + 1) * MINUTE_MS + 1000
                await wait_for(lambda: len(fb) > mark[0] and len(fc) > mark[1])
                assert any(f["type"] == "bar" and f["closed"] for f in fb[mark[0]:])
                assert_ts_monotonic(fb)
                assert_ts_monotonic(fc)
            await first.close()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            await asyncio.to_thread(holder.wait, 10)
