"""Backfill against the emulator enforcing Binance's request weight (429 past the limit, 418 bans):
the provider budget, in the exchange's weights, paces the calls under the limit while several are
in flight at once."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.support.backfill import BTC, DAY_MS, KLINES, T0, emu_config, manager, running_app
from tests.support.exchange_emulator import ExchangeEmulator, fixtures

emulator = fixtures.emulator
LATENCY = 0.2


def most_in_flight(arrivals: list[float], latency: float) -> int:
    """The most requests that arrived within one ``latency`` of each other (all served at once)."""
    arrivals = sorted(arrivals)
    return max((sum(1 for b in arrivals[i:] if b - a < latency) for i, a in enumerate(arrivals)),
               default=0)


async def test_weight_budget_backfill_has_no_429_and_keeps_calls_in_flight(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    # 40 weight per 2 s window (Binance: 6000 per minute). Four workers at 0.2 s per call would
    # ask up to 20 klines calls (40 weight) a second: twice the limit without the budget, which
    # takes 32 weight per 2 s with a burst of 4 (8 calls a second).
    emulator.latency = LATENCY
    end = T0 + 28 * DAY_MS  # 40,320 minutes: 41 klines calls of at most 1000 bars
    config = emu_config(app_config, emulator, PROVIDER_BUDGETS={"binance": "32/2/4"},
                        BACKFILL_CONCURRENCY=4, BACKFILL_RUNNER=False)
    async with running_app(config) as app:
        await manager(app).backfill(BTC, end, end + DAY_MS // 24)  # loads markets (weight 20)
        emulator.weights.configure(limit=40, window=2.0, ban_after=1)
        emulator.log.clear()
        progress = await manager(app).backfill(BTC, T0, end)
        gaps = await manager(app).gaps(BTC, T0, end)
    assert progress.bars_written == 28 * 1440 and gaps == {"missing": [], "verified_empty": []}
    assert emulator.weights.refused_429 == 0 and emulator.weights.refused_418 == 0
    calls = emulator.requests(KLINES)
    assert len(calls) == 41 and all(r.fault is None for r in calls)
    assert most_in_flight([r.at for r in calls], LATENCY) > 1
    # Paced at 8 calls a second, not at the 20 the workers could make.
    assert calls[-1].at - calls[0].at >= (len(calls) - 2) / 8 - 0.5
