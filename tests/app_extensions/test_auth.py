"""API keys on REST and the WebSocket handshake, /metrics behind its own token, Origin allow-list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from quart import Quart, websocket
from quart.testing.connections import WebsocketResponseError

from app import create_app
from app_extensions.auth import authenticate_websocket, hash_key, parse_key_hashes
from config import ConfigError
from tests.conftest import DATABASE_URL

GOOD, OTHER = "k-good-0123456789", "k-other-0123456789"


def build(app_config: dict[str, Any], **overrides: Any) -> Quart:
    app = create_app({**app_config, **overrides})

    @app.websocket("/test-ws")
    async def _ws() -> None:
        key_id = await authenticate_websocket()  # what the WS blueprint may call; idempotent
        await websocket.accept()
        await websocket.send(str(key_id))

    return app


@pytest.fixture
async def auth_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = build(app_config, AUTH_ENABLED=True, API_KEYS=[hash_key(GOOD)], METRICS_TOKEN="s3cret")
    async with app.test_app():
        yield app


async def test_auth_is_off_by_default(client: Any) -> None:
    r = await client.get("/api/v1/markets")
    assert r.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
async def test_missing_or_wrong_key_is_401_with_the_error_shape(auth_app: Quart, headers: dict) -> None:
    r = await auth_app.test_client().get("/api/v1/markets", headers=headers)
    assert r.status_code == 401
    body = await r.get_json()
    assert body["error"]["code"] == "unauthorized"
    assert set(body["error"]) >= {"code", "message"}
    assert r.headers["X-Request-ID"]


async def test_right_key_is_served(auth_app: Quart) -> None:
    r = await auth_app.test_client().get("/api/v1/markets", headers={"X-API-Key": GOOD})
    assert r.status_code == 200
    assert (await r.get_json())["markets"]


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/api/v1/openapi.json", "/api/v1/docs"])
async def test_health_and_docs_stay_open(auth_app: Quart, path: str) -> None:
    r = await auth_app.test_client().get(path)
    assert r.status_code == 200


async def test_metrics_needs_its_own_token(auth_app: Quart) -> None:
    client = auth_app.test_client()
    assert (await client.get("/metrics")).status_code == 401
    # An API key is not the metrics token.
    assert (await client.get("/metrics", headers={"X-API-Key": GOOD})).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
    r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert b"http_requests_total" in await r.get_data()


async def test_metrics_is_open_without_a_token(client: Any) -> None:
    assert (await client.get("/metrics")).status_code == 200


async def test_keys_from_the_api_keys_table_and_revocation(app_config: dict[str, Any], db_schema: str) -> None:
    app = build(app_config, AUTH_ENABLED=True, API_KEYS="", API_KEY_CACHE_TTL=0.0)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/api/v1/markets", headers={"X-API-Key": OTHER})).status_code == 401
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(
                f'INSERT INTO "{db_schema}".api_keys (name, key_hash) VALUES ($1, $2)', "ops", hash_key(OTHER)
            )
            assert (await client.get("/api/v1/markets", headers={"X-API-Key": OTHER})).status_code == 200
            await conn.execute(f'UPDATE "{db_schema}".api_keys SET revoked_at = now()')
            assert (await client.get("/api/v1/markets", headers={"X-API-Key": OTHER})).status_code == 401
        finally:
            await conn.close()


async def test_websocket_handshake_needs_a_key_in_header_or_query(auth_app: Quart) -> None:
    client = auth_app.test_client()
    with pytest.raises(WebsocketResponseError) as missing:
        async with client.websocket("/test-ws") as ws:
            await ws.receive()
    assert missing.value.response.status_code == 401
    with pytest.raises(WebsocketResponseError) as wrong:
        async with client.websocket("/test-ws", headers={"X-API-Key": "bad"}) as ws:
            await ws.receive()
    assert wrong.value.response.status_code == 401
    async with client.websocket("/test-ws", headers={"X-API-Key": GOOD}) as ws:
        assert await ws.receive() == hash_key(GOOD)[:16]
    async with client.websocket("/test-ws", query_string={"api_key": GOOD}) as ws:
        assert await ws.receive() == hash_key(GOOD)[:16]


async def test_websocket_origin_allow_list(app_config: dict[str, Any]) -> None:
    app = build(app_config, WS_ALLOWED_ORIGINS="https://dash.example.com")
    async with app.test_app():
        client = app.test_client()
        with pytest.raises(WebsocketResponseError) as refused:
            async with client.websocket("/test-ws", headers={"Origin": "https://evil.example"}) as ws:
                await ws.receive()
        assert refused.value.response.status_code == 403
        async with client.websocket("/test-ws", headers={"Origin": "https://dash.example.com"}) as ws:
            assert await ws.receive() == "None"


async def test_cors_headers_only_for_allowed_origins(app_config: dict[str, Any]) -> None:
    app = build(app_config, CORS_ORIGINS="https://dash.example.com", AUTH_ENABLED=True,
                API_KEYS=[hash_key(GOOD)])
    async with app.test_app():
        client = app.test_client()
        r = await client.get("/api/v1/markets", headers={"Origin": "https://dash.example.com",
                                                          "X-API-Key": GOOD})
        assert r.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
        assert "X-RateLimit-Remaining" in r.headers["Access-Control-Expose-Headers"]
        r = await client.get("/api/v1/markets", headers={"Origin": "https://evil.example", "X-API-Key": GOOD})
        assert "Access-Control-Allow-Origin" not in r.headers
        # A preflight carries no key and is answered without auth.
        r = await client.options("/api/v1/ohlcv", headers={
            "Origin": "https://dash.example.com", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-API-Key"})
        assert r.status_code == 200
        assert "X-API-Key" in r.headers["Access-Control-Allow-Headers"]


async def test_body_size_limit_from_config(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "MAX_BODY_BYTES": 1024})
    async with app.test_app():
        r = await app.test_client().post("/api/v1/backfill", data="x" * 4096,
                                         headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert "error" in await r.get_json()


def test_api_keys_config_takes_digests_only() -> None:
    digest = hash_key(GOOD)
    assert parse_key_hashes(f'["{digest}"]') == {digest}
    assert parse_key_hashes(f" {digest.upper()} ,") == {digest}
    with pytest.raises(ConfigError):
        parse_key_hashes("plain-key-not-a-digest")


async def test_websocket_401_through_hypercorn(app_config: dict[str, Any]) -> None:
    import aiohttp

    from tests.support.ws import serve_app

    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key(GOOD)],
                      "RATE_LIMIT_ENABLED": False})
    async with app.test_app(), serve_app(app) as host, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"ws://{host}/api/v1/ws", headers={"X-API-Key": OTHER})
        assert refused.value.status == 401
        ws = await session.ws_connect(f"ws://{host}/api/v1/ws?api_key={GOOD}")
        try:
            await ws.send_json({"op": "ping", "id": 1})
            assert await ws.receive_json(timeout=10) == {"type": "pong", "id": 1}
        finally:
            await ws.close()


def test_api_key_cli_add_use_revoke(app_config: dict[str, Any]) -> None:
    import asyncio

    cfg = {**app_config, "AUTH_ENABLED": True, "API_KEY_CACHE_TTL": 0.0}
    runner = create_app(cfg).test_cli_runner()
    added = runner.invoke(args=["api-key", "add", "dashboard"])
    assert added.exit_code == 0, added.output
    key = added.output.strip()
    assert key.startswith("md_") and len(key) > 40

    async def status() -> int:
        app = create_app(cfg)
        async with app.test_app():
            return (await app.test_client().get("/api/v1/markets", headers={"X-API-Key": key})).status_code

    assert asyncio.run(status()) == 200
    revoked = runner.invoke(args=["api-key", "revoke", "dashboard"])
    assert revoked.exit_code == 0 and "revoked 1" in revoked.output
    assert asyncio.run(status()) == 401
    assert runner.invoke(args=["api-key", "revoke", "dashboard"]).exit_code != 0
    digest = runner.invoke(args=["api-key", "hash", "abc"])
    assert digest.output.strip() == hash_key("abc")


async def test_wrong_key_floods_are_refused_without_locking_out_valid_keys(
        app_config: dict[str, Any], db_schema: str) -> None:
    """Issue 23 (7): the guard counts wrong keys after the look-up, so a valid key from the same
    address (an office, a NAT) is still served. (Before: 35 wrong keys locked database keys out.)"""
    app = build(app_config, AUTH_ENABLED=True, API_KEYS=[hash_key(GOOD)],
                RATE_LIMITS={"auth_failures": "3/60"})
    async with app.test_app():
        client = app.test_client()
        codes = [(await client.get("/api/v1/markets", headers={"X-API-Key": f"bad-{i}"})).status_code
                 for i in range(6)]
        assert codes == [401, 401, 401, 429, 429, 429]
        r = await client.get("/api/v1/markets", headers={"X-API-Key": "bad-x"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "3" and r.headers["X-RateLimit-Remaining"] == "0"
        # A configured key and a key of the api_keys table are both still served from that address.
        assert (await client.get("/api/v1/markets", headers={"X-API-Key": GOOD})).status_code == 200
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(
                f'INSERT INTO "{db_schema}".api_keys (name, key_hash) VALUES ($1, $2)', "ops", hash_key(OTHER))
        finally:
            await conn.close()
        assert (await client.get("/api/v1/markets", headers={"X-API-Key": OTHER})).status_code == 200
        # A wrong key sent again is answered from the look-up cache (no database query each time).
        auth = app.extensions["auth"]
        assert auth._cache[hash_key("bad-x")][0] is False


def test_api_key_cli_lists_keys_and_refuses_duplicate_names(app_config: dict[str, Any]) -> None:
    runner = create_app(app_config).test_cli_runner()
    assert "no API keys" in runner.invoke(args=["api-key", "list"]).output
    first = runner.invoke(args=["api-key", "add", "dashboard"])
    assert first.exit_code == 0
    again = runner.invoke(args=["api-key", "add", "dashboard"])
    assert again.exit_code == 1 and "already named 'dashboard'" in again.output
    assert runner.invoke(args=["api-key", "add", "grafana"]).exit_code == 0
    listed = runner.invoke(args=["api-key", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["NAME", "ID", "CREATED", "(UTC)", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == ["dashboard", "grafana"]
    key_id = hash_key(first.output.strip())[:16]  # the id the rate limiter uses; never the key
    assert lines[1].split()[1] == key_id and lines[1].endswith("active")
    assert first.output.strip() not in listed.output
    # Revoked, the name is free again; both rows are listed, the old one as revoked.
    assert runner.invoke(args=["api-key", "revoke", "dashboard"]).exit_code == 0
    assert runner.invoke(args=["api-key", "add", "dashboard"]).exit_code == 0
    states = [line.split()[4] for line in runner.invoke(args=["api-key", "list"]).output.splitlines()[1:]]
    assert sorted(states) == ["active", "active", "revoked"]


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost:3000", True), ("http://localhost", True), ("http://127.0.0.1:5173", True),
    ("http://localhost.evil.example:3000", False), ("https://localhost:3000", False),
    ("http://localhost:3000.evil.example", False), ("http://localhost:*", True),
    ("https://dash.example.com", False), ("", False),
])
async def test_development_cors_allows_local_dashboards_on_any_port(
    app_config: dict[str, Any], origin: str, allowed: bool
) -> None:
    from config import load_config

    cfg = load_config("development")
    assert cfg.CORS_ORIGINS == "http://localhost:*,http://127.0.0.1:*"
    assert load_config("production").CORS_ORIGINS == ""  # production lists its own origins
    for name, value in app_config.items():
        if name != "APP_ENV":
            setattr(cfg, name, value)
    cfg.LOG_LEVEL = "WARNING"
    app = create_app(cfg)
    async with app.test_app():
        r = await app.test_client().options("/api/v1/ohlcv", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
    assert (r.headers.get("Access-Control-Allow-Origin") == origin) is allowed
