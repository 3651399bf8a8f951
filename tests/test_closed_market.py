"""A market that closes (like stocks): no invented bars, and latest-bars queries look back far
enough to return ``limit`` bars even on a weekend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from quart import Quart

import services.orchestrator as orchestrator_module
from app import create_app
from plugins.base import Capabilities
from plugins.sim import SimPlugin
from services.timeframes import MINUTE_MS, Bar

SESSION = (14 * 60 + 30, 21 * 60)  # 14:30-21:00 UTC, weekdays


def in_session(ts: int) -> bool:
    dt = datetime.fromtimestamp(ts / 1000, tz=UTC)
    minute = dt.hour * 60 + dt.minute
    return dt.weekday() < 5 and SESSION[0] <= minute < SESSION[1]


class SessionSim(SimPlugin):
    """The sim market with stock-market hours (test double of a closing market)."""

    plugin_key: ClassVar[str] = "session-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("closing",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_bars_per_call=1000, timeframes=("1m",), continuous=False)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        # Like Alpaca: pages skip closed hours, so a page of `limit` bars spans more clock time.
        self._count("fetch_ohlcv")
        out: list[Bar] = []
        t = -(-since // MINUTE_MS) * MINUTE_MS
        stop = until if until is not None else 2**62
        while t < stop and len(out) < limit and t < 2_000_000_000_000:
            if in_session(t):
                out.extend(await super().fetch_ohlcv(symbol, "1m", t, 1, t + MINUTE_MS))
                self.calls["fetch_ohlcv"] -= 1
            t += MINUTE_MS
        return out


@pytest.fixture
async def closing_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**app_config, "ENABLED_MARKETS": "sim,closing"})
    async with application.test_app():
        yield application


MONDAY_0100 = int(datetime(2024, 1, 8, 1, 0, tzinfo=UTC).timestamp() * 1000)


async def test_latest_bars_on_a_weekend_look_back_to_the_last_session(closing_app: Quart) -> None:
    r = await closing_app.test_client().get(
        f"/api/v1/ohlcv?market=closing&provider=sim&symbol=SIM/USD&timeframe=1m&end={MONDAY_0100}&limit=300"
    )
    body = await r.get_json()
    assert r.status_code == 200, body
    bars = body["bars"]
    assert len(bars) == 300
    assert all(in_session(b[0]) for b in bars)
    # The last bar is Friday 20:59 UTC, the session's last minute before the weekend.
    assert bars[-1][0] == int(datetime(2024, 1, 5, 20, 59, tzinfo=UTC).timestamp() * 1000)
    assert [b[0] for b in bars] == sorted({b[0] for b in bars})


async def test_no_bars_are_invented_outside_sessions(closing_app: Quart) -> None:
    saturday = int(datetime(2024, 1, 6, tzinfo=UTC).timestamp() * 1000)
    r = await closing_app.test_client().get(
        f"/api/v1/ohlcv?market=closing&provider=sim&symbol=SIM/USD&timeframe=1h"
        f"&start={saturday}&end={saturday + 2 * 86_400_000}"
    )
    body = await r.get_json()
    assert r.status_code == 200 and body["bars"] == [] and body["next"] is None


def test_first_widening_reaches_past_a_long_weekend() -> None:
    # A Friday-close to Tuesday-morning gap is ~3.7 days = 5,310 minutes.
    assert orchestrator_module.CLOSURE_SLACK_MS >= 5_310 * MINUTE_MS
    # Widening only ever grows the window (a factor below 1 would shrink it).
    assert all(f >= 1 for f in orchestrator_module.WIDEN_FACTORS)
