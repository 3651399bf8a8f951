"""Cache warming's logs (app_extensions/warmup.py, services/bars/warmup.py): with Redis down the records
not written are said once at shutdown, not at every interval nor twice when closing; a provider
down during warm-up is one warning, not one per planned query of its series."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.warmup import get_warmup
from config import BaseConfig
from core.errors import NetworkPluginError
from core.types import Series
from services.bars.query import BarQuery
from services.bars.warmup import Warmer, warmup_settings
from tests.support.ws import wait_for


@pytest.fixture
def redis_down_app(app_config: dict[str, Any]) -> Quart:
    """Made before the test's log capture starts (create_app configures logging)."""
    return create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
                       "DEPENDENCY_RETRY_AFTER": 0.05, "WARMUP_RECORD_SECONDS": 0.1})


async def test_unwritten_records_are_logged_once(redis_down_app: Quart, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="services.bars.warmup"):
        async with redis_down_app.test_app():
            warmer = get_warmup(redis_down_app).warmer
            warmer.note(BarQuery(Series("sim", "sim", "SIM/USD"), "1h", 0, 3_600_000, 1))
            # several recording intervals, each failing (each logged at DEBUG)
            await wait_for(lambda: sum("warm-up records not written" in r.getMessage()
                                       for r in caplog.records if r.levelno == logging.DEBUG) >= 3)
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "warm-up records" in r.getMessage()]
    assert warned == ["last warm-up records not written: Redis unavailable"]
    assert any("warm-up records not written" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG)  # each interval's failure, for who looks


class DownOrchestrator:
    """The orchestrator while binance is unreachable: every binance query fails, sim answers."""

    async def get_bars(self, q: BarQuery) -> Any:
        if q.series.provider == "binance":
            raise NetworkPluginError("binance: exchange unavailable")
        return None


class Planned(Warmer):
    """A warmer whose plan is given: a live channel's snapshot and a recorded range of one series,
    as ``plan`` reads them from Redis."""

    async def plan(self) -> list[BarQuery]:
        btc = Series("crypto", "binance", "BTC/USDT")
        return [BarQuery(btc, "1m", None, None, 100), BarQuery(btc, "1m", 0, 3_600_000, 60),
                BarQuery(Series("crypto", "binance", "ETH/USDT"), "1h", None, None, 100),
                BarQuery(Series("sim", "sim", "SIM/USD"), "1m", None, None, 100)]


async def test_a_provider_down_during_warm_up_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    warmer = Planned(DownOrchestrator(), None, warmup_settings(BaseConfig().as_dict()),  # type: ignore[arg-type]
                     lambda: [])
    with caplog.at_level(logging.DEBUG, logger="services.bars.warmup"):
        report = await warmer.run()
    assert report.failed == 3 and report.queries == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "crypto:binance:BTC/USDT:1m" in warned[0], warned
    assert "3 failed" in next(r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up:"))
