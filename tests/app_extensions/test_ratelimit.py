"""Inbound rate limits: one combined limit across instances sharing Redis, 429 headers, fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.auth import hash_key
from app_extensions.ratelimit import Limit, LocalGcra, get_ratelimiter, route_class
from config import ConfigError

MARKETS = "/api/v1/markets"


@pytest.fixture
async def two_apps(app_config: dict[str, Any]) -> AsyncIterator[list[Quart]]:
    """Two instances of the service sharing one Redis (same prefix), as behind a load balancer."""
    cfg = {**app_config, "RATE_LIMITS": {"default": "5/60", "ohlcv": "off"}}
    apps = [create_app(cfg), create_app(cfg)]
    async with apps[0].test_app(), apps[1].test_app():
        yield apps


async def test_two_instances_enforce_one_combined_limit(two_apps: list[Quart]) -> None:
    clients = [a.test_client() for a in two_apps]
    remaining = []
    for i in range(5):
        r = await clients[i % 2].get(MARKETS)
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "5"
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    for client in clients:  # both instances now refuse: the budget was shared
        r = await client.get(MARKETS)
        assert r.status_code == 429
        body = await r.get_json()
        assert body["error"]["code"] == "rate_limited"
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        # 5 per 60 s: the next request frees up in ~12 s.
        assert 1 <= int(r.headers["Retry-After"]) <= 13
        assert r.headers["X-Request-ID"]


async def test_unlimited_class_and_health_are_not_counted(two_apps: list[Quart]) -> None:
    client = two_apps[0].test_client()
    for _ in range(5):
        assert (await client.get(MARKETS)).status_code == 200
    assert (await client.get(MARKETS)).status_code == 429
    for path in ("/health", "/health/ready", "/metrics"):
        r = await client.get(path)
        assert r.status_code == 200 and "X-RateLimit-Limit" not in r.headers
    r = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&limit=2")
    assert r.status_code == 200  # the ohlcv class is "off" here
    assert "X-RateLimit-Limit" not in r.headers


async def test_limits_are_per_api_key_when_auth_is_on(app_config: dict[str, Any]) -> None:
    keys = ["key-a-0123456789", "key-b-0123456789"]
    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key(k) for k in keys],
                      "RATE_LIMITS": {"default": "2/60"}})
    async with app.test_app():
        client = app.test_client()
        a, b = ({"X-API-Key": k} for k in keys)
        assert [(await client.get(MARKETS, headers=a)).status_code for _ in range(3)] == [200, 200, 429]
        assert (await client.get(MARKETS, headers=b)).status_code == 200


async def test_bucket_refills_over_time(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "RATE_LIMITS": {"default": "4/2"}})  # one every 500 ms
    async with app.test_app():
        client = app.test_client()
        codes = [(await client.get(MARKETS)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        await asyncio.sleep(0.55)
        assert (await client.get(MARKETS)).status_code == 200


async def test_redis_down_falls_back_to_a_local_limiter_and_says_so(app_config: dict[str, Any]) -> None:
    cfg = {**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
           "RATE_LIMITS": {"default": "3/60"}}
    app = create_app(cfg)
    async with app.test_app():
        client = app.test_client()
        codes = [(await client.get(MARKETS)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert get_ratelimiter(app).mode == "local"
        r = await client.get("/health/ready")
        body = await r.get_json()
        assert r.status_code == 200 and body["status"] == "degraded"
        assert body["rate_limiter_mode"] == "local"
        assert body["checks"]["rate_limiter"]["ok"] is False


def test_local_gcra_matches_the_redis_semantics() -> None:
    gcra, limit = LocalGcra(), Limit(3, 3.0)
    got = [gcra.take("k", limit, now_ms=0.0) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got[:3]] == [2, 1, 0]
    assert got[3].retry_after == pytest.approx(1.0)
    assert gcra.take("k", limit, now_ms=1000.0).allowed


@pytest.mark.parametrize(("text", "expected"), [
    ("600/60", Limit(600, 60.0)), ("10/s", Limit(10, 1.0)), ("100/minute", Limit(100, 60.0)), ("off", None),
])
def test_limit_parsing(text: str, expected: Limit | None) -> None:
    assert Limit.parse(text) == expected


@pytest.mark.parametrize("text", ["abc", "0/60", "5/0", "5/fortnight", "5/nan", "5/inf"])
def test_bad_limits_fail_fast(text: str) -> None:
    with pytest.raises(ConfigError):
        Limit.parse(text)


@pytest.mark.parametrize(("path", "cls"), [
    ("/api/v1/ohlcv", "ohlcv"), ("/udf/history", "ohlcv"), ("/api/v1/export", "export"),
    ("/api/v1/backfill/abc", "backfill"),
    ("/api/v1/gaps", "backfill"),
    ("/api/v1/markets", "default"), ("/api/v1/anything/else", "default"),
])
def test_route_classes_are_fixed_names(path: str, cls: str) -> None:
    assert route_class(path) == cls


@pytest.mark.parametrize(("proxies", "peer", "forwarded", "expected"), [
    ("", "10.0.0.9", "198.51.100.1, 203.0.113.7", "ip:10.0.0.9"),  # no proxy trusted: the header is ignored
    ("10.0.0.0/8", "10.0.0.9", "198.51.100.1, 203.0.113.7", "ip:203.0.113.7"),
    # A peer that is not a trusted proxy cannot pick its identity (issue 23, 1).
    ("10.0.0.0/8", "198.51.100.50", "203.0.113.7", "ip:198.51.100.50"),
    # Chained proxies: the last address not in the list; what the client wrote left of it is ignored.
    ("10.0.0.0/8,192.0.2.1", "10.0.0.9", "1.2.3.4, 203.0.113.7, 192.0.2.1", "ip:203.0.113.7"),
    ('["10.0.0.0/8"]', "10.0.0.9", "10.1.1.1, 10.2.2.2", "ip:10.1.1.1"),  # all proxies: the leftmost
    # IPv6 clients are limited per /64 (issue 23, 13); IPv4-mapped addresses as IPv4.
    ("", "2001:db8:1:2:aaaa::1", None, "ip:2001:db8:1:2::/64"),
    ("", "2001:db8:1:2:bbbb::9", None, "ip:2001:db8:1:2::/64"),
    ("", "::ffff:203.0.113.7", None, "ip:203.0.113.7"),
])
async def test_client_ip_from_forwarded_for_only_from_trusted_proxies(
    app_config: dict[str, Any], proxies: str, peer: str, forwarded: str | None, expected: str
) -> None:
    app = create_app({**app_config, "TRUSTED_PROXIES": proxies})
    async with app.test_request_context("/api/v1/markets"):
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        assert get_ratelimiter(app).client_identity(headers, peer) == expected


@pytest.mark.parametrize("overrides", [{"TRUST_FORWARDED_FOR": True}, {"TRUSTED_PROXIES": "10.0.0.0/33"},
                                       {"TRUSTED_PROXIES": "proxy.example"}])
def test_proxy_trust_misconfiguration_fails_fast(app_config: dict[str, Any], overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="TRUST"):
        create_app({**app_config, **overrides})


async def test_rotating_ipv6_addresses_in_one_64_share_a_limit(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "RATE_LIMITS": {"default": "3/60"}})
    async with app.test_app():
        client = app.test_client()
        codes = [(await client.get("/api/v1/markets", scope_base={"client": (f"2001:db8::{i:x}", 1234)})).status_code
                 for i in range(1, 6)]
        assert codes == [200, 200, 200, 429, 429]
        other = await client.get("/api/v1/markets", scope_base={"client": ("2001:db8:0:1::1", 1234)})
        assert other.status_code == 200  # the next /64 is another client


def test_unknown_route_classes_fail_fast(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="ohclv"):
        create_app({**app_config, "RATE_LIMITS": {"ohclv": "10/60"}})


async def test_websocket_handshake_429_carries_the_rate_limit_headers(app_config: dict[str, Any]) -> None:
    from quart.testing.connections import WebsocketResponseError

    app = create_app({**app_config, "RATE_LIMITS": {"ws": "1/60"}})
    async with app.test_app():
        client = app.test_client()
        async with client.websocket("/api/v1/ws") as ws:
            await ws.send('{"op": "ping", "id": 1}')
            assert '"pong"' in str(await ws.receive())
        with pytest.raises(WebsocketResponseError) as refused:
            async with client.websocket("/api/v1/ws"):
                pass
        r = refused.value.response
        assert r.status_code == 429
        assert (await r.get_json())["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "1" and r.headers["X-RateLimit-Remaining"] == "0"


async def test_200_websocket_handshakes_from_one_ip_in_a_second_are_all_accepted(
    app_config: dict[str, Any],
) -> None:
    """The default ``ws`` class allows bursts as Binance does: 300 handshakes per 5 minutes per IP
    (200 dashboards behind one office NAT opening at once got 140 refusals with 60/60)."""
    app = create_app(app_config)  # the default limits
    async with app.test_app():
        client = app.test_client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(200):
            async with client.websocket("/api/v1/ws") as ws:
                await ws.send(f'{{"op": "ping", "id": {i}}}')
                assert '"pong"' in str(await ws.receive())
        assert loop.time() - started < 60  # well inside the window: a burst, not a trickle
        limiter = get_ratelimiter(app)
        assert limiter.limit_for("ws") == Limit(300, 300.0)
        async with app.test_request_context("/"):
            ip = limiter.client_identity({}, "127.0.0.1")
        burst = [await limiter.hit("ws", ip) for _ in range(101)]
        # 100 more fit the burst (the handshakes above used 200; a few seconds refilled some).
        assert all(d is not None and d.allowed for d in burst[:100])
        while (d := await limiter.hit("ws", ip)) is not None and d.allowed:
            pass
        assert d is not None and not d.allowed and 0 < d.retry_after <= 1.0  # then one a second


async def test_rest_limits_are_per_client_ip_when_auth_is_off(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "RATE_LIMITS": {"default": "2/60"}})
    async with app.test_app():
        client = app.test_client()

        async def status(ip: str) -> int:
            r = await client.get(MARKETS, scope_base={"client": (ip, 40000)})
            return r.status_code

        assert [await status("198.51.100.1") for _ in range(3)] == [200, 200, 429]
        assert await status("198.51.100.2") == 200  # another client has its own bucket


async def test_with_auth_on_one_key_is_one_bucket_across_client_ips(app_config: dict[str, Any]) -> None:
    key = "key-c-0123456789"
    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key(key)],
                      "RATE_LIMITS": {"default": "2/60"}})
    async with app.test_app():
        client = app.test_client()
        codes = [(await client.get(MARKETS, headers={"X-API-Key": key},
                                   scope_base={"client": (ip, 40000)})).status_code
                 for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3")]
        assert codes == [200, 200, 429]
