"""app_extensions/warmup.py: with Redis down the warm-up records are not written, and that is
said once at shutdown, not at every recording interval and not twice when closing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.warmup import get_warmup
from core.types import Series
from services.bars import BarQuery


@pytest.fixture
def redis_down_app(app_config: dict[str, Any]) -> Quart:
    """Made before the test's log capture starts (create_app configures logging)."""
    return create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
                       "DEPENDENCY_RETRY_AFTER": 0.05, "WARMUP_RECORD_SECONDS": 0.1})


async def test_unwritten_records_are_logged_once(redis_down_app: Quart, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="services.warmup"):
        async with redis_down_app.test_app():
            warmer = get_warmup(redis_down_app).warmer
            warmer.note(BarQuery(Series("sim", "sim", "SIM/USD"), "1h", 0, 3_600_000, 1))
            await asyncio.sleep(0.5)  # several recording intervals, each failing
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "warm-up records" in r.getMessage()]
    assert warned == ["last warm-up records not written: Redis unavailable"]
    assert any("warm-up records not written" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG)  # each interval's failure, for who looks
