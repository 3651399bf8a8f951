"""The emulator's Binance kline streams (through the real CCXT Pro client and raw WebSocket
clients), its bar revisions, and its Binance weight enforcement (through the real CCXT REST
client)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxtpro
import pytest
import pytest_asyncio

from core.timeframes import HOUR_MS, MINUTE_MS
from plugins.ccxt_support import rebase_urls
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.candles import minute_candle
from tests.support.exchange_emulator.checks import NO_LEAKS, assert_same_bars, fetch_klines
from tests.support.exchange_emulator.weights import WeightBook

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC
NOW = T0 + 5 * MINUTE_MS + 30_000


def pointed(exchange: Any, emu: ExchangeEmulator) -> Any:
    """A CCXT (Pro) binance whose REST and stream URLs are the emulator's, spot markets only."""
    exchange.urls["api"] = rebase_urls(exchange.urls["api"], emu.url)
    if "ws" in exchange.urls["api"]:
        exchange.urls["api"]["ws"]["spot"] = emu.ws_url + "/ws"
    exchange.options["fetchMarkets"] = {"types": ["spot"]}
    exchange.options["fetchMargins"] = False
    exchange.has["fetchCurrencies"] = False
    return exchange


@pytest_asyncio.fixture
async def pro(emulator: ExchangeEmulator) -> AsyncIterator[Any]:
    emulator.now_ms = NOW
    emulator.streams.interval = 0.05
    exchange = pointed(ccxtpro.binance({"enableRateLimit": False}), emulator)
    try:
        yield exchange
    finally:
        await exchange.close()


async def watch_until(pro: Any, pred: Any, symbol: str = "BTC/USDT",
                      tf: str = "1m") -> list[list[float]]:
    async def loop() -> list[list[float]]:
        while True:
            bars = await pro.watch_ohlcv(symbol, tf)
            if pred(bars):
                return list(pro.ohlcvs[symbol][tf])
    return await asyncio.wait_for(loop(), 5.0)


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(5.0):
        while len(out) < n:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            try:
                out.append(json.loads(msg.data))
            except ValueError:
                out.append(msg.data)
    return out


async def test_ccxt_pro_watch_ohlcv_bars_equal_rest(
    emulator: ExchangeEmulator, pro: Any
) -> None:
    bars = await watch_until(pro, lambda b: b and b[-1][0] == T0 + 5 * MINUTE_MS)
    assert bars[-1][:5] == list(minute_candle("BTCUSDT", T0 + 5 * MINUTE_MS)[:5])
    emulator.now_ms = NOW + 2 * MINUTE_MS  # two buckets later: the stream closes the one it had
    bars = await watch_until(pro, lambda b: b[-1][0] == T0 + 7 * MINUTE_MS)
    rest = await fetch_klines(emulator.url, "1m", T0 + 5 * MINUTE_MS, T0 + 6 * MINUTE_MS)
    assert_same_bars([b for b in bars if b[0] == T0 + 5 * MINUTE_MS], rest)
    assert emulator.calls("/ws/*") == 1  # one connection (CCXT dials /ws/<stream index>)
    assert emulator.streams.subscriptions() == ["btcusdt@kline_1m"]
    # a second channel of the same exchange rides on the same stream connection
    await watch_until(pro, lambda b: bool(b), symbol="ETH/USDT", tf="5m")
    assert emulator.calls("/ws/*") == 1
    assert emulator.streams.subscriptions() == ["btcusdt@kline_1m", "ethusdt@kline_5m"]


async def test_raw_single_and_combined_streams(emulator: ExchangeEmulator) -> None:
    emulator.now_ms = NOW
    emulator.streams.interval = 0.05
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(emulator.ws_url + "/ws/btcusdt@kline_1m") as ws:
            first = (await frames(ws, 1))[0]
            assert first["e"] == "kline" and first["s"] == "BTCUSDT"
            k = first["k"]
            assert (k["t"], k["T"], k["i"], k["x"]) == (T0 + 5 * MINUTE_MS,
                                                         T0 + 6 * MINUTE_MS - 1, "1m", False)
            assert float(k["c"]) == minute_candle("BTCUSDT", T0 + 5 * MINUTE_MS)[4]
            emulator.now_ms = NOW + MINUTE_MS
            got = await frames(ws, 6)
            closed = [f["k"] for f in got if f["k"]["x"]]
            assert closed and closed[0]["t"] == T0 + 5 * MINUTE_MS
            assert got[-1]["k"]["t"] == T0 + 6 * MINUTE_MS and not got[-1]["k"]["x"]
        url = emulator.ws_url + "/stream?streams=btcusdt@kline_1m/ethusdt@kline_5m"
        async with http.ws_connect(url) as ws:
            got = await frames(ws, 4)
            assert {f["stream"] for f in got} == {"btcusdt@kline_1m", "ethusdt@kline_5m"}
            assert all(f["data"]["k"]["i"] == f["stream"][-2:] for f in got)
            await ws.send_json({"method": "UNSUBSCRIBE", "params": ["ethusdt@kline_5m"], "id": 7})
            await ws.send_json({"method": "SUBSCRIBE", "params": ["solusdt@kline_1h"], "id": 8})
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 9})
            await ws.send_json({"method": "SUBSCRIBE", "params": ["nope@kline_1m"], "id": 10})
            await ws.send_json({"method": "FLY", "id": 11})
            await ws.send_str("not json")
            replies: dict[Any, Any] = {}
            async with asyncio.timeout(5):
                while len(replies) < 6:
                    msg = json.loads((await ws.receive()).data)
                    if "stream" not in msg:
                        replies[msg["id"]] = msg
            assert replies[7] == {"result": None, "id": 7} == {**replies[8], "id": 7}
            assert replies[9]["result"] == ["btcusdt@kline_1m", "solusdt@kline_1h"]
            assert replies[10]["error"]["code"] == 2 and replies[11]["error"]["code"] == 2
            assert replies[None]["error"]["code"] == 3


