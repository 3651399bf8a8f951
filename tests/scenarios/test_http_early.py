"""Known refusals answered as soon as Hypercorn has parsed the request (``blueprints/http_early``),
over real sockets to a real Hypercorn: the bytes of Quart's own 429, keep-alive and pipelining
kept, and every request that is not plain left to Hypercorn's path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
from prometheus_client import REGISTRY

from app import create_app
from app_extensions.hooks import EARLY_ANSWER
from blueprints.http_early import encode
from tests.support.ws import serve_app

MARKETS = "/api/v1/markets"
Reply = tuple[int, list[tuple[str, str]], bytes]


def get(path: str, *headers: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in ("Host: test", *headers))
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


async def reply(reader: asyncio.StreamReader) -> Reply:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = [(name.lower(), value) for name, value in
               (line.split(": ", 1) for line in lines if line)]
    length = int(dict(headers)["content-length"])
    return int(status_line.split()[1]), headers, await reader.readexactly(length)


@asynccontextmanager
async def refused_client(app_config: dict[str, Any]) -> AsyncIterator[
        tuple[asyncio.StreamReader, asyncio.StreamWriter, list[int], Reply]]:
    """A served app allowing 2 requests a minute, and one connection whose client is refused
    already (once by Quart). Yields the connection, the statuses answered early so far, and
    Quart's 429."""
    app = create_app({**app_config, "RATE_LIMITS": {"default": "2/60"}})
    answer = app.extensions[EARLY_ANSWER]
    early: list[int] = []

    def counted(*args: Any) -> Any:
        got = answer(*args)
        if got is not None:
            early.append(got[0])
        return got

    app.extensions[EARLY_ANSWER] = counted
    async with serve_app(app) as addr:
        host, port = addr.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            statuses = []
            for _ in range(3):
                writer.write(get(MARKETS))
                statuses.append((last := await reply(reader))[0])
            assert statuses == [200, 200, 429] and early == []  # the 429 was Quart's
            yield reader, writer, early, last
        finally:
            writer.close()


async def test_a_known_refusal_is_answered_before_the_stream_as_quart_answers_it(
        app_config: dict[str, Any]) -> None:
    labels = {"method": "GET", "route": MARKETS, "status": "429"}
    async with refused_client(app_config) as (reader, writer, early, quarts):
        counted = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
        writer.write(get(MARKETS, "X-Request-ID: mine-1"))
        status, headers, body = await reply(reader)
        assert status == 429 and early == [429]
        assert body == quarts[2]  # the same bytes
        assert [n for n, _ in headers] == [n for n, _ in quarts[1]]  # the same headers, in order
        values = dict(headers)
        assert values["x-request-id"] == "mine-1" and values["server"] == "hypercorn-h11"
        assert values["x-ratelimit-limit"] == "2" and values["x-ratelimit-remaining"] == "0"
        assert 1 <= int(values["retry-after"]) <= 60
        assert REGISTRY.get_sample_value("http_requests_total", labels) == counted + 1


async def test_pipelined_refusals_are_answered_in_order_and_the_connection_goes_on(
        app_config: dict[str, Any]) -> None:
    async with refused_client(app_config) as (reader, writer, early, _):
        writer.write(b"".join(get(MARKETS, f"X-Request-ID: p-{i}") for i in range(3)))
        replies = [await reply(reader) for _ in range(3)]
        assert [(s, dict(h)["x-request-id"]) for s, h, _ in replies] == [
            (429, "p-0"), (429, "p-1"), (429, "p-2")]
        assert early == [429] * 3
        # Another limit class on the same connection reaches Quart (its validation answers).
        writer.write(get("/api/v1/ohlcv?market=sim"))
        status, _, body = await reply(reader)
        assert status == 400 and b"invalid_parameter" in body and early == [429] * 3
        writer.write(get(MARKETS))
        assert (await reply(reader))[0] == 429 and early == [429] * 4


async def test_requests_that_are_not_plain_take_hypercorns_path(app_config: dict[str, Any]) -> None:
    async with refused_client(app_config) as (reader, writer, early, _):
        writer.write(get(MARKETS, "Origin: https://x.example"))  # CORS answers are Quart's
        assert (await reply(reader))[0] == 429 and early == []
        writer.write(get(MARKETS, "Content-Length: 0"))
        assert (await reply(reader))[0] == 429 and early == []
        writer.write(get(MARKETS, "Connection: close"))  # Hypercorn then closes the connection
        status, headers, _ = await reply(reader)
        assert status == 429 and early == [] and ("connection", "close") in headers
        assert await asyncio.wait_for(reader.read(), 10) == b""


def test_the_bytes_are_h11s() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(get(MARKETS))
    assert isinstance(conn.next_event(), h11.Request)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"x-a", b"1")]
    sent = conn.send(h11.Response(status_code=429, headers=headers))
    assert sent is not None
    assert encode(429, headers, b"{}") == sent + (conn.send(h11.Data(data=b"{}")) or b"")
