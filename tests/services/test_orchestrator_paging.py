"""Paging with ``start`` (issue 14, fault 4): a page is never empty while ``next`` is set (a page
before the first bar jumps to it). ``limit`` counting bars in a market that closes (fault 5) is
tested in test_closed_market.py."""

from __future__ import annotations

from datetime import UTC, datetime

from quart import Quart

from core.timeframes import DAY_MS
from plugins.sim import HISTORY_START_MS


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
