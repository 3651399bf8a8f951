"""WebSocket protocol on /api/v1/ws with the sim market: replies, errors, limits (Quart test client)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart
from quart.testing.connections import WebsocketResponseError

from app import create_app
from app_extensions.services import get_services
from tests.support.ws import WS_TEST_CONFIG, http_session, recv_until, serve_app

SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1m"}
CHANNEL = "sim:sim:SIM/USD:1m"


@pytest.fixture
async def ws_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app({**app_config, **WS_TEST_CONFIG, "WS_MAX_SUBSCRIPTIONS": 2})
    async with app.test_app():
        yield app


async def send(ws: Any, msg: Any) -> None:
    await ws.send(msg if isinstance(msg, str) else json.dumps(msg))


async def test_subscribe_snapshot_then_live_bars(ws_app: Quart) -> None:
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await send(ws, {**SUB, "history": 5, "id": "c1"})
        subscribed = json.loads(await asyncio.wait_for(ws.receive(), 5))
        assert subscribed == {"type": "subscribed", "channel": CHANNEL, "id": "c1"}
        snapshot = json.loads(await asyncio.wait_for(ws.receive(), 5))
        assert snapshot["type"] == "snapshot" and snapshot["channel"] == CHANNEL
        assert len(snapshot["bars"]) == 5
        ts = [b[0] for b in snapshot["bars"]]
        assert ts == sorted(ts) and all(b - a == 60_000 for a, b in itertools.pairwise(ts))
        bars = await recv_until(ws, lambda f: f["type"] == "bar", count=3)
        for frame in bars:
            assert frame["channel"] == CHANNEL and len(frame["bar"]) == 6
            assert frame["bar"][0] >= ts[-1]
        # every bar frame differs from the previous one (sent only when the forming bar changed)
        assert all(a["bar"] != b["bar"] for a, b in itertools.pairwise(bars))


async def test_ping_unsubscribe_and_id_echo(ws_app: Quart) -> None:
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await send(ws, {"op": "ping", "id": 7})
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": 7}
        await send(ws, {**SUB, "history": 0})
        frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
        assert frames[-1]["bars"] == []
        await send(ws, {"op": "unsubscribe", "channel": CHANNEL, "id": "u"})
        frames = await recv_until(ws, lambda f: f["type"] == "unsubscribed")
        assert frames[-1] == {"type": "unsubscribed", "channel": CHANNEL, "id": "u"}
        await send(ws, {"op": "ping", "id": "after"})
        frames = await recv_until(ws, lambda f: f["type"] == "pong")
        assert frames[-1]["id"] == "after"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_message"),
        ("[1, 2]", "invalid_message"),
        (json.dumps({"op": "dance", "id": "x"}), "invalid_message"),
        (json.dumps({"id": "x"}), "invalid_message"),
        (json.dumps({"op": "subscribe", "market": "sim", "provider": "sim", "id": "x"}), "invalid_parameter"),
        (json.dumps({**SUB, "timeframe": "7m", "id": "x"}), "invalid_parameter"),
        (json.dumps({**SUB, "history": 5000, "id": "x"}), "invalid_parameter"),
        (json.dumps({**SUB, "symbol": "SIM\u0000/USD", "id": "x"}), "invalid_parameter"),
        (json.dumps({**SUB, "market": "bonds", "id": "x"}), "unknown_market"),
        (json.dumps({**SUB, "provider": "nyse", "id": "x"}), "unknown_provider"),
        (json.dumps({**SUB, "symbol": "NOPE/USD", "id": "x"}), "unknown_symbol"),
        (json.dumps({"op": "unsubscribe", "channel": "sim:sim", "id": "x"}), "invalid_parameter"),
        (json.dumps({"op": "ping", "id": "x", "pad": "y" * 5000}), "invalid_message"),
        (b"\x00\x01binary", "invalid_message"),
    ],
)
async def test_bad_messages_get_error_frames_and_the_connection_stays_open(
    ws_app: Quart, message: str | bytes, code: str
) -> None:
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(message)
        frame = json.loads(await asyncio.wait_for(ws.receive(), 5))
        assert frame["type"] == "error" and frame["code"] == code, frame
        assert frame["message"]
        if isinstance(message, str) and message.startswith("{") and len(message) < 4096:  # parsed
            assert frame["id"] == "x"
        await send(ws, {"op": "ping", "id": "still-open"})
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": "still-open"}


async def test_subscription_limit(ws_app: Quart) -> None:
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        for sym in ("SIM/USD", "SIMA/USD"):
            await send(ws, {**SUB, "symbol": sym, "history": 0})
            await recv_until(ws, lambda f: f["type"] == "snapshot")
        await send(ws, {**SUB, "symbol": "SIMB/EUR", "history": 0, "id": "third"})
        frames = await recv_until(ws, lambda f: f["type"] == "error")
        assert frames[-1]["code"] == "too_many_subscriptions" and frames[-1]["id"] == "third"
        # re-subscribing a held channel is not a new subscription: a fresh snapshot
        await send(ws, {**SUB, "history": 2, "id": "again"})
        frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
        assert len(frames[-1]["bars"]) == 2


async def test_a_subscribe_that_fails_joining_its_channel_leaves_no_subscription(ws_app: Quart) -> None:
    service = get_services(ws_app).subscriptions
    real_add = service.hub.broadcast.subscribe

    async def failing_add(topic: str) -> None:
        raise RuntimeError("registry bug")

    service.hub.broadcast.subscribe = failing_add  # type: ignore[method-assign,assignment]
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await send(ws, {**SUB, "id": "s1"})
        error = json.loads(await asyncio.wait_for(ws.receive(), 5))
        assert error["type"] == "error" and error["code"] == "internal_error" and error["id"] == "s1"
        (conn,) = service.connections
        assert conn.subs == {}  # not a half subscription holding frames until a 1013
        service.hub.broadcast.subscribe = real_add  # type: ignore[method-assign]
        await send(ws, {**SUB, "id": "s2", "history": 1})
        frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
        assert frames[0] == {"type": "subscribed", "channel": CHANNEL, "id": "s2"}
        await recv_until(ws, lambda f: f["type"] == "bar")  # the channel is polled: it was set up again


async def test_since_gives_every_bar_from_it_and_wins_over_history(ws_app: Quart) -> None:
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await send(ws, {**SUB, "history": 3})
        newest = (await recv_until(ws, lambda f: f["type"] == "snapshot"))[-1]["bars"][-1][0]
        since = newest - 4 * 60_000
        await send(ws, {**SUB, "history": 50, "since": since, "id": "s"})
        bars = (await recv_until(ws, lambda f: f["type"] == "snapshot"))[-1]["bars"]
        assert [b[0] for b in bars][:5] == [since + i * 60_000 for i in range(5)]
        assert len(bars) in (5, 6)  # the forming bar included (6 when a minute began meanwhile)
        await send(ws, {**SUB, "since": newest - 5000 * 60_000, "id": "far"})  # a long absence
        far = (await recv_until(ws, lambda f: f["type"] == "snapshot"))[-1]["bars"]
        assert len(far) == 1000 and far[-1][0] >= newest  # the newest 1000
        await send(ws, {**SUB, "since": newest + 3_600_000, "id": "future"})
        assert (await recv_until(ws, lambda f: f["type"] == "snapshot"))[-1]["bars"] == []


async def test_an_empty_binary_frame_gets_invalid_message_and_the_connection_stays(
    app_config: dict[str, Any]
) -> None:
    """Issue 23.10: an empty binary frame crashed the handler (a traceback, close 1000). Over a
    real server: Quart's test client cannot send one (its event has no "text")."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with serve_app(app) as addr, http_session() as session:
        ws = await session.ws_connect(f"http://{addr}/api/v1/ws")
        try:
            for frame in (b"", b"\x00\x01", ""):
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                error = await ws.receive_json(timeout=5)
                assert error["type"] == "error" and error["code"] == "invalid_message", (frame, error)
            await ws.send_json({"op": "ping", "id": 1})
            assert await ws.receive_json(timeout=5) == {"type": "pong", "id": 1}
        finally:
            await ws.close()


