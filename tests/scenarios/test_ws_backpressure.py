"""Real Hypercorn servers: a client that does not read is closed with 1013 while the others keep
receiving; a peer that stops answering the server's pings is disconnected (heartbeat)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import zlib
from collections import Counter
from typing import Any

import pytest

from app import create_app
from app_extensions.services import get_services
from blueprints.websocket import hypercorn_options
from services.live.frames import StatusFrame
from tests.support.ws import WS_TEST_CONFIG, Client, assert_ts_monotonic, http_session, metric, serve_app, wait_for

CHANNEL = "sim:sim:SIM/USD:1m"
SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "history": 0}


class RawClient:
    """A minimal WebSocket client on a small receive buffer that reads only when told to."""

    async def open(self, addr: str, headers: str = "") -> RawClient:
        host, port = addr.split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET /api/v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode())
        head = self.head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    def send(self, msg: dict[str, Any]) -> None:
        payload = json.dumps(msg).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def read_to_close(self) -> tuple[int, int | None]:
        """Read every frame until the close frame: (text frames read, close code). Each text
        frame is counted by its ``type`` in ``kinds`` (inflated first when the server deflated
        it: one window for the whole connection, as context takeover needs)."""
        texts = 0
        self.kinds: Counter[str] = Counter()
        inflate = zlib.decompressobj(-15)
        async with asyncio.timeout(20):
            while True:
                b0, b1 = await self.reader.readexactly(2)
                size = b1 & 0x7F
                if size == 126:
                    size = struct.unpack(">H", await self.reader.readexactly(2))[0]
                elif size == 127:
                    size = struct.unpack(">Q", await self.reader.readexactly(8))[0]
                payload = await self.reader.readexactly(size)
                if b0 & 0x0F == 0x8:
                    return texts, struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                if b0 & 0x0F == 0x1:
                    texts += 1
                    if b0 & 0x40:  # RSV1: a deflated message (RFC 7692)
                        payload = inflate.decompress(payload + b"\x00\x00\xff\xff")
                    self.kinds[json.loads(payload)["type"]] += 1

    def close(self) -> None:
        self.writer.close()


async def test_slow_client_is_closed_with_1013_and_the_others_keep_receiving(
    app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim", "WS_SEND_QUEUE": 8})
    service = get_services(app).subscriptions
    dropped = metric("ws_clients_dropped_total", {"reason": "slow"})
    async with serve_app(app) as addr, http_session() as session:
        fast = await Client(session, f"http://{addr}/api/v1/ws").open()
        slow = await RawClient().open(addr)
        try:
            await fast.send(SUB)
            slow.send(SUB)
            await wait_for(lambda: bool(fast.of("snapshot")) and service.status()["connections"] == 2)
            await wait_for(lambda: len(service.channels[CHANNEL].subscribers) == 2)
            big = StatusFrame(CHANNEL, "live", "x" * 16_000)
            sent = 0
            while service.status()["connections"] == 2:  # the slow client's buffers fill up
                assert sent < 3000, "the slow client was never dropped"
                for _ in range(20):
                    await service.hub.publish(big)
                sent += 20
                await wait_for(lambda n=sent: len(fast.of("status")) >= n, within=10)  # type: ignore[misc]
            assert metric("ws_clients_dropped_total", {"reason": "slow"}) == dropped + 1
            dropped_at = time.time()
            _, code = await slow.read_to_close()
            assert code == 1013 and slow.kinds["status"] < sent
            await wait_for(lambda: any(f["type"] == "bar" and f["_at"] > dropped_at for f in fast.frames))
            assert fast.close_code is None
            assert_ts_monotonic(fast.frames)
        finally:
            slow.close()
            await fast.close()


@pytest.mark.parametrize("beat", [0.2])
async def test_heartbeat_disconnects_a_dead_peer(app_config: dict[str, Any], beat: float) -> None:
    cfg = {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim", "WS_HEARTBEAT_SECONDS": beat}
    app = create_app(cfg)
    service = get_services(app).subscriptions
    async with serve_app(app, **hypercorn_options(app.config)) as addr, http_session() as session:
        alive = await Client(session, f"http://{addr}/api/v1/ws").open()
        dead = await RawClient().open(addr)  # never reads, never answers a ping
        try:
            await alive.send(SUB)
            dead.send(SUB)
            await wait_for(lambda: service.status()["connections"] == 2)
            started = time.monotonic()
            await wait_for(lambda: service.status()["connections"] == 1, within=10)
            assert time.monotonic() - started < 3 * beat + 2
            mark = time.time()
            await wait_for(lambda: any(f["type"] == "bar" and f["_at"] > mark for f in alive.frames))
            assert alive.close_code is None
        finally:
            dead.close()
            await alive.close()


async def test_a_client_sending_faster_than_its_messages_are_handled_is_closed_with_1013(
    app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim", "WS_MAX_PENDING_MESSAGES": 4})
    service = get_services(app).subscriptions
    dropped = metric("ws_clients_dropped_total", {"reason": "flood"})
    async with serve_app(app) as addr, http_session() as session:
        polite = await Client(session, f"http://{addr}/api/v1/ws").open()
        flooder = await Client(session, f"http://{addr}/api/v1/ws").open()
        try:
            assert flooder.ws is not None
            for i in range(200):  # subscribes need snapshots: handled far slower than sent
                await flooder.ws.send_str(json.dumps({**SUB, "history": 50 + i % 50, "id": i}))
            await wait_for(lambda: flooder.close_code is not None)
            assert flooder.close_code == 1013
            assert metric("ws_clients_dropped_total", {"reason": "flood"}) == dropped + 1
            await polite.send({"op": "ping", "id": "ok"})
            await wait_for(lambda: any(f["type"] == "pong" for f in polite.frames))
            await wait_for(lambda: service.status()["connections"] == 1)
        finally:
            await flooder.close()
            await polite.close()
