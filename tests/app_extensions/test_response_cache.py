"""Prepared /ohlcv answers in process memory (dropped by revision events on Redis pub/sub) and
compression of JSON answers, through the app with the real PostgreSQL and Redis."""

from __future__ import annotations

import gzip
import json
from typing import Any

import brotli
import redis.asyncio as aioredis
from quart import Quart

from app import create_app
from app_extensions.response_cache import PreparedResponse, get_response_cache
from app_extensions.services import get_services
from core.types import Series
from tests.conftest import REDIS_URL
from tests.support.helpers import sim_calls
from tests.support.ws import wait_for

PAST = 1_700_006_400_000
QUERY = f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1m&start={PAST}&limit=500"


async def publish(prefix: str, message: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.publish(f"{prefix}:revisions", message)
    finally:
        await client.aclose()


async def test_a_closed_answer_is_prepared_once_and_served_in_every_encoding(app: Quart) -> None:
    cache = get_response_cache(app)
    await wait_for(lambda: cache.live)
    client = app.test_client()
    first = await client.get(QUERY)
    body = await first.get_data(as_text=False)
    assert first.status_code == 200 and first.headers["X-Data-Source"] == "provider"
    assert len(json.loads(body)["bars"]) == 500 and len(cache.store) == 1
    calls = sim_calls(app)
    for accept, decode in (("", bytes), ("gzip", gzip.decompress), ("br, gzip", brotli.decompress)):
        r = await client.get(QUERY, headers={"Accept-Encoding": accept} if accept else {})
        raw = await r.get_data(as_text=False)
        assert r.status_code == 200 and r.headers["X-Data-Source"] == "cache"
        assert decode(raw) == body and r.headers["Vary"] == "Accept-Encoding"
        assert r.headers.get("Content-Encoding", "") == accept.split(",")[0]
        assert r.headers["X-Request-ID"] and r.headers["X-RateLimit-Limit"] == "300"
        again = await client.get(QUERY, headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304 and not await again.get_data()
    assert sim_calls(app) == calls


async def test_a_hit_is_the_response_the_constructor_builds_from_the_same_headers(app: Quart) -> None:
    cache = get_response_cache(app)
    await wait_for(lambda: cache.live)
    client = app.test_client()
    await client.get(QUERY)
    entry = next(iter(cache.store._entries.values()))
    for encoding, (body, headers) in entry.variants.items():
        built = PreparedResponse(body, status=200, headers=headers)
        fast = PreparedResponse.sent_as(body, entry.sent[encoding])
        assert list(fast.headers.items()) == list(built.headers.items())
        assert (fast.status, fast.status_code, fast.timeout) == (built.status, built.status_code, built.timeout)
        assert vars(fast).keys() == vars(built).keys()
        assert await fast.get_data() == await built.get_data() == body
        fast.headers["X-Request-ID"] = "x"  # the headers are the response's own
        assert "X-Request-ID" not in dict(entry.sent[encoding])
        r = await client.get(QUERY, headers={"Accept-Encoding": encoding or "identity"})
        sent = [(k.lower(), v) for k, v in r.headers.items()
                if k.lower() not in ("x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining")]
        assert sent == [(k.lower(), v) for k, v in built.headers.items()]


async def test_a_revision_event_drops_the_answers_holding_its_bar(app: Quart, redis_prefix: str) -> None:
    cache = get_response_cache(app)
    await wait_for(lambda: cache.live)
    client = app.test_client()
    assert (await client.get(QUERY)).status_code == 200
    assert len(cache.store) == 1
    # Not ours, another series, a bar outside the range: all leave the answer in place.
    await publish(redis_prefix, "not json")
    await publish(redis_prefix, json.dumps({"series": "sim:sim:OTHER/USD", "ts": PAST, "bar": []}))
    await publish(redis_prefix, json.dumps({"series": "sim:sim:SIM/USD", "ts": PAST + 500 * 60_000, "bar": []}))
    await publish(redis_prefix, json.dumps({"series": "sim:sim:SIM/USD", "ts": PAST + 60_000, "bar": []}))
    await wait_for(lambda: len(cache.store) == 0)
    assert cache.live  # a malformed message did not end the listener
    r = await client.get(QUERY)
    assert r.status_code == 200 and len(cache.store) == 1


async def test_without_redis_nothing_is_kept_in_process(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
                      "RATE_LIMIT_ENABLED": False})
    async with app.test_app():
        client = app.test_client()
        for _ in range(2):
            r = await client.get(QUERY)
            assert r.status_code == 200 and r.headers["ETag"]
        cache = get_response_cache(app)
        assert not cache.live and len(cache.store) == 0  # revisions cannot be heard
        again = await client.get(QUERY, headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304


async def test_every_json_answer_over_1_kib_is_compressed(app: Quart) -> None:
    client = app.test_client()
    plain = await client.get("/api/v1/openapi.json")
    raw = await plain.get_data(as_text=False)
    assert len(raw) > 1024 and "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    for encoding, decode in (("gzip", gzip.decompress), ("br", brotli.decompress)):
        r = await client.get("/api/v1/openapi.json", headers={"Accept-Encoding": encoding})
        assert r.headers["Content-Encoding"] == encoding and decode(await r.get_data(as_text=False)) == raw
    small = await client.get("/health", headers={"Accept-Encoding": "br"})
    assert "Content-Encoding" not in small.headers and (await small.get_json())["status"] == "ok"


async def test_a_revision_announced_by_the_writers_drops_the_prepared_answer(app: Quart) -> None:
    cache = get_response_cache(app)
    await wait_for(lambda: cache.live)
    client = app.test_client()
    first = await client.get(QUERY)
    assert first.status_code == 200 and len(cache.store) == 1
    revisions = get_services(app).backfill.revisions
    assert revisions is not None
    await revisions.announce(Series("sim", "sim", "SIM/USD"), [[PAST + 120_000, 1.0, 2.0, 0.5, 1.5, 10.0]])
    await wait_for(lambda: len(cache.store) == 0)
    second = await client.get(QUERY)  # prepared again from the revised data
    assert second.status_code == 200 and len(cache.store) == 1
