"""DataOrchestrator (services/bars/orchestrator.py): answer builds in flight are owned (shutdown cancels
them and nothing is left running), and paging with ``start`` never gives an empty page while
``next`` is set (a page before the first bar jumps to it). Markets that close:
test_orchestrator_closed_market.py; REQUEST_DEADLINE: test_orchestrator_deadline.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from core.timeframes import DAY_MS, Bar
from core.types import Series
from plugins.sim import HISTORY_START_MS, SimPlugin
from services.bars.orchestrator import BarQuery
from tests.support.backfill import emu_config, running_app
from tests.support.exchange_emulator import ExchangeEmulator, fixtures

emulator = fixtures.emulator

STARTED = asyncio.Event()


class StuckSim(SimPlugin):
    """A provider that never answers (test double)."""

    plugin_key: ClassVar[str] = "stuck-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("stuck",)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        STARTED.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
async def stuck_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**app_config, "ENABLED_MARKETS": "sim,stuck"})
    async with application.test_app():
        yield application


async def test_close_cancels_builds_in_flight(stuck_app: Quart) -> None:
    STARTED.clear()
    orchestrator = get_services(stuck_app).orchestrator
    query = BarQuery(Series("stuck", "sim", "SIM/USD"), "1m", 1_700_006_400_000, None, 10)
    waiters = [asyncio.create_task(orchestrator.get_bars(query)) for _ in range(2)]
    await asyncio.wait_for(STARTED.wait(), 5)
    assert len(orchestrator._inflight) == 1  # two waiters, one build
    await asyncio.wait_for(orchestrator.close(), 5)
    assert orchestrator._inflight == {}
    for waiter in waiters:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5)


async def test_a_page_before_the_first_bar_jumps_to_it(app: Quart) -> None:
    client = app.test_client()
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)
    r = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIMC/USD&timeframe=1d"
                         f"&start={start}&limit=3")
    body = await r.get_json()
    assert r.status_code == 200, body
    assert [b[0] for b in body["bars"]] == [HISTORY_START_MS + i * DAY_MS for i in range(3)]
    assert body["next"] == HISTORY_START_MS + 3 * DAY_MS


async def test_a_range_that_ends_before_the_first_bar_is_empty_and_done(app: Quart) -> None:
    client = app.test_client()
    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)
    r = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIMC/USD&timeframe=1d"
                         f"&start={start}&end={start + 30 * DAY_MS}&limit=3")
    body = await r.get_json()
    assert r.status_code == 200, body
    assert body["bars"] == [] and body["next"] is None


@pytest.mark.parametrize("limit", [5, 5000])
async def test_a_range_wholly_in_the_future_is_empty_without_calling_the_exchange(
    emulator: ExchangeEmulator, app_config: dict[str, Any], limit: int
) -> None:
    """As the sim answers it (issue 24.25): no bar can open after now."""
    now = int(time.time() * 1000)
    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        calls = emulator.calls()
        for tf in ("1m", "1h"):
            r = await client.get(
                f"/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe={tf}"
                f"&start={now + DAY_MS}&end={now + 3 * DAY_MS}&limit={limit}")
            body = await r.get_json()
            assert r.status_code == 200, body
            assert body["bars"] == [] and body["next"] is None and not body["partial"]
        assert emulator.calls() == calls, [r.path for r in emulator.requests()][calls:]
