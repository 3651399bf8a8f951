"""Cached 500-bar /ohlcv answers vs a bare Quart endpoint on the same Hypercorn, in one run.

    .venv/bin/python -m bench.ohlcv_rest [--requests 3000] [--concurrency 32]

The bare endpoint returns the same 500-bar JSON body from memory, so the ratio is the cost of
our request path (validation, cache look-up, headers, metrics) over Quart + Hypercorn themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
from quart import Quart, Response

from app import create_app
from bench.common import free_port, hypercorn, load

PAST = 1_700_006_400_000
QUERY = f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h&start={PAST}&limit=500"
_BODY: dict[str, bytes] = {}


def bench_app() -> Quart:
    """The service app plus ``/bare``: the same body, served with no work."""
    # Rate limits off: the bench measures the data path, not the limiter's 429s.
    app = create_app({"DATABASE_SCHEMA": "bench_rest", "REDIS_PREFIX": "bench_rest", "LOG_LEVEL": "WARNING",
                      "RATE_LIMIT_ENABLED": False})

    @app.get("/bare")
    async def bare() -> Response:
        return Response(_BODY.get("b", b"{}"), content_type="application/json")

    @app.post("/bare")
    async def set_bare() -> Response:
        from quart import request

        data = await request.get_data(as_text=False)
        _BODY["b"] = data if isinstance(data, bytes) else data.encode()
        return Response("", status=204)

    return app


async def main(requests: int, concurrency: int) -> None:
    port = free_port()
    with hypercorn("bench.ohlcv_rest:bench_app()", port) as base:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + QUERY) as r:  # warm: fetch, store, cache
                body = await r.read()
                assert r.status == 200 and len(json.loads(body)["bars"]) == 500
            async with s.get(base + QUERY) as r:
                source = r.headers["X-Data-Source"]
            async with s.post(base + "/bare", data=body) as r:
                assert r.status == 204
        await load(base + "/bare", 300, concurrency)  # warm-up
        bare = await load(base + "/bare", requests, concurrency)
        ours = await load(base + QUERY, requests, concurrency)
    print(f"cached /ohlcv (500 1h bars, X-Data-Source: {source}), {requests} requests, concurrency {concurrency}")
    print(f"{'endpoint':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, fig in (("bare", bare), ("ohlcv", ours)):
        print(f"{name:<12}{fig['rps']:>10.0f}{fig['p50_ms']:>10.2f}{fig['p99_ms']:>10.2f}")
    print(f"ratio ohlcv/bare throughput: {ours['rps'] / bare['rps']:.2f}; "
          f"p50 latency ratio: {ours['p50_ms'] / bare['p50_ms']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
