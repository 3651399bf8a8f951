"""Issue 23 (13): ambiguous framing and slow bodies, against a real server (Hypercorn, h11).

- A request with both Content-Length and Transfer-Encoding used to be read as chunked on a
  connection kept open; it is now refused with 400 and the connection is closed, so a request
  smuggled after it is never answered.
- A body that trickles in is cut off at REQUEST_BODY_TIMEOUT with 408 (Quart's default was 60 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.helpers import delete_prefix, drop_schema
from tests.support.live_server import hypercorn_server


@pytest.fixture
def server(uid: str) -> Iterator[str]:
    from tests.conftest import DATABASE_URL, REDIS_URL

    schema, prefix = f"t_{uid}", f"t:{uid}"
    with hypercorn_server({"DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix, "REQUEST_BODY_TIMEOUT": "1.0",
                           "RATE_LIMIT_ENABLED": "false", "WARMUP_ENABLED": "false"}) as base:
        yield base
    asyncio.run(drop_schema(DATABASE_URL, schema))
    asyncio.run(delete_prefix(REDIS_URL, prefix))


async def exchange(base: str, data: bytes, pause_after: int | None = None, within: float = 5.0) -> bytes:
    """Send ``data`` (stopping after ``pause_after`` bytes), read until the server closes or
    ``within`` seconds pass."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data if pause_after is None else data[:pause_after])
        await writer.drain()
        got = b""
        try:
            async with asyncio.timeout(within):
                while chunk := await reader.read(65536):
                    got += chunk
        except TimeoutError:
            got += b"<still open>"
        return got
    finally:
        writer.close()


async def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(server: str) -> None:
    smuggled = (b"POST /api/v1/backfill HTTP/1.1\r\nHost: md\r\nContent-Type: application/json\r\n"
                b"Content-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /api/v1/markets HTTP/1.1\r\nHost: md\r\n\r\n")
    answer = await exchange(server, smuggled)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"invalid_parameter" in answer and b"x-request-id" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1 and not answer.endswith(b"<still open>"), answer


async def test_a_trickling_body_gets_408_at_the_deadline(server: str) -> None:
    body = b'{"market": "sim", "provider": "sim", "symbol": "SIM/USD", "start": 0, "end": 60000}'
    request = (b"POST /api/v1/backfill HTTP/1.1\r\nHost: md\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    started = time.monotonic()
    answer = await exchange(server, request, pause_after=len(request) - 10, within=5.0)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.9 <= took < 3.0, took
