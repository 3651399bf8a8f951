"""Run the app under Hypercorn in a subprocess on an ephemeral port (for multiprocess and fuzz tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import DATABASE_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def hypercorn_server(
    env: dict[str, str], workers: int = 1, start_timeout: float = 30.0, port: int | None = None
) -> Iterator[str]:
    """Yield the base URL of ``hypercorn 'app:create_app()'`` with ``env`` on top of the test defaults
    (on ``port``, or a free one); the server is stopped with SIGTERM (then killed) on exit."""
    port = port or free_port()
    full_env = {**os.environ, "APP_ENV": "testing", "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL,
                "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
         "app:create_app()"],
        cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("hypercorn did not come up") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