async def test_drop_refuse_and_stall(emulator: ExchangeEmulator, pro: Any) -> None:
    await watch_until(pro, bool)
    emulator.streams.refuse = True
    assert emulator.streams.drop() == 1
    with pytest.raises(ccxtpro.NetworkError):
        await asyncio.wait_for(pro.watch_ohlcv("BTC/USDT", "1m"), 5)
    with pytest.raises(ccxtpro.NetworkError):  # the handshake is refused (503)
        await asyncio.wait_for(pro.watch_ohlcv("BTC/USDT", "1m"), 5)
    emulator.streams.refuse = False
    pro.ws_dial_backoff = {}
    await watch_until(pro, bool)
    emulator.streams.stalled = True
    sent = emulator.streams.frames_sent
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pro.watch_ohlcv("BTC/USDT", "1m"), 0.5)
    assert emulator.streams.frames_sent == sent and emulator.streams.to_dict()["connections"] == 1
    emulator.streams.stalled = False
    await watch_until(pro, bool)


async def test_malformed_frames_and_diverging_closed_bar(emulator: ExchangeEmulator) -> None:
    emulator.now_ms = NOW
    emulator.streams.interval = 0.05
    emulator.streams.malformed, emulator.streams.malformed_kind = 1, "json"
    async with aiohttp.ClientSession() as http, http.ws_connect(emulator.ws_url + "/ws/btcusdt@kline_1m") as ws:
        bad, good = await frames(ws, 2)
        assert "t" not in bad["k"] and good["k"]["t"] == T0 + 5 * MINUTE_MS
        emulator.streams.malformed, emulator.streams.malformed_kind = 1, "invalid"
        bad = (await frames(ws, 1))[0]
        assert isinstance(bad, str)
        emulator.streams.diverge = 1
        emulator.now_ms = NOW + MINUTE_MS
        got = await frames(ws, 4)
    closed = next(f["k"] for f in got if f["k"]["x"])
    rest = await fetch_klines(emulator.url, "1m", T0 + 5 * MINUTE_MS, T0 + 6 * MINUTE_MS)
    assert float(closed["c"]) != rest[0][4] and float(closed["o"]) == rest[0][1]
    assert emulator.streams.diverged == [("BTCUSDT", "1m", T0 + 5 * MINUTE_MS)]


async def test_revise_changes_rest_aggregates_and_can_be_announced(
    emulator: ExchangeEmulator
) -> None:
    emulator.now_ms = T0 + 2 * HOUR_MS
    ts = T0 + 30 * MINUTE_MS
    before_1m = await fetch_klines(emulator.url, "1m", ts, ts + MINUTE_MS)
    before_1h = await fetch_klines(emulator.url, "1h", T0, T0 + HOUR_MS)
    async with aiohttp.ClientSession() as http:
        ctl = emulator.url + "/__emulator/revise"
        async with http.post(ctl, json={"symbol": "BTCUSDT", "ts": ts, "high": 10**6,
                                        "volume": 5000}) as r:
            assert r.status == 201 and (await r.json())["bar"][2] == 10**6
        async with http.post(ctl, json={"symbol": "BTCUSDT", "ts": ts + 1}) as r:
            assert r.status == 400
        async with http.post(ctl, json={"symbol": "BTCUSDT", "ts": ts, "low": 10**7}) as r:
            assert r.status == 400
    after_1m = await fetch_klines(emulator.url, "1m", ts, ts + MINUTE_MS)
    after_1h = await fetch_klines(emulator.url, "1h", T0, T0 + HOUR_MS)
    assert after_1m[0][2] == 10**6 and after_1m[0][5] == 5000 and before_1m[0][2] != 10**6
    assert after_1h[0][2] == 10**6 and after_1h[0][5] > before_1h[0][5]
    assert after_1h[0][1] == before_1h[0][1]
    # a Coinbase-like correction: the stream sends the old timestamp again, closed, new values
    emulator.streams.interval = 30
    async with aiohttp.ClientSession() as http, http.ws_connect(emulator.ws_url + "/ws/btcusdt@kline_1m") as ws:
        await frames(ws, 1)
        emulator.revise("BTCUSDT", ts, announce=True, close=1.5, low=1.0)
        k = (await frames(ws, 1))[0]["k"]
    assert (k["t"], k["x"], float(k["c"])) == (ts, True, 1.5)
    emulator.reset()
    assert await fetch_klines(emulator.url, "1m", ts, ts + MINUTE_MS) == before_1m


