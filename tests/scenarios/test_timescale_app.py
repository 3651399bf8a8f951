"""The whole service in TimescaleDB mode: the app's own pool, migrations and write path against the
PGlite TimescaleDB (tests/support/pglite), answering /ohlcv from the continuous aggregates."""

from __future__ import annotations

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from core.timeframes import DAY_MS, MINUTE_MS, resample, tf_ms
from plugins.sim import sim_bar
from services.bars import aggregates
from tests.blueprints.test_market import BASE, flush_prefix

PAST = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a Wednesday


async def test_readiness_reports_timescale_mode(ts_app: Quart) -> None:
    r = await ts_app.test_client().get("/health/ready")
    body = await r.get_json()
    assert r.status_code == 200 and body["storage_mode"] == "timescale", body


@pytest.mark.parametrize("timeframe", ["15m", "1h", "12h", "1d"])
async def test_stored_range_is_answered_from_the_aggregates(
    ts_app: Quart, redis_prefix: str, timeframe: str
) -> None:
    client: TestClientProtocol = ts_app.test_client()
    query = f"&timeframe={timeframe}&start={PAST}&end={PAST + DAY_MS}"
    r = await client.get(BASE + query)
    first = await r.get_json()
    assert r.status_code == 200, first
    assert len(first["bars"]) == DAY_MS // tf_ms(timeframe)
    await flush_prefix(redis_prefix, ts_app)
    r = await client.get(BASE + query)
    second = await r.get_json()
    if timeframe in aggregates.CAGG_VIEWS:
        assert r.headers["X-Data-Source"] == "aggregate"
    else:  # regrouped at query time from the 4h aggregate
        assert r.headers["X-Data-Source"] in ("aggregate", "database")
    assert second["bars"] == first["bars"]
    minutes = [sim_bar(42, "SIM/USD", PAST + i * MINUTE_MS) for i in range(DAY_MS // MINUTE_MS)]
    want = resample(minutes, timeframe)
    assert [b[:5] for b in second["bars"]] == [w[:5] for w in want]
    assert [b[5] for b in second["bars"]] == pytest.approx([w[5] for w in want])
