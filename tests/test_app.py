"""app.py: start-up leaves the cyclic garbage collector nothing long-lived to walk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import asyncio, gc, json, sys
from app import create_app

async def main():
    app = create_app(json.loads(sys.argv[1]))
    async with app.test_app():
        gc.collect()
        print(gc.get_freeze_count(), len(gc.get_objects()))

asyncio.run(main())
"""


def test_startup_objects_are_frozen(app_config: dict[str, Any]) -> None:
    """In a process of its own (pytest's objects would count too): after start-up CCXT's classes,
    the plugins and the app are frozen, so a full collection walks only what requests made."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(app_config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    frozen, tracked = int(out[0]), int(out[1])
    assert frozen > 100_000  # CCXT alone leaves about 200,000
    assert tracked < frozen / 20
