"""Paging with ``start`` (issue 14, faults 4 and 5): ``limit`` counts bars, not buckets, and a
page is never empty while ``next`` is set (a page before the first bar jumps to it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from quart import Quart

from app import create_app
from core.timeframes import DAY_MS, MINUTE_MS, Bar
from plugins.base import Capabilities
from plugins.sim import HISTORY_START_MS, SimPlugin

SESSION = (14 * 60 + 30, 21 * 60)  # 14:30-21:00 UTC, weekdays: 390 bars a day
MONDAY = int(datetime(2024, 1, 8, tzinfo=UTC).timestamp() * 1000)


def in_session(ts: int) -> bool:
    dt = datetime.fromtimestamp(ts / 1000, tz=UTC)
    return dt.weekday() < 5 and SESSION[0] <= dt.hour * 60 + dt.minute < SESSION[1]


class PagingSessionSim(SimPlugin):
    """The sim market with stock-market hours: pages skip closed hours, as Alpaca's do."""

    plugin_key: ClassVar[str] = "paging-session-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("sessions",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_bars_per_call=10_000, timeframes=("1m",), continuous=False)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        self._count("fetch_ohlcv")
        out: list[Bar] = []
        t = -(-since // MINUTE_MS) * MINUTE_MS
        stop = min(until if until is not None else 2**62, MONDAY + 8 * DAY_MS)
        while t < stop and len(out) < limit:
            if in_session(t):
                out.extend(await super().fetch_ohlcv(symbol, "1m", t, 1, t + MINUTE_MS))
                self.calls["fetch_ohlcv"] -= 1
            t += MINUTE_MS
        return out


@pytest.fixture
async def sessions_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**app_config, "ENABLED_MARKETS": "sim,sessions",
                              "BACKFILL_RUNNER": False})
    async with application.test_app():
        yield application


async def test_limit_counts_bars_when_paging_a_market_that_closes(sessions_app: Quart) -> None:
    client = sessions_app.test_client()
    start, end = MONDAY, MONDAY + 7 * DAY_MS
    pages: list[list[list[float]]] = []
    base = "/api/v1/ohlcv?market=sessions&provider=sim&symbol=SIM/USD&timeframe=1m&limit=1000"
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
