"""Run the app in a subprocess on an ephemeral port: ``serving`` runs the serving entry point
(``python serve.py``, under any server it knows); ``hypercorn_server`` runs Hypercorn's own CLI
(several workers, for multiprocess, fuzz and browser tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp

from tests.conftest import DATABASE_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: ``TEST_SERVER=uvicorn|hypercorn|granian``: ``serving`` uses that server, and
#: ``hypercorn_server`` with one worker serves through ``python serve.py --server TEST_SERVER``
#: instead of Hypercorn's CLI (the suite under another server).
TEST_SERVER = os.environ.get("TEST_SERVER", "")


@asynccontextmanager
async def launched_async(command: list[str], env: dict[str, str], port: int, *, start_timeout: float,
                         stop_timeout: float | None, stderr: int = asyncio.subprocess.DEVNULL
                         ) -> AsyncIterator[asyncio.subprocess.Process]:
    """``launched`` for a test whose event loop must keep running while the server starts (it
    serves an emulator, or reads the server's stderr): the same readiness wait on /health,
    then, if the process still runs on exit, SIGTERM and a kill ``stop_timeout`` seconds later
    (``None``: killed at once, its stderr drained)."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + start_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{command[1:]} did not come up") from None
                    await asyncio.sleep(0.2)
        yield proc
    finally:
        if proc.returncode is None:
            if stop_timeout is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(stop_timeout):
                        await proc.wait()
                except TimeoutError:
                    pass
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()


@asynccontextmanager
async def serving(env: dict[str, str], server: str | None = None, start_timeout: float = 60.0
                  ) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python serve.py --server SERVER`` (the serving entry point: ``make run``, the image and
    the systemd unit) with ``env`` on top of the test defaults, on a free port, its stderr piped.
    Yields the process and its ``host:port`` once /health answers; killed if still running on
    exit (a test that stops it reads its stderr with ``communicate()``). ``server`` None:
    ``TEST_SERVER``, else the entry point's default (the production server)."""
    server = server or TEST_SERVER or None
    port = free_port()
    full_env = {**os.environ, "APP_ENV": "testing", "DATABASE_URL": DATABASE_URL,
                "REDIS_URL": REDIS_URL, "PORT": str(port), "ENABLED_MARKETS": "sim",
                "SHUTDOWN_TIMEOUT": "3", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING",
                **env}
    full_env.pop("SERVER", None)
    args = ["--server", server] if server else []
    async with launched_async([sys.executable, "serve.py", *args], full_env, port,
                              start_timeout=start_timeout, stop_timeout=None,
                              stderr=asyncio.subprocess.PIPE) as proc:
        yield proc, f"127.0.0.1:{port}"


class Launched(subprocess.Popen[bytes]):
    """A server process started by ``launched``, with the port it serves on."""

    port: int


@contextmanager
def launched(command: list[str], env: dict[str, str], port: int, *, start_timeout: float,
             stop_timeout: float, stdout: int | None = None, stderr: int | None = None,
             stop_signal: int = signal.SIGTERM) -> Iterator[Launched]:
    """The one server launcher (tests and ``bench/``): run ``command`` from the repository with
    exactly ``env``, wait until ``http://127.0.0.1:PORT/health`` answers 200 (``RuntimeError``
    if the process exits or ``start_timeout`` passes first), yield the process; on exit stop it
    with ``stop_signal``, and kill it if it is still running ``stop_timeout`` seconds later."""
    proc = Launched(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    proc.port = port
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:  # URLError and refused connections
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[1:]} did not come up") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def hypercorn_server(
    env: dict[str, str], workers: int = 1, start_timeout: float = 30.0, port: int | None = None
) -> Iterator[str]:
    """Yield the base URL of ``hypercorn 'app:create_app()'`` (or, with ``TEST_SERVER`` set and
    one worker, of ``python serve.py --server TEST_SERVER``) with ``env`` on top of the test
    defaults (on ``port``, or a free one); the server is stopped with SIGTERM (then killed) on exit."""
    port = port or free_port()
    full_env = {**os.environ, "APP_ENV": "testing", "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL,
                "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", "HOST": "127.0.0.1", "PORT": str(port),
                **env}
    if TEST_SERVER and workers == 1:
        command = [sys.executable, "serve.py", "--server", TEST_SERVER]
    else:
        command = [sys.executable, "-m", "hypercorn", "--workers", str(workers), "--bind",
                   f"127.0.0.1:{port}", "app:create_app()"]
    with launched(command, full_env, port, start_timeout=start_timeout, stop_timeout=15.0,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        yield f"http://127.0.0.1:{proc.port}"
