"""A market that closes (like stocks): no invented bars, latest-bars queries look back far enough
to return ``limit`` bars even on a weekend, and pages from ``start`` hold ``limit`` bars."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from quart import Quart

import services.bars.orchestrator as orchestrator_module
from app import create_app
from core.timeframes import DAY_MS, MINUTE_MS, TIMEFRAMES, Bar, now_ms
from plugins.base import Capabilities
from plugins.sim import SimPlugin

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


# --- A provider that serves only its latest bars (Kraken: 720) ------------------------------------
class ShallowSim(SimPlugin):
    """The sim market answering like Kraken's OHLC: only the latest 720 bars of a timeframe,
    whatever ``since`` asks."""

    plugin_key: ClassVar[str] = "shallow-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("shallow",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(720, tuple(TIMEFRAMES), 1.0, True, {"history_bars": 720})

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        oldest = now_ms() - 720 * TIMEFRAMES[timeframe]
        return await super().fetch_ohlcv(symbol, timeframe, max(since, oldest), min(limit, 720),
                                         until)


async def test_history_a_provider_no_longer_serves_is_not_recorded_as_verified_empty(
    app_config: dict[str, Any],
) -> None:
    base = "/api/v1/ohlcv?market=shallow&provider=sim&symbol=SIM/USD"
    app = create_app({**app_config, "ENABLED_MARKETS": "sim,shallow", "BACKFILL_RUNNER": False})
    async with app.test_app():
        client = app.test_client()
        # 100 hours of 1h bars: older than its 720 minutes, so fetched in 1h, all of them.
        r = await client.get(f"{base}&timeframe=1h&limit=100")
        body = await r.get_json()
        assert r.status_code == 200 and len(body["bars"]) == 100, body
        hour = now_ms() // 3_600_000 * 3_600_000
        assert body["bars"][0][0] in (hour - 99 * 3_600_000, hour - 98 * 3_600_000)
        # The latest 1000 minutes: what it still serves, marked incomplete.
        r = await client.get(f"{base}&timeframe=1m&limit=1000")
        body = await r.get_json()
        assert r.status_code == 200 and 700 <= len(body["bars"]) <= 712, len(body["bars"])
        assert r.headers["X-Data-Incomplete"] == "true"
        # Nothing older was recorded as an exchange hole: it is still missing.
        start = now_ms() // MINUTE_MS * MINUTE_MS - 2 * 86_400_000
        r = await client.get(f"/api/v1/gaps?market=shallow&provider=sim&symbol=SIM/USD"
                             f"&start={start}&end={start + 86_400_000}")
        assert await r.get_json() == {"missing": [[start, start + 86_400_000]],
                                      "verified_empty": []}


MONDAY = int(datetime(2024, 1, 8, tzinfo=UTC).timestamp() * 1000)


async def test_limit_counts_bars_when_paging_a_market_that_closes(closing_app: Quart) -> None:
    client = closing_app.test_client()
    start, end = MONDAY, MONDAY + 7 * DAY_MS
    pages: list[list[list[float]]] = []
    base = "/api/v1/ohlcv?market=closing&provider=sim&symbol=SIM/USD&timeframe=1m&limit=1000"
    cursor: int | None = start
    while cursor is not None and len(pages) < 10:
        r = await client.get(f"{base}&start={cursor}&end={end}")
        body = await r.get_json()
        assert r.status_code == 200, body
        pages.append(body["bars"])
        cursor = body["next"]
        assert body["bars"] or cursor is None  # never an empty page with a next
    assert [len(p) for p in pages] == [1000, 950]  # 5 sessions of 390 bars
    ts = [int(b[0]) for p in pages for b in p]
    assert ts == sorted(set(ts)) and all(in_session(t) for t in ts)
    assert pages[1][0][0] > pages[0][-1][0]
