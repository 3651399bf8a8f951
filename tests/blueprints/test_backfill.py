"""Jobs say why they are stuck (``error`` while retrying), and ``GET /backfill`` lists them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.backfill import (
    DAY_MS,
    KLINES,
    T0,
    emu_config,
    get_job,
    post_backfill,
    running_app,
    wait_job,
)
from tests.support.exchange_emulator import ExchangeEmulator, fixtures

emulator = fixtures.emulator


async def test_a_job_against_a_dead_provider_shows_its_last_error_while_it_retries(
    emulator: ExchangeEmulator, app_config: dict[str, Any]
) -> None:
    emulator.inject(KLINES, status=503, times=None)
    async with running_app(emu_config(app_config, emulator)) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, T0 + DAY_MS)
        job: dict[str, Any] = {}
        for _ in range(200):
            job = await get_job(client, body["job_id"])
            if job["error"]:
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "running" and job["progress"] == 0.0, job
        assert job["error"].startswith("provider_unavailable: "), job
        assert "chunk starting 2024-01-01" in job["error"] and "retrying" in job["error"]
        listed = await (await client.get("/api/v1/backfill?status=running")).get_json()
        # The listing shows it too (the last failure of either chunk retrying at the moment).
        assert [j["job_id"] for j in listed["jobs"]] == [body["job_id"]]
        assert listed["jobs"][0]["error"].startswith("provider_unavailable: ")
        assert listed["jobs"][0]["error"].endswith("; retrying)")
        emulator.clear_faults()  # the exchange is back: the job ends well and forgets the error
        done = await wait_job(client, body["job_id"])
    assert done["status"] == "done" and done["error"] is None and done["bars_written"] == 1440


async def test_list_jobs_newest_first_with_status_and_limit(
    emulator: ExchangeEmulator, app_config: dict[str, Any]
) -> None:
    async with running_app(emu_config(app_config, emulator, BACKFILL_RUNNER=False)) as app:
        client = app.test_client()
        empty = await client.get("/api/v1/backfill")
        assert empty.status_code == 200 and await empty.get_json() == {"jobs": []}
        ids = []
        for day in range(3):
            _, body = await post_backfill(client, T0 + day * DAY_MS, T0 + (day + 1) * DAY_MS)
            ids.append(body["job_id"])
        listed = (await (await client.get("/api/v1/backfill")).get_json())["jobs"]
        assert [j["job_id"] for j in listed] == ids[::-1]
        first = listed[-1]
        assert first == {**first, "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
                         "start": T0, "end": T0 + DAY_MS, "status": "queued", "progress": 0.0,
                         "bars_written": 0, "error": None}
        assert first == await get_job(client, ids[0])  # each as GET /backfill/<job_id> answers it
        two = (await (await client.get("/api/v1/backfill?limit=2")).get_json())["jobs"]
        assert [j["job_id"] for j in two] == ids[:0:-1]
        queued = (await (await client.get("/api/v1/backfill?status=queued")).get_json())["jobs"]
        assert len(queued) == 3
        assert (await (await client.get("/api/v1/backfill?status=done")).get_json())["jobs"] == []


@pytest.mark.parametrize("query", ["status=stuck", "limit=0", "limit=100000", "limit=many"])
async def test_list_jobs_bad_parameters(client: Any, query: str) -> None:
    resp = await client.get(f"/api/v1/backfill?{query}")
    assert resp.status_code == 400
    error = (await resp.get_json())["error"]
    assert error["code"] == "invalid_parameter" and error["details"]


@pytest.mark.parametrize(("query", "code"), [
    ("market=nope&provider=sim&symbol=SIM/USD", "unknown_market"),
    ("market=sim&provider=nope&symbol=SIM/USD", "unknown_provider"),
    ("market=sim&provider=sim&symbol=NOPE/USD", "unknown_symbol"),
])
async def test_gaps_refuses_unknown_markets_providers_and_symbols(
    client: Any, query: str, code: str
) -> None:
    """As ``/ohlcv`` does (issue 24.10), instead of the whole range reported missing."""
    resp = await client.get(f"/api/v1/gaps?{query}&start={T0}&end={T0 + DAY_MS}")
    assert resp.status_code == 404, await resp.get_data(as_text=True)
    assert (await resp.get_json())["error"]["code"] == code
    ok = await client.get(f"/api/v1/gaps?market=sim&provider=sim&symbol=SIM/USD&start={T0}"
                          f"&end={T0 + DAY_MS}")
    assert ok.status_code == 200 and (await ok.get_json())["missing"] == [[T0, T0 + DAY_MS]]
