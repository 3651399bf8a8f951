"""Shared bench helpers: run a server in a subprocess, drive it with wrk (or aiohttp), print figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from quart import Quart

from tests.support.helpers import delete_prefix, drop_schema
from tests.support.live_server import free_port as free_port  # re-exported for bench modules
from tests.support.live_server import launched

#: The repository (the servers and the load generator run from it).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Server:
    base: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its worker processes."""
        return cpu_seconds(self.pid)


def cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    family, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    return sum(times.get(pid, 0.0) for pid in family)


@contextmanager
def hypercorn(app_spec: str, port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Serve ``app_spec`` under Hypercorn (one worker) in a subprocess; yields its base URL."""
    with hypercorn_server(app_spec, port, env) as server:
        yield server.base


@contextmanager
def hypercorn_server(app_spec: str, port: int, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Serve ``app_spec`` (an app with /health) under Hypercorn (one worker) in a subprocess."""
    command = [sys.executable, "-m", "hypercorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", app_spec]
    with launched(command, {**os.environ, **(env or {})}, port, start_timeout=30.0, stop_timeout=10.0,
                  stop_signal=signal.SIGINT) as proc:
        yield Server(f"http://127.0.0.1:{port}", proc.pid)


@contextmanager
def app_server(app_spec: str, port: int, server: str = "hypercorn", env: dict[str, str] | None = None,
               start_timeout: float = 60.0) -> Iterator[Server]:
    """Serve the factory ``app_spec`` (``module:factory``) through the serving entry point,
    ``python serve.py --server SERVER --app SPEC`` (the same settings, event loop and shutdown as
    production), in a subprocess on ``port``; stopped with SIGTERM once the caller is done."""
    command = [sys.executable, os.path.join(ROOT, "serve.py"), "--server", server, "--app", app_spec]
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING", **(env or {})}
    with launched(command, env, port, start_timeout=start_timeout, stop_timeout=30.0) as proc:
        yield Server(f"http://127.0.0.1:{port}", proc.pid)


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # non-2xx/3xx answers (429s in the limiter runs)
    bytes_per_s: float
    #: Server CPU time per answer (set by the caller that knows the server's pid).
    cpu_us: float = float("nan")


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def wrk(url: str, seconds: float, connections: int, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> LoadResult:
    """Run ``wrk -t1`` (a C load generator: it takes little of the CPU the server needs); with
    ``body``, every request is a POST of it (through a Lua script)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if body is not None:
            script.write(f'wrk.method = "POST"\nwrk.body = [==[{body.decode()}]==]\n')
            script.flush()
            cmd += ["-s", script.name]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    return LoadResult(
        rps=rps, requests=total, non_2xx=int(non.group(1)) if non else 0,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        bytes_per_s=float(tr.group(1)) * _SIZE.get(tr.group(2), 1) if tr else 0.0,
    )


async def load(url: str, requests: int, concurrency: int,
               headers: dict[str, str] | None = None, body: bytes | None = None) -> LoadResult:
    """Fallback without wrk: ``requests`` GETs from ``concurrency`` aiohttp workers (the client
    then competes with the server for the CPU: ratios hold, absolute figures are low)."""
    latencies: list[float] = []
    non_2xx = 0
    received = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal non_2xx, received
        while not queue.empty():
            queue.get_nowait()
            t = time.perf_counter()
            async with session.request("POST" if body is not None else "GET", url, data=body,
                                       headers=headers, auto_decompress=False) as r:
                received += len(await r.read())
                non_2xx += r.status >= 400
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        rps=requests / wall, requests=requests, non_2xx=non_2xx, bytes_per_s=received / wall,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000,
    )


async def loadgen(url: str, seconds: float, connections: int, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> LoadResult:
    """``bench/loadgen.py`` in a process of its own: the fallback without wrk (raw keep-alive
    HTTP/1.1 on uvloop, far lighter than aiohttp's client)."""
    cmd = [sys.executable, "-m", "bench.loadgen", url, str(seconds), str(connections)]
    for name, value in (headers or {}).items():
        cmd += ["--header", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("wb", suffix=".body") as file:
        if body is not None:
            file.write(body)
            file.flush()
            cmd += ["--body", file.name]
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
    fig = json.loads(out)
    return LoadResult(rps=fig["rps"], p50_ms=fig["p50_ms"], p99_ms=fig["p99_ms"],
                      requests=int(fig["requests"]), non_2xx=int(fig["non_2xx"]),
                      bytes_per_s=fig["bytes_per_s"])


def load_tool() -> str:
    return "wrk -t1" if has_wrk() else "bench/loadgen.py (no wrk)"


async def drive(url: str, seconds: float, connections: int,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> LoadResult:
    """wrk when installed (``apt-get install -y wrk``), else ``bench/loadgen.py``; GETs, or POSTs
    of ``body`` when given."""
    if has_wrk():
        return await asyncio.to_thread(wrk, url, seconds, connections, headers, body)
    return await loadgen(url, seconds, connections, headers, body)


async def drop_bench_data(database_url: str, schema: str, redis_url: str, prefix: str) -> None:
    """Drop a bench's PostgreSQL schema and its Redis keys."""
    await drop_schema(database_url, schema)
    await delete_prefix(redis_url, prefix)


@asynccontextmanager
async def bench_app(name: str, config: dict[str, Any]) -> AsyncIterator[Quart]:
    """``create_app(config)`` in a PostgreSQL schema and Redis prefix of its own (``bench_<name>_*``),
    served by ``app.test_app()``; the schema and the keys are dropped afterwards."""
    from app import create_app

    schema, prefix = f"bench_{name}_{uuid.uuid4().hex[:8]}", f"bench:{uuid.uuid4().hex[:8]}"
    app = create_app({**config, "DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix})
    try:
        async with app.test_app():
            yield app
    finally:
        await drop_bench_data(str(app.config["DATABASE_URL"]), schema, str(app.config["REDIS_URL"]), prefix)
