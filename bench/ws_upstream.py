"""Upstream cost and latency of live Binance channels: REST polling against stream feeds.

Usage: ``.venv/bin/python bench/ws_upstream.py [--channels 100] [--minutes 3] [--feeds poll,stream]``

For each feed a fresh app process (Hypercorn, real PostgreSQL and Redis) serves ``--channels``
live ``1m`` channels of the exchange emulator (in this process, Binance's REST and kline streams,
streams pushing every 2 s as Binance does, weight counted as Binance counts it). One WebSocket
client subscribes to every channel. After a warm-up (every channel sent a bar), the bench counts
for ``--minutes``:

- **REST weight** the app spent (the emulator's ``X-MBX-USED-WEIGHT-1M`` accounting): per minute,
  and the 10-minute figure as start-up weight + 10 x the steady per-minute rate (the steady rate
  is measured over whole minutes, so it holds every periodic call: polls, stream checks);
- **latency** from the emulator's bar change (a new bucket opens at its open time) to the client
  frame carrying the new bar, p50/p99 over every channel and bucket seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve(port: int, env: dict[str, Any]) -> None:
    """Child mode: serve the app with ``env`` on ``port`` until SIGTERM."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig

    from app import create_app

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        app = create_app(env)
        hc = HypercornConfig()
        hc.bind = [f"127.0.0.1:{port}"]
        hc.accesslog = None
        hc.loglevel = "WARNING"
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(main())


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def histogram_quantiles(text: str, name: str) -> str:
    """p50/p99 (bucket upper bounds, ms) of a Prometheus histogram in ``text``, summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name + "_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    if not buckets or not buckets[max(buckets)]:
        return "-"
    total = buckets[max(buckets)]
    p50 = next(le for le in sorted(buckets) if buckets[le] >= total * 0.5)
    p99 = next(le for le in sorted(buckets) if buckets[le] >= total * 0.99)
    return f"<={p50 * 1000:g}/<={p99 * 1000:g}"


def app_env(feed: str, emu: Any, channels: int, tag: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "APP_ENV": "production", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text",
        "DATABASE_SCHEMA": f"bench_up_{tag}", "REDIS_PREFIX": f"bench:up:{tag}",
        "ENABLED_MARKETS": "crypto", "CCXT_EXCHANGES": "binance", "RATE_LIMIT_ENABLED": False,
        "PROVIDER_URLS": {"binance": emu.url}, "WS_MAX_SUBSCRIPTIONS": channels + 10,
        "STREAM_FEEDS": feed == "stream",
    }
    if feed == "stream":
        env["PROVIDER_WS_URLS"] = {"binance": emu.ws_url}
    return env


async def run_feed(feed: str, channels: int, minutes: float) -> dict[str, Any]:
    import aiohttp

    from tests.support.exchange_emulator import ExchangeEmulator
    from tests.support.ws import free_port, wait_healthy

    emu = ExchangeEmulator()
    await emu.start()
    symbols = emu.binance.add_symbols(channels)
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    env = app_env(feed, emu, channels, tag)
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port), json.dumps(env), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    newest: dict[str, int] = {}
    latencies: list[float] = []
    counting = [False]
    all_live = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base)
            ws = await http.ws_connect(base + "/api/v1/ws")
            for i, sym in enumerate(symbols):
                await ws.send_str(json.dumps({
                    "op": "subscribe", "market": "crypto", "provider": "binance",
                    "symbol": f"{sym[:-4]}/USDT", "timeframe": "1m", "history": 1, "id": str(i)}))

            async def read() -> None:
                async for msg in ws:
                    frame = json.loads(msg.data)
                    if frame.get("type") != "bar":
                        continue
                    ts, channel = int(frame["bar"][0]), frame["channel"]
                    if ts > newest.get(channel, 0):
                        if counting[0] and channel in newest:
                            latencies.append(time.time() - ts / 1000)
                        newest[channel] = ts
                        if len(newest) >= channels:
                            all_live.set()

            reader = asyncio.create_task(read())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_live.wait(), 120)
            startup_weight = emu.weights.to_dict()["total_weight"]
            counting[0], w0, t0 = True, startup_weight, time.time()
            await asyncio.sleep(minutes * 60)
            w1, t1 = emu.weights.to_dict()["total_weight"], time.time()
            async with http.get(base + "/api/v1/channels") as r:
                listed = (await r.json()).get("channels", []) if r.status == 200 else []
            async with http.get(base + "/metrics") as r:
                event_lag = histogram_quantiles(await r.text(), "stream_event_lag_seconds")
            await ws.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
        await emu.stop()
        from bench.common import drop_bench_data
        from config import load_config

        cfg = load_config()
        await drop_bench_data(cfg.DATABASE_URL, env["DATABASE_SCHEMA"], cfg.REDIS_URL,
                              env["REDIS_PREFIX"])
    per_min = (w1 - w0) / ((t1 - t0) / 60)
    feeds = sorted({c.get("feed") for c in listed})
    return {"feed": feed, "live": len(newest), "startup_weight": startup_weight,
            "weight_per_min": per_min, "weight_10min": startup_weight + 10 * per_min,
            "p50_ms": quantile(latencies, 0.5) * 1000, "p99_ms": quantile(latencies, 0.99) * 1000,
            "samples": len(latencies), "channels_feed": ",".join(map(str, feeds)),
            "event_lag": event_lag}


async def main(feeds: list[str], channels: int, minutes: float) -> None:
    print(f"{channels} live Binance 1m channels, {minutes} min measured per feed "
          "(weight: Binance's, klines 2 per call)")
    print(f"{'feed':>6} {'live':>5} {'start-up w':>10} {'w/min':>8} {'w/10min':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'samples':>7} {'/channels feed':>14} "
          f"{'event->publish p50/p99 ms':>26}")
    results = {}
    for feed in feeds:
        r = await run_feed(feed, channels, minutes)
        results[feed] = r
        print(f"{r['feed']:>6} {r['live']:>5} {r['startup_weight']:>10} "
              f"{r['weight_per_min']:>8.1f} {r['weight_10min']:>8.0f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['samples']:>7} {r['channels_feed']:>14} "
              f"{r['event_lag']:>26}", flush=True)
    if "poll" in results and "stream" in results:
        poll, stream = results["poll"], results["stream"]
        print(f"10-minute weight, polling / streaming: "
              f"{poll['weight_10min'] / max(1.0, stream['weight_10min']):.1f}x (goal >= 20x); "
              f"steady per minute: {poll['weight_per_min'] / max(1.0, stream['weight_per_min']):.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "ENV"), help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--feeds", default="poll,stream")
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), json.loads(args.serve[1]))
    else:
        asyncio.run(main(args.feeds.split(","), args.channels, args.minutes))
