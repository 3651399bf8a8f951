"""Rate-limit leases: tokens taken from Redis in batches, refusals kept locally and answered
through the usual hooks, and the cluster-wide bound across instances (real Redis)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import REGISTRY
from quart import Quart

from app import create_app
from app_extensions.errors import error_response
from app_extensions.ratelimit import get_ratelimiter
from app_extensions.ratelimit_buckets import LeasedBuckets, Limit, LocalGcra
from core.errors import RateLimited

MARKETS = "/api/v1/markets"
ORIGIN = "https://dash.example.com"


class InMemoryTake:
    """The Redis take function over the same GCRA in memory, counting its calls."""

    def __init__(self) -> None:
        self.gcra = LocalGcra()
        self.calls = 0

    async def __call__(self, key: str, limit: Limit, wanted: int) -> tuple[int, int, float]:
        self.calls += 1
        granted, remaining, retry = 0, 0, 0.0
        for _ in range(wanted):
            d = self.gcra.take(key, limit)
            if not d.allowed:
                retry = d.retry_after
                break
            granted, remaining = granted + 1, d.remaining
        return granted, remaining, retry


async def test_a_busy_client_takes_tokens_in_batches_and_is_refused_without_a_round_trip() -> None:
    take = InMemoryTake()
    buckets = LeasedBuckets(take)
    limit = Limit(1000, 60.0)  # leases of at most 100
    decisions = [await buckets.hit("k", limit) for _ in range(1000)]
    assert all(d.allowed for d in decisions)
    assert take.calls < 100  # not one Redis call per request
    refused = [await buckets.hit("k", limit) for _ in range(500)]
    assert not any(d.allowed for d in refused) and all(d.retry_after > 0 for d in refused)
    calls = take.calls
    assert [await buckets.hit("k", limit) for _ in range(100)] and take.calls == calls


async def test_a_slow_client_leases_one_token_at_a_time_and_small_limits_are_exact() -> None:
    take = InMemoryTake()
    buckets = LeasedBuckets(take, lease_seconds=0.05)
    assert Limit(5, 60).max_lease == 1
    got = [(await buckets.hit("k", Limit(5, 60.0))).remaining for _ in range(5)]
    assert got == [4, 3, 2, 1, 0] and take.calls == 5
    assert not (await buckets.hit("k", Limit(5, 60.0))).allowed


async def test_leased_tokens_expire_unspent() -> None:
    take = InMemoryTake()
    buckets = LeasedBuckets(take, lease_seconds=0.05)
    limit = Limit(1000, 60.0)
    for _ in range(50):
        await buckets.hit("k", limit)
    calls = take.calls
    time.sleep(0.06)  # noqa: ASYNC251 - the lease clock is monotonic time, nothing to await
    await buckets.hit("k", limit)
    assert take.calls == calls + 1  # what was left of the lease was dropped


async def test_two_instances_never_admit_more_than_the_limit(app_config: dict[str, Any]) -> None:
    cfg = {**app_config, "RATE_LIMITS": {"default": "100/60"}}  # leases of at most 10
    apps = [create_app(cfg), create_app(cfg)]
    async with apps[0].test_app(), apps[1].test_app():
        clients = [a.test_client() for a in apps]
        started = time.monotonic()
        codes = [(await clients[i % 2].get(MARKETS)).status_code for i in range(300)]
        elapsed = time.monotonic() - started
    admitted = codes.count(200)
    # Tokens leave Redis before they are spent: at most the burst plus what refilled meanwhile
    # (100 per 60 s, plus the lease time), and at most N x (lease - 1) tokens stranded unspent.
    assert admitted <= 100 + int((elapsed + 1.0) * 100 / 60) + 1
    assert admitted >= 100 - 2 * 9
    assert set(codes) == {200, 429}


@asynccontextmanager
async def limited(app_config: dict[str, Any], limit: str) -> AsyncIterator[tuple[Quart, Any]]:
    """A started app whose default class allows ``limit`` (CORS for one origin): yields it and
    its test client."""
    app = create_app({**app_config, "RATE_LIMITS": {"default": limit}, "CORS_ORIGINS": ORIGIN})
    async with app.test_app():
        yield app, app.test_client()


async def test_a_known_refusal_is_answered_as_every_answer_is(app_config: dict[str, Any]) -> None:
    async with limited(app_config, "2/60") as (app, client):
        answers = [await client.get(MARKETS) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        said = "rate limit of 2 requests per 60 s (default) exceeded; retry after the seconds in Retry-After"
        assert (await answers[2].get_json())["error"]["message"] == said  # names the window
        limiter = get_ratelimiter(app)
        assert limiter.buckets.refused  # known locally: no Redis round trip from here on
        labels = {"method": "GET", "route": "/api/v1/markets", "status": "429"}
        counted = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
        rejected = REGISTRY.get_sample_value("rate_limit_rejections_total", {"route_class": "default"})
        r = await client.get(MARKETS, headers={"X-Request-ID": "mine-123"})
        assert r.status_code == 429
        body = await r.get_data(as_text=False)
        assert json.loads(body) == {"error": {"code": "rate_limited", "message": said}}
        async with app.app_context():  # the bytes the error handler answers RateLimited with
            handled = error_response(RateLimited(said))
            assert body == await handled.get_data(as_text=False)
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Request-ID"] == "mine-123"
        assert r.headers["X-RateLimit-Limit"] == "2" and r.headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(r.headers["Retry-After"]) <= 31
        assert REGISTRY.get_sample_value("http_requests_total", labels) == counted + 1
        assert REGISTRY.get_sample_value(
            "rate_limit_rejections_total", {"route_class": "default"}) == (rejected or 0) + 1
        # A browser's refusal carries the CORS headers, as any answer does.
        browser = await client.get(MARKETS, headers={"Origin": ORIGIN})
        assert browser.status_code == 429 and browser.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Retry-After" in browser.headers["Access-Control-Expose-Headers"]


@asynccontextmanager
async def past_a_refusal(app_config: dict[str, Any]) -> AsyncIterator[Any]:
    """An app allowing one request a second: a client served once, refused twice, and its
    refusal waited out. Yields the test client."""
    async with limited(app_config, "1/1") as (_, client):
        assert [(await client.get(MARKETS)).status_code for _ in range(2)] == [200, 429]
        refused = await client.get(MARKETS)  # known locally now
        assert refused.status_code == 429
        await asyncio.sleep(float(refused.headers["Retry-After"]))  # the next token frees up
        yield client


async def test_a_client_past_its_refusal_spends_one_token(app_config: dict[str, Any]) -> None:
    async with past_a_refusal(app_config) as client:
        r = await client.get(MARKETS)
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "1" and r.headers["X-RateLimit-Remaining"] == "0"
        assert (await client.get(MARKETS)).status_code == 429


async def test_requests_arriving_while_a_refused_clients_lease_is_taken_wait_for_it(
        app_config: dict[str, Any]) -> None:
    async with past_a_refusal(app_config) as client:
        codes = [r.status_code for r in await asyncio.gather(*(client.get(MARKETS) for _ in range(8)))]
        # One token freed up: one request is admitted; the others waited for the leases taken
        # meanwhile (not a Redis round trip each) and were refused.
        assert sorted(codes) == [200] + [429] * 7