def test_weight_book_windows_429_then_418_ban() -> None:
    book = WeightBook()
    book.configure(limit=6, window=60, ban_after=2, ban_seconds=120)
    assert [book.admit("/api/v3/klines", 60.0 + i) for i in range(3)] == [None] * 3
    assert book.used == 6 and book.admit("/v2/stocks/AAPL/bars", 61) is None
    assert book.admit("/api/v3/klines", 70) == (429, 50)
    assert book.admit("/api/v3/klines", 71) == (429, 49)  # first violation
    assert book.admit("/api/v3/klines", 72) == (418, 120)  # kept going: banned
    assert book.admit("/api/v3/time", 125) == (418, 67)  # a new window does not lift a ban
    assert book.admit("/api/v3/klines", 192) is None and book.used == 2
    for t in (193, 194):
        book.admit("/api/v3/klines", t)
    book.admit("/api/v3/klines", 195)
    assert book.admit("/api/v3/klines", 196)[0] == 429  # type: ignore[index]
    assert book.admit("/api/v3/klines", 197) == (418, 240)  # repeat offender: twice as long
    assert (book.refused_429, book.refused_418) == (4, 3)
    with pytest.raises(ValueError):
        book.configure(window=0)


async def test_weight_enforcement_through_ccxt(emulator: ExchangeEmulator) -> None:
    emulator.weights.configure(limit=10, window=4.0, ban_after=2, ban_seconds=1.5)
    exchange = pointed(ccxt_async.binance({"enableRateLimit": False}), emulator)
    try:
        await asyncio.sleep(4.0 - time.time() % 4.0 + 0.01)  # at the start of a window
        for i in range(5):
            await exchange.public_get_klines({"symbol": "BTCUSDT", "interval": "1m"})
            assert exchange.last_response_headers["X-MBX-USED-WEIGHT-1M"] == str(2 * i + 2)
        with pytest.raises(ccxt_async.DDoSProtection):
            await exchange.public_get_klines({"symbol": "BTCUSDT", "interval": "1m"})
        assert 1 <= int(exchange.last_response_headers["Retry-After"]) <= 4
        with pytest.raises(ccxt_async.DDoSProtection):
            await exchange.public_get_klines({"symbol": "BTCUSDT", "interval": "1m"})
        with pytest.raises(ccxt_async.DDoSProtection):  # 418 (statuses checked below)
            await exchange.public_get_time()
        assert exchange.last_response_headers["Retry-After"] == "2"
        assert emulator.weights.to_dict()["refused_418"] == 1
        await asyncio.sleep(max(0.0, emulator.weights.banned_until - time.time()) + 0.01)
        await asyncio.sleep(4.0 - time.time() % 4.0 + 0.01)  # the ban and its window ended
        await exchange.public_get_klines({"symbol": "BTCUSDT", "interval": "1m"})
        assert int(exchange.last_response_headers["X-MBX-USED-WEIGHT-1M"]) >= 2
    finally:
        await exchange.close()
    statuses = [r.status for r in emulator.requests("/api/v3/*")]
    assert statuses == [200] * 5 + [429, 429, 418, 200]


async def test_more_symbols_for_benches(emulator: ExchangeEmulator) -> None:
    emulator.streams.interval = 0.05
    async with aiohttp.ClientSession() as http:
        async with http.post(emulator.url + "/__emulator/settings",
                             json={"add_binance_symbols": 3}) as r:
            assert (await r.json())["binance_symbols"] == 8
        async with http.get(emulator.url + "/api/v3/exchangeInfo") as r:
            assert "X003USDT" in {s["symbol"] for s in (await r.json())["symbols"]}
        async with http.ws_connect(emulator.ws_url + "/ws/x002usdt@kline_1m") as ws:
            assert (await frames(ws, 1))[0]["k"]["s"] == "X002USDT"
    assert emulator.binance.add_symbols(1) == ["X004USDT"]
