"""app.py builds an app and changes nothing else in the process; the serving entry point
(serve.py) leaves the cyclic garbage collector nothing long-lived to walk after start-up, and a
young generation large enough for a broadcast's temporaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from serve import GC_YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import asyncio, gc, json, signal, sys
from app import create_app
import serve

async def main():
    handlers = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    app = create_app(json.loads(sys.argv[1]))
    async with app.test_app():
        print(gc.get_freeze_count(), gc.get_threshold()[0], asyncio.get_running_loop().get_exception_handler())
    for sig, handler in zip((signal.SIGINT, signal.SIGTERM), handlers):
        print(signal.getsignal(sig) == handler)
    serve.prepare(app)
    async with app.test_app():
        gc.collect()
        print(gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()[0])

asyncio.run(main())
"""


def run(app_config: dict[str, Any]) -> list[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(app_config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")


def test_create_app_changes_nothing_in_the_process(app_config: dict[str, Any]) -> None:
    """Built and started without the entry point, the app leaves the collector, the loop's
    exception handler and the signal handlers as Python has them."""
    lines = run(app_config)
    assert lines[0].split() == ["0", "700", "None"]
    assert lines[1:3] == ["True", "True"]


def test_serving_freezes_startup_objects(app_config: dict[str, Any]) -> None:
    """In a process of its own (pytest's objects would count too): served through the entry
    point's preparation, after start-up CCXT's classes, the plugins and the app are frozen, so a
    full collection walks only what requests made."""
    out = run(app_config)[3].split()
    frozen, tracked, young = int(out[0]), int(out[1]), int(out[2])
    assert frozen > 100_000  # CCXT alone leaves about 200,000
    assert tracked < frozen / 20
    # A broadcast's or a backfill page's temporaries die before a young collection comes.
    assert young == GC_YOUNG_THRESHOLD > 700
