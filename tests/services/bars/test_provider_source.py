"""ProviderSource and the automatic backfill a GET queues (issue 14, fault 2): a symbol's history
starts at its listing, and a query never starts a huge backfill by itself."""

from __future__ import annotations

from typing import Any

from quart import Quart

from core.timeframes import DAY_MS, MINUTE_MS, now_ms
from plugins.sim import HISTORY_START_MS
from tests.support.backfill import T0, emu_config, running_app
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401

SIM = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIMC/USD"


async def job_of(app: Quart, headers: Any) -> dict[str, Any]:
    # By its id: GET /backfill lists a client's own jobs, and this one the service queued itself.
    r = await app.test_client().get(f"/api/v1/backfill/{headers['X-Backfill-Job']}")
    assert r.status_code == 200
    job: dict[str, Any] = await r.get_json()
    return job


async def test_a_latest_weekly_query_queues_a_bounded_backfill(app_config: dict[str, Any]) -> None:
    async with running_app({**app_config, "BACKFILL_RUNNER": False}) as app:
        r = await app.test_client().get(f"{SIM}&timeframe=1w&limit=30")
        body = await r.get_json()
        assert r.status_code == 200, body
        assert len(body["bars"]) == 30
        job = await job_of(app, r.headers)
        # Not the 30 weeks asked: the latest BACKFILL_AUTO_MAX_DAYS of what is missing.
        assert job["start"] >= HISTORY_START_MS
        assert job["end"] - job["start"] <= 7 * DAY_MS
        assert job["end"] >= now_ms() - 10 * MINUTE_MS


async def test_the_automatic_backfill_starts_at_the_listing(app_config: dict[str, Any]) -> None:
    end = HISTORY_START_MS + 3 * DAY_MS  # 5 calls of 1m: more than the budget, so 1d natively
    config = {**app_config, "BACKFILL_RUNNER": False, "OHLCV_MAX_PROVIDER_CALLS": 2}
    async with running_app(config) as app:
        r = await app.test_client().get(f"{SIM}&timeframe=1d&end={end}&limit=500")
        body = await r.get_json()
        assert r.status_code == 200, body
        assert [b[0] for b in body["bars"]] == [HISTORY_START_MS + i * DAY_MS for i in range(3)]
        job = await job_of(app, r.headers)
        assert (job["start"], job["end"]) == (HISTORY_START_MS, end)


async def test_a_first_page_tells_the_listing(
    emulator: ExchangeEmulator, app_config: dict[str, Any]  # noqa: F811
) -> None:
    # The emulator's history starts at T0 and does not say so: the first weekly page shows it.
    end = T0 + 3 * DAY_MS
    config = emu_config(app_config, emulator, BACKFILL_RUNNER=False, OHLCV_MAX_PROVIDER_CALLS=2)
    async with running_app(config) as app:
        r = await app.test_client().get("/api/v1/ohlcv?market=crypto&provider=binance"
                                        f"&symbol=BTC/USDT&timeframe=1d&end={end}&limit=400")
        body = await r.get_json()
        assert r.status_code == 200, body
        assert body["bars"][0][0] == T0
        job = await job_of(app, r.headers)
        assert (job["start"], job["end"]) == (T0, end)
