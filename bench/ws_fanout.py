"""Fan-out bench: 1, 100 and 1000 WebSocket clients on one channel of one instance.

Usage: ``.venv/bin/python bench/ws_fanout.py [--clients 1,100,1000] [--modes plain,deflate]
[--window 5] [--interval 0.5] [--server hypercorn] [--app service]``

For each mode and client count a fresh server process (the app through ``serve.py``'s API under
``--server``, Hypercorn by default, sim market, real PostgreSQL and Redis; or with ``--app bare`` a
bare Quart app sending one frame to every client each interval) is started; this process opens the
clients, all subscribed to ``sim:sim:SIM/USD:1m``, and prints:
- the mode: ``plain`` clients offer no extension, ``deflate`` clients offer permessage-deflate
  (``permessage-deflate; client_max_window_bits``, as browsers do), and the share that got it;
- upstream polls per poll interval (from the server's ``ws_polls_total``; 1.0 is the goal);
- p50/p99 delivery latency (the skew of fan-out): poll result to frame written to each client,
  every sample recorded by the server during the window;
- the server's CPU time per broadcast frame (all its work during the window over the frames each
  client got): on a shared machine wall-clock skew moves with the neighbours' load, this does not
  (on an idle core the fan-out of one frame takes about this long, so the last client waits it);
- the server's resident memory per idle subscribed connection (VmRSS growth from 1 warm-up client
  to N, over N - 1), and what each connection holds: asyncio tasks per connection (same growth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHANNEL_SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD",
               "timeframe": "1m", "history": 10}


#: The niceness of the clients (this process) while a case runs. Dashboards are browsers on other
#: machines; here 1000 of them share the server's two cores (aiohttp reading, and inflating with
#: deflate), and at equal priority the server is descheduled in the middle of a broadcast for the
#: clients' work, which is not the server's skew.
CLIENTS_NICE = 19


def clients_priority(nice: int) -> None:
    """Set this process's niceness (going back to 0 needs root: otherwise it stays as it is)."""
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


#: The bare app's broadcast frame: about the size of a candle update (150 bytes).
BARE_FRAME = json.dumps({"type": "bar", "channel": "sim:sim:SIM/USD:1m", "bar": {
    "t": 1_700_000_000_000, "o": 100.0, "h": 101.25, "l": 99.5, "c": 100.75, "v": 1234.5678},
    "closed": False, "seq": 123456, "pad": "x" * 12})


def bare_app(interval: float, samples: list[tuple[float, float]]) -> Any:
    """The ceiling: a Quart app whose WebSocket route answers a subscribe with a snapshot, then
    sends every client the same frame every ``interval`` (one ``websocket.send`` per client, from
    its own handler); a sample is the time from the tick to one client's send returning."""
    from quart import Quart, websocket

    app = Quart("bare_ws")
    app.config.update({"HOST": "127.0.0.1", "SHUTDOWN_TIMEOUT": 2.0, "WS_HEARTBEAT_SECONDS": 20.0,
                       "WS_MAX_MESSAGE_BYTES": 4096,
                       "WS_PER_MESSAGE_DEFLATE": os.environ.get("WS_PER_MESSAGE_DEFLATE") == "true"})
    ticks: list[asyncio.Future[float]] = []

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.websocket("/api/v1/ws")
    async def ws() -> None:
        await websocket.receive()
        await websocket.send(json.dumps({"type": "snapshot", "bars": []}))
        while True:
            t0 = await asyncio.shield(ticks[-1])
            await websocket.send(BARE_FRAME)
            samples.append((time.time(), time.perf_counter() - t0))

    @app.before_serving
    async def start() -> None:
        loop = asyncio.get_running_loop()
        ticks.append(loop.create_future())

        async def ticker() -> None:
            while True:
                await asyncio.sleep(interval)
                ticks.append(loop.create_future())
                ticks[-2].set_result(time.perf_counter())
                del ticks[:-1]

        app.extensions["ticker"] = asyncio.create_task(ticker())

    return app


