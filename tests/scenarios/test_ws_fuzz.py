"""Hostile WebSocket clients on a real Hypercorn server: random, malformed, binary and huge frames,
and subscribe/unsubscribe floods. Every bad frame gets exactly one error frame (or, above Hypercorn's
frame limit, the documented close 1009), the server keeps serving, and its state and memory stay
bounded."""

from __future__ import annotations

import json
import random
import resource
import string
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from tests.support.ws import WS_TEST_CONFIG, Client, serve_app, wait_for

pytestmark = pytest.mark.slow
MAX_FRAME = 1 << 20  # Hypercorn's websocket_max_message_size in this test
REPLIES = {"error", "pong", "subscribed", "unsubscribed"}
#: Error codes a bad frame may get (docs/api.md: codes as in REST plus invalid_message, too_many_subscriptions).
ERROR_CODES = {"invalid_message", "invalid_parameter", "unknown_market", "unknown_provider",
               "unknown_symbol", "not_found", "too_many_subscriptions"}
STREAM = {"snapshot", "bar", "status"}


@pytest.fixture
async def server(app_config: dict[str, Any]) -> AsyncIterator[tuple[Quart, str]]:
    app = create_app({**app_config, **WS_TEST_CONFIG, "WS_MAX_SUBSCRIPTIONS": 10,
                      "WS_UNSUBSCRIBE_GRACE_SECONDS": 0.1})
    async with app.test_app(), serve_app(app, websocket_max_message_size=MAX_FRAME) as host:
        yield app, f"ws://{host}/api/v1/ws"


def garbage(rng: random.Random) -> str | bytes:
    """One hostile frame: broken JSON, wrong types, unknown ops, odd values, nesting, binary."""
    junk = "".join(rng.choice(string.printable + "é€😀\x00") for _ in range(rng.randint(0, 80)))
    sub = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1m"}
    choices: list[Any] = [
        junk, junk + "{", '{"op": ', "null", "[]", "42", '"ping"', "{}", '{"op": null}',
        json.dumps({"op": junk}), json.dumps({"op": "subscribe"}),
        json.dumps({**sub, "timeframe": rng.choice(["7m", "", "1M", None, 5])}),
        json.dumps({**sub, "history": rng.choice([-1, 1001, 1.5, "100", True, 10**30])}),
        json.dumps({**sub, "market": rng.choice(["", "nope", "x" * 40, 7])}),
        json.dumps({**sub, "provider": "nope"}), json.dumps({**sub, "symbol": "NOPE/" + junk[:20]}),
        json.dumps({"op": "unsubscribe", "channel": rng.choice(["", "a:b", "x" * 300, 3])}),
        json.dumps({"op": "unsubscribe", "channel": "sim:sim:NOT/SUBSCRIBED:1m"}),
        json.dumps({"op": "ping", "id": rng.choice([{"a": 1}, [1], True, "x" * 100, 1.5])}),
        json.dumps({"op": "ping", "pad": "x" * 5000}),  # over WS_MAX_MESSAGE_BYTES (4 KiB)
        "x" * (200 * 1024),  # well over the message limit, under Hypercorn's frame limit
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
    ]
    frame: str | bytes = rng.choice(choices)
    return frame


async def send_raw(client: Client, frame: str | bytes) -> None:
    assert client.ws is not None
    if isinstance(frame, bytes):
        await client.ws.send_bytes(frame)
    else:
        await client.ws.send_str(frame)


async def exchange(client: Client, frame: str | bytes, sentinel: str) -> list[dict[str, Any]]:
    """Send ``frame`` then a ping; the replies (stream frames left out) the server sent for ``frame``."""
    start = len(client.frames)
    await send_raw(client, frame)
    await client.send({"op": "ping", "id": sentinel})
    await wait_for(lambda: any(f.get("type") == "pong" and f.get("id") == sentinel
                               for f in client.frames[start:]), within=30)
    got = client.frames[start:]
    end = next(i for i, f in enumerate(got) if f.get("type") == "pong" and f.get("id") == sentinel)
    return [f for f in got[:end] if f["type"] not in STREAM]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_every_bad_frame_gets_one_error_and_the_connection_stays(server: tuple[Quart, str]) -> None:
    app, url = server
    rng = random.Random(20_240_601)
    async with aiohttp.ClientSession() as session:
        client = await Client(session, url).open()
        try:
            for n in range(150):
                frame = garbage(rng)
                replies = await exchange(client, frame, f"s{n}")
                assert len(replies) == 1, (frame[:200], replies)
                reply = replies[0]
                assert reply["type"] in REPLIES, reply
                if reply["type"] == "error":
                    assert reply["code"] in ERROR_CODES, (frame[:200], reply)
                    assert isinstance(reply["message"], str) and "Traceback" not in reply["message"]
            assert client.close_code is None and not client.ws.closed  # type: ignore[union-attr]
        finally:
            await client.close()
    await wait_for(lambda: not get_services(app).subscriptions.connections, within=5)


async def test_deeply_nested_json_is_an_invalid_message(server: tuple[Quart, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as session:
        client = await Client(session, url).open()
        try:
            replies = await exchange(client, "[" * 1500 + "]" * 1500, "n")
        finally:
            await client.close()
    assert [r["code"] for r in replies] == ["invalid_message"]


async def test_a_frame_over_the_server_limit_gets_close_1009(server: tuple[Quart, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as session:
        client = await Client(session, url).open()
        try:
            await send_raw(client, "x" * (MAX_FRAME + 1024))
            await wait_for(lambda: client.close_code is not None, within=10)
            assert client.close_code == 1009
        finally:
            await client.close()
        # The server goes on serving others.
        other = await Client(session, url).open()
        try:
            assert await exchange(other, json.dumps({"op": "ping", "id": "a"}), "b") == [
                {"type": "pong", "id": "a", "_at": pytest.approx(0, abs=1e12)}]
        finally:
            await other.close()


async def test_subscribe_unsubscribe_floods_leave_state_and_memory_bounded(
    server: tuple[Quart, str]
) -> None:
    app, url = server
    service = get_services(app).subscriptions
    timeframes = ["1m", "5m", "1h"]

    async def flood(session: aiohttp.ClientSession, round_no: int) -> None:
        clients = [await Client(session, url).open() for _ in range(4)]
        try:
            for i in range(120):
                c = clients[i % len(clients)]
                tf = timeframes[i % len(timeframes)]
                await c.send({"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD",
                              "timeframe": tf, "history": i % 20, "id": i})
                if i % 3:
                    await c.send({"op": "unsubscribe", "channel": f"sim:sim:SIM/USD:{tf}", "id": i})
            # Server-side state is capped while the flood is in flight.
            assert len(service.connections) <= len(clients)
            assert all(conn.queued <= conn.max_queue for conn in service.connections)
            assert all(len(conn.subs) <= 10 for conn in service.connections)
            for c in clients:  # each flooding client is still served, or was closed as too slow (1013)
                if c.close_code is None:
                    await exchange(c, json.dumps({"op": "ping"}), f"r{round_no}")
                else:
                    assert c.close_code == 1013
        finally:
            for c in clients:
                await c.close()

    async with aiohttp.ClientSession() as session:
        await flood(session, 0)
        baseline = rss_mib()
        for round_no in range(1, 3):
            await flood(session, round_no)
        async with session.get(url.replace("ws://", "http://").replace("/api/v1/ws", "/health")) as r:
            assert r.status == 200
    assert rss_mib() - baseline < 40, "memory kept growing across identical floods"
    await wait_for(lambda: not service.connections and not service.channels and not service.workers,
                   within=10)
