"""app.py: start-up leaves the cyclic garbage collector nothing long-lived to walk, and a young
generation large enough for a broadcast's temporaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from app import GC_YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import asyncio, gc, json, sys
from app import create_app

async def main():
    app = create_app(json.loads(sys.argv[1]))
    async with app.test_app():
        gc.collect()
        print(gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()[0])

asyncio.run(main())
"""


def test_startup_objects_are_frozen(app_config: dict[str, Any]) -> None:
    """In a process of its own (pytest's objects would count too): after start-up CCXT's classes,
    the plugins and the app are frozen, so a full collection walks only what requests made."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(app_config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    frozen, tracked, young = int(out[0]), int(out[1]), int(out[2])
    assert frozen > 100_000  # CCXT alone leaves about 200,000
    assert tracked < frozen / 20
    # A broadcast's or a backfill page's temporaries die before a young collection comes.
    assert young == GC_YOUNG_THRESHOLD > 700
