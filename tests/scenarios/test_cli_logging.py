"""Logs of the development CLI and of ``python serve.py`` (``make run``): a command's output is
not buried under DEBUG lines, and the server's "running on" line is logged once, under Uvicorn
and Hypercorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.live_server import ROOT, free_port


def _env(app_config: dict[str, Any], **over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    return {**env, "APP_ENV": "development", "DATABASE_URL": app_config["DATABASE_URL"],
            "DATABASE_SCHEMA": app_config["DATABASE_SCHEMA"], "REDIS_URL": app_config["REDIS_URL"],
            "REDIS_PREFIX": app_config["REDIS_PREFIX"], "PYTHONPATH": str(ROOT), **over}


def test_development_cli_help_prints_no_debug_lines(app_config: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-m", "quart", "--app", "app:create_app", "--help"],
                         cwd=ROOT, env=_env(app_config), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "api-key" in out.stdout
    assert " DEBUG " not in out.stdout + out.stderr, out.stderr
    # LOG_LEVEL set on purpose is honoured by the CLI too.
    loud = subprocess.run([sys.executable, "-m", "quart", "--app", "app:create_app", "--help"],
                          cwd=ROOT, env=_env(app_config, LOG_LEVEL="DEBUG"), capture_output=True,
                          text=True, timeout=60)
    assert " DEBUG " in loud.stderr


#: The server's own "listening" line, through our logging (once, in our format).
RUNNING_ON = {"uvicorn": "INFO uvicorn.error [-] Uvicorn running on http://127.0.0.1:{port}",
              "hypercorn": "INFO hypercorn.error [-] Running on http://127.0.0.1:{port}"}


@pytest.mark.parametrize("server", RUNNING_ON)
def test_running_on_is_logged_once_and_the_server_logs_at_its_level(
        app_config: dict[str, Any], server: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "serve.py", "--server", server], cwd=ROOT, text=True,
                            env=_env(app_config, PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "unning on" in line:
                break
        time.sleep(0.5)  # a second "running on" line would follow at once
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    log = "".join(lines) + rest
    assert log.count("unning on") == 1, log
    assert RUNNING_ON[server].format(port=port) in log, log
    assert " DEBUG " in log  # development serves at DEBUG: only the CLI is quieter
