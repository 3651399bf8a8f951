"""The exchange emulator itself: Binance and Alpaca semantics, candles, faults, control API."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS, resample
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.candles import CandleBook, in_session, minute_candle
from tests.support.exchange_emulator.checks import NO_LEAKS, as_bars, assert_same_bars

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def test_minute_candles_are_deterministic_and_continuous() -> None:
    a = [minute_candle("BTCUSDT", T0 + i * MINUTE_MS) for i in range(200)]
    assert a == [minute_candle("BTCUSDT", T0 + i * MINUTE_MS) for i in range(200)]
    for prev, cur in itertools.pairwise(a):
        assert cur[1] == prev[4]  # this open is the previous close
    for _, o, h, low, c, v in a:
        assert h >= max(o, c) and low <= min(o, c) and v > 0
    assert minute_candle("ETHUSDT", T0) != minute_candle("BTCUSDT", T0)


async def test_klines_params(emulator: ExchangeEmulator, http: aiohttp.ClientSession) -> None:
    url = emulator.url + "/api/v3/klines"
    status, rows = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=T0)
    assert status == 200 and len(rows) == 500  # default limit
    assert [r[0] for r in rows] == [T0 + i * MINUTE_MS for i in range(500)]
    assert rows[0][6] == T0 + MINUTE_MS - 1 and isinstance(rows[0][1], str)
    _, rows = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=T0,
                        endTime=T0 + 10 * MINUTE_MS, limit=1000)
    assert len(rows) == 11  # endTime is inclusive of an open time
    _, rows = await get(http, url, symbol="BTCUSDT", interval="1h", endTime=T0 + 5 * HOUR_MS,
                        limit=3)
    assert [r[0] for r in rows] == [T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS, T0 + 5 * HOUR_MS]
    assert (await get(http, url, symbol="BTCUSDT", interval="1m", limit=1001))[1]["code"] == -1130
    assert (await get(http, url, symbol="NOPE", interval="1m"))[1] == {"code": -1121,
                                                                      "msg": "Invalid symbol."}
    assert (await get(http, url, symbol="BTCUSDT", interval="7m"))[1]["code"] == -1120
    status, body = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=T0 + 1,
                             endTime=T0)
    assert status == 400 and body["code"] == -1023


@pytest.mark.parametrize("interval,size", [("5m", 5 * MINUTE_MS), ("1h", HOUR_MS),
                                           ("4h", 4 * HOUR_MS), ("1d", DAY_MS)])
async def test_higher_intervals_match_resampled_minutes(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession, interval: str, size: int
) -> None:
    url = emulator.url + "/api/v3/klines"
    end = T0 + 2 * DAY_MS
    minutes: list[list[float]] = []
    since = T0
    while since < end:
        _, rows = await get(http, url, symbol="ETHUSDT", interval="1m", startTime=since,
                            endTime=end - 1, limit=1000)
        minutes += as_bars(rows)
        since = int(rows[-1][0]) + MINUTE_MS
    _, rows = await get(http, url, symbol="ETHUSDT", interval=interval, startTime=T0,
                        endTime=end - 1, limit=1000)
    assert len(rows) == 2 * DAY_MS // size
    assert_same_bars(as_bars(rows), resample(minutes, interval))


async def test_week_buckets_start_on_monday(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession
) -> None:
    _, rows = await get(http, emulator.url + "/api/v3/klines", symbol="BTCUSDT", interval="1w",
                        startTime=T0 - 3 * DAY_MS, limit=3)
    assert [r[0] for r in rows] == [T0, T0 + WEEK_MS, T0 + 2 * WEEK_MS]
    first_day = minute_candle("BTCUSDT", T0)
    assert float(rows[0][1]) == first_day[1]


async def test_maintenance_window_has_no_candles(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_maintenance(T0 + 10 * MINUTE_MS, T0 + 70 * MINUTE_MS)
    url = emulator.url + "/api/v3/klines"
    _, rows = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=T0, limit=20)
    ts = [r[0] for r in rows]
    assert ts[:10] == [T0 + i * MINUTE_MS for i in range(10)]
    assert ts[10] == T0 + 70 * MINUTE_MS
    _, rows = await get(http, url, symbol="BTCUSDT", interval="1h", startTime=T0, limit=2)
    assert float(rows[0][4]) == minute_candle("BTCUSDT", T0 + 9 * MINUTE_MS)[4]  # last before
    assert float(rows[1][1]) == minute_candle("BTCUSDT", T0 + 70 * MINUTE_MS)[1]
    _, rows = await get(http, url, symbol="BTCUSDT", interval="1m",
                        startTime=T0 + 20 * MINUTE_MS, endTime=T0 + 60 * MINUTE_MS)
    assert rows == []


async def test_exchange_info_time_and_tickers(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession
) -> None:
    _, info = await get(http, emulator.url + "/api/v3/exchangeInfo")
    assert {"BTCUSDT", "ETHBTC"} <= {s["symbol"] for s in info["symbols"]}
    for family in ("/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"):
        assert (await get(http, emulator.url + family))[1]["symbols"] == []
    emulator.now_ms = T0 + DAY_MS
    assert (await get(http, emulator.url + "/api/v3/time"))[1] == {"serverTime": T0 + DAY_MS}
    _, ticker = await get(http, emulator.url + "/api/v3/ticker/24hr", symbol="BTCUSDT")
    assert float(ticker["lastPrice"]) == minute_candle("BTCUSDT", T0 + DAY_MS)[4]
    assert float(ticker["bidPrice"]) < float(ticker["lastPrice"]) < float(ticker["askPrice"])
    _, book = await get(http, emulator.url + "/api/v3/ticker/bookTicker", symbol="BTCUSDT")
    assert book["bidPrice"] == ticker["bidPrice"]


async def test_no_candles_after_now(emulator: ExchangeEmulator, http: aiohttp.ClientSession) -> None:
    emulator.now_ms = T0 + 5 * MINUTE_MS + 30_000
    _, rows = await get(http, emulator.url + "/api/v3/klines", symbol="BTCUSDT", interval="1m",
                        startTime=T0)
    assert [r[0] for r in rows][-1] == T0 + 5 * MINUTE_MS  # the forming minute is the last


async def test_alpaca_bars_only_in_session_and_paged(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession
) -> None:
    url = emulator.url + "/v2/stocks/AAPL/bars"
    emulator.alpaca.page_size = 100
    params = {"timeframe": "1Min", "start": "2024-01-05T00:00:00Z",
              "end": "2024-01-09T00:00:00Z", "limit": 10000}
    bars, token, pages = [], None, 0
    while True:
        _, body = await get(http, url, **params, **({"page_token": token} if token else {}))
        bars += body["bars"]
        token, pages = body["next_page_token"], pages + 1
        if not token:
            break
    assert len(bars) == 2 * 390 and pages == 8  # Friday and Monday sessions, 100 per page
    assert bars[0]["t"] == "2024-01-05T14:30:00Z" and bars[-1]["t"] == "2024-01-08T20:59:00Z"
    _, weekend = await get(http, url, timeframe="1Hour", start="2024-01-06", end="2024-01-07")
    assert weekend["bars"] is None
    _, day = await get(http, url, timeframe="1Day", start="2024-01-05", end="2024-01-08")
    assert [b["t"] for b in day["bars"]] == ["2024-01-05T00:00:00Z", "2024-01-08T00:00:00Z"]
    assert sum(b["v"] for b in bars[:390]) == day["bars"][0]["v"]
    assert (await get(http, url, timeframe="1Month"))[0] == 422
    assert (await get(http, url, timeframe="1Min", feed="bogus"))[0] == 422


async def test_alpaca_assets_snapshot_multi(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession
) -> None:
    _, assets = await get(http, emulator.url + "/v2/assets", status="active")
    assert "AAPL" in {a["symbol"] for a in assets}
    emulator.now_ms = T0 + 4 * DAY_MS + 15 * HOUR_MS  # Friday 15:00 UTC, in session
    _, snap = await get(http, emulator.url + "/v2/stocks/AAPL/snapshot")
    assert snap["latestTrade"]["p"] == minute_candle("AAPL", emulator.now_ms)[4]
    assert snap["latestQuote"]["bp"] < snap["latestQuote"]["ap"]
    assert (await get(http, emulator.url + "/v2/stocks/ZZZZ/snapshot"))[0] == 404
    emulator.now_ms = None
    _, multi = await get(http, emulator.url + "/v2/stocks/bars", symbols="AAPL,MSFT",
                         timeframe="1Hour", start="2024-01-05", end="2024-01-06")
    assert set(multi["bars"]) == {"AAPL", "MSFT"} and len(multi["bars"]["AAPL"]) == 7
    assert in_session(T0 + 4 * DAY_MS + 15 * HOUR_MS) and not in_session(T0 + 5 * DAY_MS + 15 * HOUR_MS)


@pytest.mark.parametrize("status", [429, 418, 500, 502, 503, 504])
async def test_status_faults_fire_n_times(
    emulator: ExchangeEmulator, http: aiohttp.ClientSession, status: int
) -> None:
    emulator.inject("/api/v3/klines", status=status, times=2, retry_after=3)
    url = emulator.url + "/api/v3/klines"
    for _ in range(2):
        async with http.get(url, params={"symbol": "BTCUSDT", "interval": "1m"}) as resp:
            assert resp.status == status and resp.headers["Retry-After"] == "3"
    assert (await get(http, url, symbol="BTCUSDT", interval="1m"))[0] == 200
    assert emulator.calls("/api/v3/klines") == 3
    assert [r.status for r in emulator.requests("/api/v3/klines")] == [status, status, 200]


async def test_malformed_delay_drop(emulator: ExchangeEmulator, http: aiohttp.ClientSession) -> None:
    url = emulator.url + "/api/v3/time"
    emulator.inject("/api/v3/*", malformed="json")
    assert (await get(http, url))[1] == {"status": "ok", "data": {"unexpected": True}}
    emulator.inject(url.removeprefix(emulator.url), malformed="invalid")
    async with http.get(url) as resp:
        with pytest.raises(ValueError):
            await resp.json()
    emulator.inject("/api/v3/time", delay=1.0)
    with pytest.raises(TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    # aiohttp clients retry an idempotent request once on a dropped connection: drop twice.
    emulator.inject("/api/v3/time", drop=True, times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get(http, url)
    assert (await get(http, url))[0] == 200


async def test_control_api(emulator: ExchangeEmulator, http: aiohttp.ClientSession) -> None:
    ctl = emulator.url + "/__emulator/"
    async with http.post(ctl + "faults", json={"path": "/api/v3/time", "status": 503}) as r:
        assert r.status == 201
    async with http.post(ctl + "faults", json={"path": "/x", "bogus": 1}) as r:
        assert r.status == 400
    assert (await get(http, emulator.url + "/api/v3/time"))[0] == 503
    async with http.post(ctl + "maintenance", json={"start": T0, "end": T0 + HOUR_MS}) as r:
        assert r.status == 201
    _, rows = await get(http, emulator.url + "/api/v3/klines", symbol="BTCUSDT", interval="1m",
                        startTime=T0, limit=1)
    assert rows[0][0] == T0 + HOUR_MS
    async with http.post(ctl + "settings", json={"now": T0 + 5 * MINUTE_MS}) as r:
        assert (await r.json())["now"] == T0 + 5 * MINUTE_MS
    _, log = await get(http, ctl + "requests", path="/api/v3/*")
    assert log["count"] == 2 and log["requests"][0]["status"] == 503
    async with http.post(ctl + "reset") as r:
        assert r.status == 200
    assert emulator.calls() == 0 and emulator.book.maintenance == [] and emulator.now_ms is None


async def test_runs_as_a_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.exchange_emulator", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.split(" on ")[1].split()[0]
        async with aiohttp.ClientSession() as http:
            status, body = await get(http, url + "/api/v3/time")
            assert status == 200 and "serverTime" in body
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


_SIZES = {"3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": HOUR_MS,
          "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": DAY_MS}


@settings(max_examples=40, deadline=None)
@given(
    tf=st.sampled_from(sorted(_SIZES)),
    stock=st.booleans(),
    start_min=st.integers(0, 60 * 24 * 30),
    span_min=st.integers(1, 60 * 24 * 3),
    windows=st.lists(st.tuples(st.integers(0, 60 * 24 * 33), st.integers(1, 600)), max_size=3),
)
def test_emulator_aggregation_equals_resampled_minutes_property(
    tf: str, stock: bool, start_min: int, span_min: int, windows: list[tuple[int, int]]
) -> None:
    """Any range, interval, market kind and maintenance windows: the emulator's own higher
    interval candles equal our resampling of its 1m candles (two independent implementations)."""
    book = CandleBook(T0)
    book.now_ms = T0 + 40 * DAY_MS
    book.maintenance = [(T0 + a * MINUTE_MS, T0 + (a + n) * MINUTE_MS) for a, n in windows]
    symbol = "AAPL" if stock else "BTCUSDT"
    size = _SIZES[tf]
    start = T0 + start_min * MINUTE_MS // size * size
    end = start + span_min * MINUTE_MS // size * size + size
    minutes = book.candles(symbol, stock, MINUTE_MS, start, end - 1, 10**6)
    native = book.candles(symbol, stock, size, start, end - 1, 10**6)
    assert_same_bars([list(c) for c in native], resample(minutes, tf))
    assert all(in_session(int(c[0])) for c in minutes) or not stock
