"""Our cached /ohlcv answer of 500 1m bars against ccxt-gateway 1.9.0 (a stateless CCXT REST
proxy) serving the same bars, both fed by the exchange emulator, within one run.

    .venv/bin/python -m bench.gateway [--seconds 5] [--rounds 3] [--connections 32] [--venv DIR]

ccxt-gateway is not a dependency of the project: ``bench.gateway_venv`` installs ``ccxt-gateway==1.9.0``
(with the project's ccxt version) into a virtualenv outside the repository on the first run, or
prints why it could not and skips. One emulator process (``python -m tests.support.exchange_emulator``, Binance's
REST API) is the upstream of both sides:

- ours: the service under ``hypercorn --workers 1`` with ``PROVIDER_URLS={"binance": emulator}``
  and the rate limiter off (the gateway has none), asked
  ``GET /api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe=1m&start=<2024-01-01>&limit=500``;
  after the first answer (fetched, stored, prepared) every answer is a cached one. The same query
  on the ``sim`` market (``SIM/USD``, the figure ``bench.ohlcv_rest`` measures) is shown beside it;
- ccxt-gateway: its own ``ccxt-gateway`` command (uvicorn, FastAPI, a ZeroMQ broker and one CCXT
  subprocess per exchange), the exchange made with ``POST /exchanges/bn?exchange_name=binance``,
  asked ``POST /exchanges/bn/fetch_ohlcv`` with ``{"symbol": "BTC/USDT", "timeframe": "1m", "since":
  <2024-01-01>, "limit": 500}`` (its GET passes query strings to CCXT as str, which
  ``fetch_ohlcv`` rejects). Every answer is a fresh klines call to the emulator. Its exchange URLs
  are rebased on the emulator by a start-up hook in its virtualenv (see ``bench.gateway_venv``:
  1.9.0 has no setting for them). Measured as it ships (CCXT's client-side throttle on, Binance's
  ``rateLimit``) and with the throttle off through its own REST setter (``enableRateLimit``).

Same load on every phase: ``wrk -t1 -c32`` for ``--seconds``; each round runs every phase once and
a phase's figure is its best round. CPU per answer comes from /proc (the server's processes; for
the gateway its subprocess too, and the emulator's share beside it). Both bodies are checked to
hold the same 500 bars before the load starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from quart import Quart

from app import create_app
from bench.backfill import DATABASE_URL, REDIS_URL, T0, start_emulator
from bench.common import LoadResult, cpu_seconds, drive, drop_bench_data, free_port, hypercorn_server, load_tool
from bench.gateway_venv import DEFAULT_VENV, URL_ENV, GatewayUnavailable, ensure_gateway

SCHEMA = PREFIX = "bench_gateway"
OURS = f"/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe=1m&start={T0}&limit=500"
SIM = f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1m&start={T0}&limit=500"
GATEWAY_CALL = "/exchanges/bn/fetch_ohlcv"
GATEWAY_BODY = json.dumps({"symbol": "BTC/USDT", "timeframe": "1m", "since": T0, "limit": 500}).encode()
JSON = {"Content-Type": "application/json"}
EMULATOR_ENV = "BENCH_GATEWAY_EMULATOR"


def service_app() -> Quart:
    """The service with binance on the emulator (URL from ``BENCH_GATEWAY_EMULATOR``), limiter off."""
    return create_app({"DATABASE_SCHEMA": SCHEMA, "REDIS_PREFIX": PREFIX, "LOG_LEVEL": "WARNING",
                       "PROVIDER_URLS": {"binance": os.environ[EMULATOR_ENV]},
                       "RATE_LIMIT_ENABLED": False})


class Gateway:
    """``ccxt-gateway`` in a subprocess on free ports, its binance pointed at ``emulator``."""

    def __init__(self, script: Path, emulator: str) -> None:
        self.port, self.workdir = free_port(), tempfile.mkdtemp(prefix="bench-gateway-")
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, URL_ENV: emulator, "CCXT_GATEWAY_SERVER_HOST": "127.0.0.1",
               "CCXT_GATEWAY_SERVER_PORT": str(self.port),
               "CCXT_GATEWAY_ZMQ_BROKER_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
               "CCXT_GATEWAY_UPDATE_CHECK_INTERVAL_HOURS": "0",  # no PyPI look-up for ccxt updates
               "CCXT_GATEWAY_IDLE_PIDFILE_PATH": f"{self.workdir}/ccxt_gateway.pid"}
        self.proc = subprocess.Popen([str(script)], cwd=self.workdir, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with session.get(self.base + "/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"ccxt-gateway did not come up (exit code {self.proc.poll()})")
            await asyncio.sleep(0.2)
        async with session.post(self.base + "/exchanges/bn", params={"exchange_name": "binance"}) as r:
            assert r.status == 200, (r.status, await r.text())

    async def throttle(self, session: aiohttp.ClientSession, on: bool) -> None:
        async with session.post(self.base + "/exchanges/bn/enableRateLimit", json={"flag": on}) as r:
            assert r.status == 200, (r.status, await r.text())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # uvicorn's shutdown stops the CCXT subprocess
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def check_same_bars(session: aiohttp.ClientSession, ours: str, gateway: Gateway) -> tuple[int, int, str]:
    """Both sides answer the same 500 bars; returns both body sizes and our X-Data-Source."""
    async with session.get(ours + OURS) as r:  # the first one fetches, stores and prepares
        assert r.status == 200, (r.status, await r.text())
    async with session.get(ours + OURS, headers={"Accept-Encoding": "identity"}) as r:
        body, source = await r.read(), r.headers.get("X-Data-Source", "?")
        assert r.status == 200, r.status
    async with session.post(gateway.base + GATEWAY_CALL, data=GATEWAY_BODY, headers=JSON) as r:
        other = await r.read()
        assert r.status == 200, (r.status, other[:300])
    bars, rows = json.loads(body)["bars"], json.loads(other)
    assert len(bars) == 500 and [list(map(float, b)) for b in bars] == [list(map(float, b)) for b in rows], \
        "the two sides answer different bars"
    return len(body), len(other), source


async def main(args: argparse.Namespace) -> None:
    try:
        script = ensure_gateway(args.venv)
    except GatewayUnavailable as exc:
        print(f"bench.gateway skipped: ccxt-gateway 1.9.0 could not be installed into {args.venv}:\n{exc}")
        return
    await drop_bench_data(DATABASE_URL, SCHEMA, REDIS_URL, PREFIX)
    emulator_port = free_port()
    emulator = start_emulator(emulator_port, None)
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    gateway = Gateway(script, emulator_url)
    phases: dict[str, list[tuple[LoadResult, float]]] = {}
    try:
        with hypercorn_server("bench.gateway:service_app()", free_port(), {EMULATOR_ENV: emulator_url}) as ours:
            async with aiohttp.ClientSession() as session:
                await gateway.start(session)
                sizes = await check_same_bars(session, ours.base, gateway)
                await drive(ours.base + OURS, 2, args.connections)  # warm-up
                await drive(ours.base + SIM, 1, args.connections)  # sim: fill and prepare
                for _ in range(args.rounds):
                    for throttle in (True, False):
                        await gateway.throttle(session, throttle)
                        name = "ccxt-gateway" + (" (as shipped: CCXT throttle on)" if throttle
                                                 else ", CCXT throttle off")
                        await run(phases, name, gateway.base + GATEWAY_CALL, gateway.proc.pid, args,
                                  GATEWAY_BODY, emulator.pid)
                    await run(phases, "ours: crypto/binance, cached", ours.base + OURS, ours.pid, args)
                    await run(phases, "ours: sim, cached", ours.base + SIM, ours.pid, args)
    finally:
        gateway.stop()
        emulator.terminate()
        emulator.wait(timeout=10)
        await drop_bench_data(DATABASE_URL, SCHEMA, REDIS_URL, PREFIX)
    report(phases, sizes, args)


async def run(phases: dict[str, list[tuple[LoadResult, float]]], name: str, url: str, pid: int,
              args: argparse.Namespace, body: bytes | None = None, upstream_pid: int | None = None) -> None:
    """One phase: the load, then the server's CPU per answer (in ``cpu_us``) and the upstream's."""
    before = cpu_seconds(pid), cpu_seconds(upstream_pid) if upstream_pid else 0.0
    result = await drive(url, args.seconds, args.connections, JSON if body else None, body)
    answers = max(result.requests, 1)
    result.cpu_us = (cpu_seconds(pid) - before[0]) / answers * 1e6
    upstream = (cpu_seconds(upstream_pid) - before[1]) / answers * 1e6 if upstream_pid else 0.0
    phases.setdefault(name, []).append((result, upstream))


def report(phases: dict[str, list[tuple[LoadResult, float]]], sizes: tuple[int, int, str],
           args: argparse.Namespace) -> None:
    ours_len, gateway_len, source = sizes
    tool = load_tool()
    print(f"500 1m bars of BTC/USDT from the exchange emulator: ours {ours_len} bytes (X-Data-Source: "
          f"{source}), ccxt-gateway {gateway_len} bytes; {tool} -c{args.connections}, {args.rounds} rounds "
          f"x {args.seconds:g} s per phase (best round)")
    print(f"{'phase':<46}{'req/s':>8}{'cpu us':>9}{'+emulator':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>8}")
    best: dict[str, LoadResult] = {}
    for name, runs in phases.items():
        fig = best[name] = max((r for r, _ in runs), key=lambda r: r.rps)
        fig.cpu_us = min(r.cpu_us for r, _ in runs)
        upstream = min(u for _, u in runs)
        print(f"{name:<46}{fig.rps:>8.1f}{fig.cpu_us:>9.0f}{upstream:>10.0f}{fig.p50_ms:>9.1f}"
              f"{fig.p99_ms:>9.1f}{fig.non_2xx:>8}")
    ours, sim = best["ours: crypto/binance, cached"], best["ours: sim, cached"]
    shipped, open_ = best["ccxt-gateway (as shipped: CCXT throttle on)"], best["ccxt-gateway, CCXT throttle off"]
    ratio = ours.rps / shipped.rps
    print(f"ours (binance) / ccxt-gateway as shipped: {ratio:.1f}x by req/s (goal >= 45x: "
          f"{'met' if ratio >= 45 else 'NOT met'}); sim / gateway {sim.rps / shipped.rps:.1f}x")
    print(f"ours (binance) / ccxt-gateway with its throttle off: {ours.rps / open_.rps:.1f}x by req/s, "
          f"{open_.cpu_us / ours.cpu_us:.1f}x by server CPU per answer (emulator's not counted)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"virtualenv for ccxt-gateway (made on first use; default {DEFAULT_VENV})")
    asyncio.run(main(parser.parse_args()))
