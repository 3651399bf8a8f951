"""A small HTTP/1.1 load generator for machines without ``wrk``: keep-alive connections, one
request in flight on each, responses framed by ``Content-Length`` (or chunked), on uvloop in a
process of its own. It parses no more than it must, so the server, not the client, is what runs
out of CPU first (aiohttp's client spends several times a bare Quart answer's CPU per request).

    python -m bench.loadgen URL SECONDS CONNECTIONS [--header 'Name: value']... [--body FILE]

Prints one JSON object: requests, non_2xx, rps, p50_ms, p99_ms, bytes_per_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class Conn(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as soon as each response ends."""

    def __init__(self, request: bytes, stats: dict[str, float], latencies: list[float],
                 until: float) -> None:
        self.request, self.stats, self.latencies, self.until = request, stats, latencies, until
        self.buf = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            status = int(head[9:12])
            if b"transfer-encoding: chunked" in head:
                last = self.buf.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    return
                size = last + 7
            else:
                length = LENGTH.search(head)
                size = end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buf) < size:
                    return
            del self.buf[:size]
            now = time.perf_counter()
            self.latencies.append(now - self.sent)
            self.stats["requests"] += 1
            self.stats["bytes"] += size
            self.stats["non_2xx"] += status >= 400
            if now >= self.until:
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run(url: str, seconds: float, connections: int, headers: list[str],
              body: bytes | None) -> dict[str, float]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{'POST' if body is not None else 'GET'} {target} HTTP/1.1", f"Host: {parts.netloc}",
             *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    stats = {"requests": 0.0, "bytes": 0.0, "non_2xx": 0.0}
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    until = started + seconds
    conns = [(await loop.create_connection(lambda: Conn(request, stats, latencies, until),
                                           parts.hostname or "127.0.0.1", parts.port or 80))[1]
             for _ in range(connections)]
    await asyncio.wait([c.done for c in conns], timeout=seconds + 30)
    wall = time.perf_counter() - started
    latencies.sort()
    n = len(latencies) or 1
    return {"requests": stats["requests"], "non_2xx": stats["non_2xx"], "rps": stats["requests"] / wall,
            "bytes_per_s": stats["bytes"] / wall,
            "p50_ms": latencies[n // 2] * 1000 if latencies else float("nan"),
            "p99_ms": latencies[max(int(n * 0.99) - 1, 0)] * 1000 if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("seconds", type=float)
    parser.add_argument("connections", type=int)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body")
    args = parser.parse_args()
    body = Path(args.body).read_bytes() if args.body else None
    import uvloop

    print(json.dumps(uvloop.run(run(args.url, args.seconds, args.connections, args.header, body))))


if __name__ == "__main__":
    main()
