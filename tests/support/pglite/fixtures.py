"""A real TimescaleDB for the test suite: PGlite (PostgreSQL 17 in WebAssembly, TimescaleDB 2.23)
behind ``tests/support/pglite/server.mjs``, started once per test session.

Install it with ``npm ci --prefix tests/support/pglite``. Without ``tests/support/pglite/node_modules`` the
TimescaleDB tests are skipped, unless ``REQUIRE_TIMESCALE`` is set (CI sets it): then they fail.
``TIMESCALE_TEST_URL`` points the tests at another TimescaleDB instead (a real server, say).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

PGLITE_DIR = Path(__file__).resolve().parent
SERVER = PGLITE_DIR / "server.mjs"
PACKAGE = PGLITE_DIR / "node_modules" / "@unni-craftsman" / "pglite"
READY_PREFIX = "PGLITE READY "
START_TIMEOUT = 90.0


def unavailable_reason() -> str | None:
    """Why the PGlite server cannot start here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not PACKAGE.is_dir():
        return "PGlite is not installed: run `npm ci --prefix tests/support/pglite`"
    return None


def _parse_ready(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line[len(READY_PREFIX) :].split() if "=" in part)


@contextlib.contextmanager
def run_pglite_server(port: int = 0, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Start ``node server.mjs --port PORT`` (0: any free port), wait for its ready line and yield
    its ``postgresql://`` URL; the server is stopped on exit. Its stderr (start-up errors, and a
    warning when a client waits long for another's transaction) is this process's stderr, which
    pytest captures and shows with the test that was running."""
    proc = subprocess.Popen(
        ["node", str(SERVER), "--port", str(port), "--host", "127.0.0.1"],
        cwd=PGLITE_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        info = _wait_ready(proc, timeout)
        yield f"postgresql://postgres@{info['host']}:{info['port']}/postgres"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        return _parse_ready(line)
            elif proc.poll() is not None:
                break
    raise RuntimeError(
        f"PGlite server did not start within {timeout:.0f} s (exit code {proc.poll()}; its stderr"
        f" is above): {buf.decode(errors='replace')}")


_shared: dict[str, str] = {}


@pytest.fixture(scope="session")
def timescale_url(request: pytest.FixtureRequest) -> str:
    """URL of a TimescaleDB for this session: ``TIMESCALE_TEST_URL``, or a PGlite server started
    once per test process (every module that imports this fixture shares it) and stopped when
    pytest exits."""
    if url := os.environ.get("TIMESCALE_TEST_URL"):
        return url
    if "url" not in _shared:
        reason = unavailable_reason()
        if reason is not None:
            if os.environ.get("REQUIRE_TIMESCALE"):
                pytest.fail(f"REQUIRE_TIMESCALE is set but {reason}", pytrace=False)
            pytest.skip(f"TimescaleDB tests skipped: {reason}")
        stack = contextlib.ExitStack()
        _shared["url"] = stack.enter_context(run_pglite_server())
        request.config.add_cleanup(stack.close)
    return _shared["url"]


@pytest.fixture
async def ts_app(app_config: dict[str, Any], timescale_url: str) -> AsyncIterator[Quart]:
    """The whole app in TimescaleDB mode over ``timescale_url``, served by ``app.test_app()``; its
    schema is dropped afterwards (tests/conftest.py offers both fixtures to every test)."""
    from app import create_app
    from services.bars import aggregates
    from tests.support.helpers import drop_schema

    config = {**aggregates.TIMESCALE_SETTINGS, **app_config,
              "DATABASE_URL": timescale_url, "STORAGE_MODE": "timescale", "DB_POOL_MAX": 4}
    application = create_app(config)
    try:
        async with application.test_app():
            yield application
    finally:
        await drop_schema(timescale_url, config["DATABASE_SCHEMA"])