def serve(port: int, samples_path: str, interval: float, server: str, kind: str) -> None:
    """Child mode: serve the app (``kind``: ``service`` or ``bare``) under ``server`` through
    ``serve.py``'s API (its settings, event loop and shutdown); record every fan-out latency
    sample; dump them when the server has stopped (SIGTERM)."""
    import serve as entry
    from app import create_app
    from core.metrics import WS_FANOUT_LATENCY

    samples: list[tuple[float, float]] = []

    def count_tasks() -> None:  # SIGUSR1: what the connections hold
        Path(samples_path + ".tasks").write_text(str(len(asyncio.all_tasks())))

    async def main() -> None:
        if kind == "bare":
            app = bare_app(interval, samples)
        else:
            observe = WS_FANOUT_LATENCY.observe

            def record(value: float, exemplar: Any = None) -> None:
                samples.append((time.time(), value))
                observe(value)

            WS_FANOUT_LATENCY.observe = record  # type: ignore[method-assign,assignment]
            app = create_app({
                "APP_ENV": "production", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text",
                "DATABASE_SCHEMA": os.environ["BENCH_SCHEMA"], "REDIS_PREFIX": os.environ["BENCH_PREFIX"],
                "ENABLED_MARKETS": "sim", "RATE_LIMIT_ENABLED": False, "WS_SEND_QUEUE": 256,
                "WS_MAX_CONNECTIONS_PER_CLIENT": 100_000,  # every client comes from this machine
                "POLL_INTERVALS": {}, "POLL_INTERVAL_DEFAULT": interval,
                "POLL_PROVIDER_MIN_INTERVALS": {"sim": interval}, "WS_SNAPSHOT_CONCURRENCY": 16,
                "HOST": "127.0.0.1", "PORT": port,
            })

        @app.before_serving
        async def usr1() -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, count_tasks)

        entry.prepare(app)
        if kind == "bare":
            await entry.serve(app, server, "127.0.0.1", port, app.config, graceful=2.0)
        else:
            await entry.serve_app(app, server)

    entry.run(main(), "uvloop")
    Path(samples_path).write_text(json.dumps(samples))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def polls(http: Any, base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(base + "/metrics") as r:
        if r.status == 404:  # the bare app: no poller
            return float("nan")
        text = await r.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "ws_polls_total" and s.labels.get("provider") == "sim")


def take_count(marker: Path) -> int | None:
    if not marker.exists() or not (text := marker.read_text()):
        return None
    marker.unlink()
    return int(text)


async def tasks(pid: int, samples_path: str) -> int:
    """The server's asyncio task count (it writes it on SIGUSR1)."""
    marker = Path(samples_path + ".tasks")
    os.kill(pid, signal.SIGUSR1)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (count := await asyncio.to_thread(take_count, marker)) is not None:
            return count
    raise RuntimeError("the server did not count its tasks")


