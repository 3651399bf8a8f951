"""Revisions end to end (issue 11): the exchange (emulator) revises a closed 1m bar; a subscribed
client receives it again with ``revised: true`` and a new ``seq``, ``/ohlcv`` answers the new values
with a new ETag (the cached answer was dropped), the 1h aggregate over it changes, and the
revision is announced on ``<REDIS_PREFIX>:revisions``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from app import create_app
from core.timeframes import HOUR_MS, MINUTE_MS, bucket_start
from tests.conftest import REDIS_URL
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.helpers import clear_shared_markets
from tests.support.ws import WS_TEST_CONFIG, wait_for

emulator = fixtures.emulator
SPEED = 600  # an hour every 6 s
SUB = {"op": "subscribe", "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
       "timeframe": "1m", "history": 2}
Q = {"market": "crypto", "provider": "binance", "symbol": "BTC/USDT"}


@pytest.fixture
def fast_clock(monkeypatch: pytest.MonkeyPatch, emulator: ExchangeEmulator) -> Callable[[], int]:
    real0 = time.time()

    def now() -> int:
        return int((real0 + (time.time() - real0) * SPEED) * 1000)

    for module in ("services.bars.orchestrator", "services.live.poller", "services.live.service",
                   "services.upstream.calls"):
        monkeypatch.setattr(f"{module}.now_ms", now)
    monkeypatch.setattr(emulator.book, "now", now)
    return now


async def ohlcv(client: Any, timeframe: str, start: int, end: int,
                etag: str | None = None) -> tuple[int, list[list[float]], str]:
    headers = {"If-None-Match": etag} if etag else {}
    r = await client.get("/api/v1/ohlcv", query_string={**Q, "timeframe": timeframe, "start": start,
                                                        "end": end}, headers=headers)
    body = await r.get_json() if r.status_code == 200 else {"bars": []}
    return r.status_code, body["bars"], r.headers.get("ETag", "")


async def test_a_revised_closed_bar_reaches_clients_rest_caches_and_aggregates(
    app_config: dict[str, Any], emulator: ExchangeEmulator, fast_clock: Callable[[], int]
) -> None:
    clear_shared_markets()
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto",
                      "PROVIDER_URLS": {"binance": emulator.url},
                      "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1},
                      "POLL_REVISION_SECONDS": 4 * 3600})  # fast seconds: 24 s of test time
    announced: list[dict[str, Any]] = []
    listener = aioredis.from_url(REDIS_URL)
    pubsub = listener.pubsub()
    await pubsub.subscribe(f"{app_config['REDIS_PREFIX']}:revisions")

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                announced.append(json.loads(msg["data"]))
    reader = asyncio.create_task(listen())
    frames: list[dict[str, Any]] = []
    try:
        async with app.test_app(), app.test_client().websocket("/api/v1/ws") as ws:
            async def read() -> None:
                while True:
                    frames.append(json.loads(await ws.receive()))
            ws_reader = asyncio.create_task(read())
            await ws.send(json.dumps(SUB))
            await wait_for(lambda: any(f["type"] == "bar" and f["closed"] for f in frames))
            x = next(f["bar"][0] for f in frames if f["type"] == "bar" and f["closed"])
            hour = bucket_start(x, "1h")
            # X's hour has closed and settled (cached for long): its answers carry ETags
            await wait_for(lambda: fast_clock() > hour + HOUR_MS + 3 * MINUTE_MS, within=15)
            client = app.test_client()
            status, before, etag = await ohlcv(client, "1m", x, x + MINUTE_MS)
            assert status == 200 and etag and before[0][0] == x
            assert (await ohlcv(client, "1m", x, x + MINUTE_MS, etag))[0] == 304
            _, hour_before, hour_etag = await ohlcv(client, "1h", hour, hour + HOUR_MS)
            assert hour_etag and (await ohlcv(client, "1h", hour, hour + HOUR_MS, hour_etag))[0] == 304

            candle = emulator.revise("BTCUSDT", x)  # close +0.1 %, volume x 1.5
            await wait_for(lambda: any(f.get("revised") for f in frames), within=10)
            revised = [f for f in frames if f.get("revised")]
            assert [f["bar"][0] for f in revised] == [x] and revised[0]["closed"] is True
            assert revised[0]["bar"][4] == pytest.approx(candle[4])
            assert revised[0]["bar"][5] == pytest.approx(candle[5])
            seqs = [f["seq"] for f in frames if f["type"] == "bar"]
            assert seqs == sorted(set(seqs)) and revised[0]["seq"] > seqs[0]

            status, after, new_etag = await ohlcv(client, "1m", x, x + MINUTE_MS, etag)
            assert status == 200 and new_etag != etag
            assert after[0][4] == pytest.approx(candle[4]) and after[0][4] != before[0][4]
            status, hour_after, new_hour_etag = await ohlcv(client, "1h", hour, hour + HOUR_MS,
                                                            hour_etag)
            assert status == 200 and new_hour_etag != hour_etag
            assert hour_after[0][5] == pytest.approx(hour_before[0][5] + candle[5] - before[0][5])
            await wait_for(lambda: any(a["ts"] == x for a in announced), within=5)
            note = next(a for a in announced if a["ts"] == x)
            assert note["series"] == "crypto:binance:BTC/USDT" and note["bar"][4] == pytest.approx(candle[4])
            ws_reader.cancel()
            await asyncio.wait([ws_reader])
    finally:
        reader.cancel()
        await asyncio.wait([reader])
        await pubsub.aclose()
        await listener.aclose()