async def test_an_empty_binary_frame_without_a_text_key_gets_invalid_message(ws_app: Quart) -> None:
    """Uvicorn (and Quart's test client) send a binary frame's event without "text": Quart's own
    receiver read event["text"] and died with a KeyError (blueprints/ws_asgi.py)."""
    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(b"")
        error = json.loads(await asyncio.wait_for(ws.receive(), 5))
        assert error["type"] == "error" and error["code"] == "invalid_message"
        await send(ws, {"op": "ping", "id": 1})
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": 1}


async def test_a_plain_get_of_the_websocket_path_is_426_with_a_clear_error(ws_app: Quart) -> None:
    """Issue 24.20: not Werkzeug's "The browser (or proxy) sent a request..." 400."""
    r = await ws_app.test_client().get("/api/v1/ws")
    assert r.status_code == 426 and r.headers["Upgrade"] == "websocket"
    body = await r.get_json()
    assert body["error"]["code"] == "upgrade_required"
    assert "WebSocket" in body["error"]["message"]


async def test_a_snapshot_cut_short_by_the_deadline_says_incomplete(ws_app: Quart) -> None:
    """Issue 24.7: REST says X-Data-Incomplete; the snapshot frame says "incomplete": true."""
    service = get_services(ws_app).subscriptions
    real = service.orchestrator

    class Late:
        """The real orchestrator, its answers marked as REQUEST_DEADLINE marks them."""

        async def get_bars(self, query: Any) -> Any:
            return dataclasses.replace(await real.get_bars(query), incomplete=True)

    async with ws_app.test_client().websocket("/api/v1/ws") as ws:
        await send(ws, {**SUB, "history": 5})
        frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
        assert "incomplete" not in frames[-1]  # a whole answer says nothing
        service.orchestrator = Late()  # type: ignore[assignment]
        try:
            await send(ws, {**SUB, "history": 5})  # a resync
            frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
            assert frames[-1]["incomplete"] is True and len(frames[-1]["bars"]) == 5
            await send(ws, {**SUB, "since": frames[-1]["bars"][0][0]})
            frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
            assert frames[-1]["incomplete"] is True
        finally:
            service.orchestrator = real


