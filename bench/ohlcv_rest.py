"""Cached 500 x 1m /ohlcv answers (about 30 KB) against a bare Quart route serving the same bytes
on the same server (one process, through ``serve.py``: Hypercorn unless ``--server``), every ratio
taken within one run. ``bench/servers.py`` runs the same phases on every server at once.

    .venv/bin/python -m bench.ohlcv_rest [--seconds 4] [--rounds 5] [--connections 32] [--server hypercorn]

Load comes from ``wrk -t1 -c32`` (Debian package ``wrk``; without it ``bench/loadgen.py``, lighter
than aiohttp but still sharing the machine's CPU with the server). One server process serves both routes; a bench-only
route switches the rate limiter between phases, so every phase runs on the same process. Each round
runs every phase once, in order; the figure of a phase is its best round (highest req/s, least
server CPU per answer), since a neighbour's load on the machine only ever slows a phase down.
Beside req/s each phase shows the server's CPU time per answer (from /proc): the same ratio to
bare, less disturbed by other processes. Lines printed:

- ``bare``: the ceiling: a separate Quart app (none of the service's hooks) mounted at ``/bare`` on
  the same server, returning the body from memory;
- ``cached, limiter off`` and ``cached, limiter on`` (a limit the load never reaches: every answer a
  200, the limiter's own cost);
- ``limiter on, default config``: one client over the default ``ohlcv`` limit (300/60), so almost
  every answer is a 429: the 429 path, and its cost against a cached 200;
- ``floor``: the server answering a raw ASGI 429 (no Quart, no app): what any answer costs at least;
- compression: bytes per answer and req/s for identity, gzip and br.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp
from quart import Quart, Response, request

from app import create_app
from app_extensions.ratelimit import Limit, get_ratelimiter
from bench.common import LoadResult, Server, app_server, drive, free_port, load_tool

PAST = 1_700_006_400_000  # 2023-11-15: closed long ago
QUERY = f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1m&start={PAST}&limit=500"
NO_LIMIT = "1000000000/60"
_BODY: dict[str, bytes] = {}
FLOOR_BODY = b'{"error": {"code": "rate_limited", "message": "rate limit of 300 requests exceeded; retry later"}}'
FLOOR_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(FLOOR_BODY)).encode()),
                 (b"retry-after", b"1"), (b"x-ratelimit-limit", b"300"), (b"x-ratelimit-remaining", b"0"),
                 (b"x-request-id", b"0123456789abcdef0123456789abcdef")]


def bare_app() -> Quart:
    """The ceiling: a Quart app with one route returning the body from memory, no hooks."""
    app = Quart("bare")

    @app.get("/bare")
    async def bare() -> Response:
        return Response(_BODY.get("b", b"{}"), content_type="application/json")

    @app.post("/bare")
    async def set_bare() -> Response:
        _BODY["b"] = await request.get_data(as_text=False)  # type: ignore[assignment]
        return Response("", status=204)

    return app


def service_app() -> Quart:
    """The service app (default config) plus a bench-only switch of the rate limiter."""
    app = create_app({"DATABASE_SCHEMA": "bench_rest", "REDIS_PREFIX": "bench_rest", "LOG_LEVEL": "WARNING"})

    @app.post("/bench/limiter")
    async def set_limiter() -> Response:
        conf = await request.get_json()
        get_ratelimiter(app).configure(bool(conf["enabled"]), {"ohlcv": Limit.parse(conf["ohlcv"])})
        return Response("", status=204)

    return app


class Both:
    """Both apps on one server: ``/bare`` goes to the bare app, the rest (lifespan included) to
    the service, whose settings, start-up hooks and extensions ``serve.py`` uses."""

    def __init__(self) -> None:
        self.bare, self.service = bare_app(), service_app()
        self.extensions = self.service.extensions
        self.config = self.service.config
        self.before_serving = self.service.before_serving

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bare":
            await self.bare(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/floor":  # the server alone: a raw 429
            await send({"type": "http.response.start", "status": 429, "headers": FLOOR_HEADERS})
            await send({"type": "http.response.body", "body": FLOOR_BODY})
        else:
            await self.service(scope, receive, send)


def bench_app() -> Both:
    return Both()


def best(runs: list[LoadResult]) -> LoadResult:
    """A phase's figure: its best round by req/s, with the least server CPU per answer of any
    round (a neighbour's load on the machine only ever slows a phase down)."""
    top = max(runs, key=lambda r: r.rps)
    return LoadResult(rps=top.rps, p50_ms=top.p50_ms, p99_ms=top.p99_ms, requests=top.requests,
                      non_2xx=top.non_2xx, bytes_per_s=top.bytes_per_s,
                      cpu_us=min(r.cpu_us for r in runs))


async def _limiter(base: str, enabled: bool, ohlcv: str = "300/60") -> None:
    async with aiohttp.ClientSession() as s, s.post(
        base + "/bench/limiter", json={"enabled": enabled, "ohlcv": ohlcv}
    ) as r:
        assert r.status == 204, r.status


async def _size(base: str, encoding: str | None) -> tuple[int, str]:
    headers = {"Accept-Encoding": encoding or "identity"}
    async with aiohttp.ClientSession() as s, s.get(base + QUERY, headers=headers,
                                                   auto_decompress=False) as r:
        assert r.status == 200, r.status
        return len(await r.read()), r.headers.get("Content-Encoding", "identity")


#: The phases of a round, in order: (name, limiter state, path or query, request headers).
PHASES: list[tuple[str, tuple[bool, str], str, dict[str, str] | None]] = [
    ("bare", (False, "300/60"), "/bare", None),
    ("cached, limiter off", (False, "300/60"), QUERY, None),
    ("  ... Accept-Encoding: gzip", (False, "300/60"), QUERY, {"Accept-Encoding": "gzip"}),
    ("  ... Accept-Encoding: br", (False, "300/60"), QUERY, {"Accept-Encoding": "br, gzip"}),
    ("cached, limiter on (not reached)", (True, NO_LIMIT), QUERY, None),
    ("limiter on, default config", (True, "300/60"), QUERY, None),
    ("floor: raw ASGI 429, no Quart", (True, "300/60"), "/floor", None),
]
#: The phases ``bench/servers.py`` runs (the comparison between servers).
SERVER_PHASES = ("bare", "cached, limiter off", "cached, limiter on (not reached)", "limiter on, default config")


async def warm(base: str) -> tuple[bytes, str]:
    """Fetch, store and cache the answer, and give the bare route the same bytes; returns them
    and the cached answer's ``X-Data-Source``."""
    await _limiter(base, False)
    async with aiohttp.ClientSession() as s:
        async with s.get(base + QUERY, headers={"Accept-Encoding": "identity"}) as r:
            body = await r.read()  # warm: fetch, store, cache
            assert r.status == 200 and len(json.loads(body)["bars"]) == 500, r.status
        async with s.get(base + QUERY, headers={"Accept-Encoding": "identity"}) as r:
            source = r.headers["X-Data-Source"]
        async with s.post(base + "/bare", data=body) as r:
            assert r.status == 204
    return body, source


async def run_phases(server: Server, phases: dict[str, list[LoadResult]], seconds: float,
                     connections: int, names: tuple[str, ...] | None = None) -> None:
    """One round: every phase (of ``names``, or all) once, in order, its result (with the
    server's CPU per answer) appended to ``phases[name]``."""
    state: tuple[bool, str] | None = None
    for name, limiter, path, headers in PHASES:
        if names is not None and name not in names:
            continue
        if limiter != state:
            await _limiter(server.base, *limiter)
            state = limiter
        before = server.cpu_seconds()
        result = await drive(server.base + path, seconds, connections, headers)
        result.cpu_us = (server.cpu_seconds() - before) / max(result.requests, 1) * 1e6
        phases.setdefault(name, []).append(result)
    await _limiter(server.base, False)


async def main(seconds: float, rounds: int, connections: int, server_name: str) -> None:
    phases: dict[str, list[LoadResult]] = {}
    with app_server("bench.ohlcv_rest:bench_app", free_port(), server_name) as server:
        body, source = await warm(server.base)
        sizes = {enc or "identity": await _size(server.base, enc) for enc in (None, "gzip", "br")}
        await drive(server.base + "/bare", 2, connections)  # warm-up
        for _ in range(rounds):
            await run_phases(server, phases, seconds, connections)
    print(f"server: {server_name}")
    report(phases, sizes, source, seconds, rounds, connections, len(body))


def report(phases: dict[str, list[LoadResult]], sizes: dict[str, tuple[int, str]], source: str,
           seconds: float, rounds: int, connections: int, body_len: int) -> None:
    med: dict[str, Any] = {}
    for name, runs in phases.items():
        top = best(runs)
        med[name] = {"rps": top.rps, "p50_ms": top.p50_ms, "p99_ms": top.p99_ms,
                     "requests": top.requests, "non_2xx": top.non_2xx, "cpu_us": top.cpu_us}
    bare = med["bare"]
    tool = load_tool()
    print(f"cached /ohlcv: 500 1m bars, {body_len} bytes, X-Data-Source: {source}; {tool} "
          f"-c{connections}, {rounds} rounds x {seconds:g} s per phase (best round)")
    print("x bare: req/s over bare's req/s; cpu x bare: bare's server CPU per answer over the phase's "
          "(the same ratio, immune to other load on the machine)")
    print(f"{'phase':<36}{'req/s':>8}{'x bare':>8}{'cpu us':>8}{'cpu x bare':>11}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'429 %':>7}")
    for name, fig in med.items():
        share = 100 * fig["non_2xx"] / max(fig["requests"], 1)
        print(f"{name:<36}{fig['rps']:>8.0f}{fig['rps'] / bare['rps']:>8.2f}{fig['cpu_us']:>8.0f}"
              f"{bare['cpu_us'] / fig['cpu_us']:>11.2f}{fig['p50_ms']:>8.2f}{fig['p99_ms']:>8.2f}{share:>7.1f}")
    on, refused = med["cached, limiter on (not reached)"], med["limiter on, default config"]
    floor = med["floor: raw ASGI 429, no Quart"]
    print(f"cost of a 429 / cost of a cached 200 (limiter on): {on['rps'] / refused['rps']:.2f} by req/s, "
          f"{refused['cpu_us'] / on['cpu_us']:.2f} by CPU (goal <= 0.5); the server's own floor for "
          f"any answer / cached 200: {floor['cpu_us'] / on['cpu_us']:.2f} by CPU")
    line = ", ".join(f"{enc} {n} B ({got})" for enc, (n, got) in sizes.items())
    print(f"compression: bytes per answer: {line}; req/s identity "
          f"{med['cached, limiter off']['rps']:.0f}, gzip {med['  ... Accept-Encoding: gzip']['rps']:.0f}, "
          f"br {med['  ... Accept-Encoding: br']['rps']:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server", default="hypercorn", help="uvicorn, hypercorn or granian")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds, args.connections, args.server))