async def run_case(n: int, mode: str, window: float, interval: float, server_name: str = "hypercorn",
                   kind: str = "service", env: dict[str, str] | None = None) -> dict[str, Any]:
    import aiohttp

    from tests.support.ws import free_port, wait_healthy

    port = free_port()
    fd, samples_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port), samples_path, "--interval", str(interval),
        "--server", server_name, "--app", kind, cwd=ROOT, env={**os.environ, **(env or {})})
    clients_priority(CLIENTS_NICE)
    base, frames, deflated = f"http://127.0.0.1:{port}", [0], [0]
    compress = 15 if mode == "deflate" else 0
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_healthy(http, base)

            async def client() -> aiohttp.ClientWebSocketResponse:
                ws = await http.ws_connect(base + "/api/v1/ws", compress=compress)
                deflated[0] += bool(ws.compress)
                await ws.send_str(json.dumps(CHANNEL_SUB))
                while (await ws.receive_json())["type"] != "snapshot":
                    pass
                return ws

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
                async for _ in ws:
                    frames[0] += 1

            warm = [await client()]
            readers = [asyncio.create_task(drain(warm[0]))]
            await asyncio.sleep(1.0)
            rss_base, tasks_base = rss_kib(server.pid), await tasks(server.pid, samples_path)
            others: list[aiohttp.ClientWebSocketResponse] = []
            for i in range(0, n - 1, 100):
                others += await asyncio.gather(*[client() for _ in range(min(100, n - 1 - i))])
            readers += [asyncio.create_task(drain(ws)) for ws in others]
            await asyncio.sleep(1.0)
            rss_n, tasks_n = rss_kib(server.pid), await tasks(server.pid, samples_path)
            polls0, frames[0], t0 = await polls(http, base), 0, time.time()
            cpu0 = cpu_seconds(server.pid)
            await asyncio.sleep(window)
            cpu1 = cpu_seconds(server.pid)
            polls1, t1, got = await polls(http, base), time.time(), frames[0]
            for ws in [*warm, *others]:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    finally:
        clients_priority(0)  # before the next case's server starts: it inherits this
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
    recorded = json.loads(await asyncio.to_thread(Path(samples_path).read_text))
    samples = [v for at, v in recorded if t0 <= at <= t1]
    os.unlink(samples_path)
    return {
        "clients": n,
        "mode": mode,
        "deflated": deflated[0] / n,
        "polls_per_interval": (polls1 - polls0) / ((t1 - t0) / interval),
        "frames_received": got,
        "cpu_ms_per_frame": (cpu1 - cpu0) * 1000 / max(1.0, got / n),
        "p50_ms": quantile(samples, 0.50) * 1000,
        "p99_ms": quantile(samples, 0.99) * 1000,
        "samples": len(samples),
        "rss_per_conn_kib": (rss_n - rss_base) / max(1, n - 1) if n > 1 else float("nan"),
        "rss_mib": rss_n / 1024,
        "tasks_per_conn": (tasks_n - tasks_base) / max(1, n - 1) if n > 1 else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drop_schema(schema: str, prefix: str) -> None:
    from bench.common import drop_bench_data
    from config import load_config

    cfg = load_config()
    await drop_bench_data(cfg.DATABASE_URL, schema, cfg.REDIS_URL, prefix)


async def main(counts: list[int], modes: list[str], window: float, interval: float, server: str,
               kind: str) -> None:
    print(f"{kind} under {server}: one channel, one instance; poll interval {interval}s, window {window}s")
    print(f"{'mode':>7} {'deflated':>8} {'clients':>7} {'polls/interval':>14} {'frames':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'samples':>8} {'CPU ms/frame':>12} {'KiB/conn':>9} "
          f"{'tasks/conn':>10} "
          f"{'RSS MiB':>8}")
    for mode in modes:
        for n in counts:
            r = await run_case(n, mode, window, interval, server, kind)
            print(f"{mode:>7} {r['deflated']:>8.0%} {r['clients']:>7} {r['polls_per_interval']:>14.2f} "
                  f"{r['frames_received']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['samples']:>8} {r['cpu_ms_per_frame']:>12.2f} {r['rss_per_conn_kib']:>9.1f} "
                  f"{r['tasks_per_conn']:>10.1f} "
                  f"{r['rss_mib']:>8.1f}", flush=True)
    await drop_schema(os.environ["BENCH_SCHEMA"], os.environ["BENCH_PREFIX"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "SAMPLES"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--modes", default="plain,deflate")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--server", default="hypercorn", help="uvicorn, hypercorn or granian")
    parser.add_argument("--app", default="service", help="service or bare (a bare Quart fan-out)")
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.interval, args.server, args.app)
    else:
        tag = uuid.uuid4().hex[:8]
        os.environ.setdefault("BENCH_SCHEMA", f"bench_ws_{tag}")
        os.environ.setdefault("BENCH_PREFIX", f"bench:ws:{tag}")
        asyncio.run(main([int(c) for c in args.clients.split(",")], args.modes.split(","),
                         args.window, args.interval, args.server, args.app))