async def test_open_connections_per_client_are_capped_at_the_handshake(app_config: dict[str, Any]) -> None:
    """Issue 23.4: WS_MAX_CONNECTIONS_PER_CLIENT; one more is refused with 429 too_many_connections."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "WS_MAX_CONNECTIONS_PER_CLIENT": 2})
    async with app.test_app():
        client = app.test_client()
        async with client.websocket("/api/v1/ws") as one, client.websocket("/api/v1/ws") as two:
            for ws in (one, two):
                await send(ws, {"op": "ping", "id": 1})
                assert json.loads(await asyncio.wait_for(ws.receive(), 5))["type"] == "pong"
            with pytest.raises(WebsocketResponseError) as refused:
                async with client.websocket("/api/v1/ws") as three:
                    await three.receive()
            response = refused.value.response
            assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
            assert (await response.get_json())["error"]["code"] == "too_many_connections"
        service = get_services(app).subscriptions
        assert service.per_client == {} and not service.connections  # both released
        async with client.websocket("/api/v1/ws") as again:
            await send(again, {"op": "ping", "id": 2})
            assert json.loads(await asyncio.wait_for(again.receive(), 5))["type"] == "pong"


async def test_live_channels_per_instance_are_capped(app_config: dict[str, Any]) -> None:
    """Issue 23.4: WS_MAX_CHANNELS live channels per instance; a subscribe that would open one
    more gets an error frame; a live channel can still be joined."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "WS_MAX_CHANNELS": 1})
    async with app.test_app():
        client = app.test_client()
        async with client.websocket("/api/v1/ws") as one, client.websocket("/api/v1/ws") as two:
            await send(one, {**SUB, "history": 1})
            await recv_until(one, lambda f: f["type"] == "snapshot")
            await send(two, {**SUB, "timeframe": "5m", "history": 1, "id": "x"})
            frames = await recv_until(two, lambda f: f["type"] == "error")
            assert frames[-1]["code"] == "too_many_subscriptions" and frames[-1]["id"] == "x"
            assert "WS_MAX_CHANNELS" in frames[-1]["message"]
            await send(two, {**SUB, "history": 1})  # the live channel: joined
            await recv_until(two, lambda f: f["type"] == "snapshot")
            assert list(get_services(app).subscriptions.channels) == [CHANNEL]
