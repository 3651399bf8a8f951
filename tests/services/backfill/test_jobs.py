"""Backfill jobs: restarts (crash and graceful), one job per range across instances, API errors."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from quart.typing import TestClientProtocol

from tests.support.backfill import (
    DAY_MS,
    KLINES,
    MINUTE_MS,
    T0,
    TEN_DAYS_END,
    candles,
    emu_config,
    get_job,
    job_row,
    manager,
    post_backfill,
    running_app,
    stored,
    table_stats,
    wait_job,
)
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.ws import wait_for

emulator = fixtures.emulator
END = TEN_DAYS_END


async def test_job_killed_mid_way_resumes_after_restart_without_duplicates(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.latency = 0.05
    config = emu_config(app_config, emulator, BACKFILL_CONCURRENCY=1, BACKFILL_LEASE_SECONDS=1.0)
    async with running_app(config) as first:
        client = first.test_client()
        _, body = await post_backfill(client, T0, END)
        job = await wait_job(client, body["job_id"], until=("done",), min_chunks=4)
        assert job["status"] == "running" and 4 <= job["chunks_done"] < 15
        # The process dies: its tasks stop where they are, nothing hands the job back.
        await manager(first).close(release=False)
    row = await job_row(pg, body["job_id"])
    assert row["status"] == "running" and row["owner"] is not None and row["chunks_done"] < 15
    written_before = row["bars_written"]
    assert await table_stats(pg) == (written_before, written_before)
    emulator.latency = 0.0
    async with running_app(config) as second:  # picks the job up once the dead owner's lease ends
        client = second.test_client()
        job = await wait_job(client, body["job_id"])
    assert job["status"] == "done" and job["progress"] == 1.0 and job["chunks_done"] == 15
    assert job["bars_written"] == 14_400  # each chunk counted once: written and counted together
    row = await job_row(pg, body["job_id"])
    assert row["attempts"] == 2 and row["owner"] is None
    assert await table_stats(pg) == (14_400, 14_400)
    assert await stored(pg, T0, END) == candles(T0, END)
    # The second run fetched only the chunks not yet written, plus at most what the first had
    # fetched but not committed: the call in flight and the chunk its writer was writing.
    assert 15 <= emulator.calls(KLINES) <= 17


async def test_graceful_stop_hands_the_job_back_and_the_next_start_resumes_it(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.latency = 0.05
    config = emu_config(app_config, emulator, BACKFILL_CONCURRENCY=1, BACKFILL_LEASE_SECONDS=60.0)
    async with running_app(config) as first:
        client = first.test_client()
        _, body = await post_backfill(client, T0, END)
        await wait_job(client, body["job_id"], until=("done",), min_chunks=3)
    row = await job_row(pg, body["job_id"])
    assert row["status"] == "queued" and row["owner"] is None and 3 <= row["chunks_done"] < 15
    emulator.latency = 0.0
    async with running_app(config) as second:  # no lease to wait for (60 s here)
        job = await wait_job(second.test_client(), body["job_id"], seconds=15)
    assert job["status"] == "done" and job["bars_written"] == 14_400
    assert await table_stats(pg) == (14_400, 14_400)


async def test_concurrent_requests_for_one_range_make_one_job_across_instances(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    config = emu_config(app_config, emulator, BACKFILL_RUNNER=False)
    async with running_app(config) as one, running_app(config) as two:
        clients = [one.test_client(), two.test_client()] * 4
        answers = await asyncio.gather(*(post_backfill(c, T0, END) for c in clients))
        assert {status for status, _ in answers} == {202}
        assert len({body["job_id"] for _, body in answers}) == 1
        assert {body["status"] for _, body in answers} == {"queued"}
        # A sub-range of an active job is answered by that job too.
        _, inner = await post_backfill(clients[0], T0 + DAY_MS, T0 + 2 * DAY_MS)
        assert inner["job_id"] == answers[0][1]["job_id"]
        assert await pg.fetchval("SELECT count(*) FROM backfill_jobs") == 1
        job = await get_job(clients[1], inner["job_id"])
        assert job["status"] == "queued" and job["progress"] == 0.0 and job["bars_written"] == 0
    assert emulator.calls(KLINES) == 0


async def test_ohlcv_over_the_call_budget_schedules_a_job_named_in_the_header(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    config = emu_config(app_config, emulator, OHLCV_MAX_PROVIDER_CALLS=2)
    end = T0 + 5_000 * MINUTE_MS  # 5 calls of 1,000 needed, 2 allowed
    async with running_app(config) as app:
        client = app.test_client()
        resp = await client.get("/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT"
                                f"&timeframe=1m&start={T0}&end={end}&limit=5000")
        assert resp.status_code == 200
        job_id = resp.headers.get("X-Backfill-Job")
        assert job_id, dict(resp.headers)
        assert resp.headers["X-Data-Incomplete"] == "true"
        assert len((await resp.get_json())["bars"]) == 2_000
        assert emulator.calls(KLINES) == 2
        job = await wait_job(client, job_id)
        assert job["status"] == "done"
    assert await table_stats(pg) == (5_000, 5_000)
    assert await stored(pg, T0, end) == candles(T0, end)
    assert emulator.calls(KLINES) == 5  # the job fetched only the 3,000 minutes left


@pytest.mark.parametrize("body,status,code", [
    ({"provider": "binance", "symbol": "BTC/USDT", "start": T0, "end": END}, 400, "invalid_parameter"),
    ({"market": "crypto", "provider": "binance", "symbol": "BTC/USDT", "start": "yesterday",
      "end": END}, 400, "invalid_parameter"),
    ({"market": "crypto", "provider": "binance", "symbol": "BTC/USDT", "start": END, "end": T0},
     400, "invalid_parameter"),
    ({"market": "crypto", "provider": "binance", "symbol": "BTC/USDT", "start": "2024-01-01T00:00",
      "end": END}, 400, "invalid_parameter"),
    ({"market": "crypto", "provider": "binance", "symbol": "BTC/USDT", "start": 0,
      "end": 400 * 365 * DAY_MS}, 400, "invalid_parameter"),
    ({"market": "forex", "provider": "binance", "symbol": "BTC/USDT", "start": T0, "end": END},
     404, "unknown_market"),
    ({"market": "crypto", "provider": "nope", "symbol": "BTC/USDT", "start": T0, "end": END},
     404, "unknown_provider"),
    ({"market": "crypto", "provider": "binance", "symbol": "NOPE/USDT", "start": T0, "end": END},
     404, "unknown_symbol"),
])
async def test_post_backfill_errors(
    emulator: ExchangeEmulator, app_config: dict[str, Any], body: dict[str, Any], status: int,
    code: str,
) -> None:
    async with running_app(emu_config(app_config, emulator, BACKFILL_RUNNER=False)) as app:
        resp = await app.test_client().post("/api/v1/backfill", json=body)
        assert resp.status_code == status
        assert (await resp.get_json())["error"]["code"] == code


@pytest.mark.parametrize("raw,code", [
    ("{not json", "invalid_json"), ("[1, 2]", "invalid_json"), ("", "invalid_json"),
])
async def test_post_backfill_invalid_json(client: TestClientProtocol, raw: str, code: str) -> None:
    resp = await client.post("/api/v1/backfill", data=raw,
                             headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    body = await resp.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "f" * 40])
async def test_unknown_job_is_not_found(client: TestClientProtocol, job_id: str) -> None:
    resp = await client.get(f"/api/v1/backfill/{job_id}")
    assert resp.status_code == 404
    assert (await resp.get_json())["error"]["code"] == "not_found"


async def test_sim_job_through_the_api_reports_progress(client: TestClientProtocol) -> None:
    resp = await client.post("/api/v1/backfill", json={
        "market": "sim", "provider": "sim", "symbol": "SIM/USD",
        "start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z"})
    assert resp.status_code == 202
    body = await resp.get_json()
    job = await wait_job(client, body["job_id"])
    assert job == {**job, "status": "done", "progress": 1.0, "bars_written": 1440, "error": None,
                   "chunks_total": 2, "chunks_done": 2, "market": "sim", "symbol": "SIM/USD"}
    assert job["start"] == 1_709_251_200_000 and job["end"] == 1_709_251_200_000 + DAY_MS


async def test_metrics_count_bars_chunks_and_jobs(client: TestClientProtocol) -> None:
    from core.metrics import BACKFILL_BARS, BACKFILL_CHUNKS, BACKFILL_JOBS, BACKFILL_LAG

    bars_before = BACKFILL_BARS.labels("sim")._value.get()
    chunks_before = BACKFILL_CHUNKS.labels("sim")._value.get()
    resp = await client.post("/api/v1/backfill", json={
        "market": "sim", "provider": "sim", "symbol": "SIMA/USD", "start": T0, "end": T0 + DAY_MS})
    job = await wait_job(client, (await resp.get_json())["job_id"])
    assert job["status"] == "done"
    assert BACKFILL_BARS.labels("sim")._value.get() == bars_before + 1440
    assert BACKFILL_CHUNKS.labels("sim")._value.get() == chunks_before + 2
    # The runner refreshes the job gauges right after the job ends (its end wakes the runner).
    await wait_for(lambda: BACKFILL_JOBS.labels("done")._value.get() == 1, within=5)
    assert BACKFILL_JOBS.labels("done")._value.get() == 1
    assert BACKFILL_JOBS.labels("running")._value.get() == 0
    assert BACKFILL_LAG._value.get() == 0.0


async def test_a_runner_that_lost_its_lease_stops_and_the_job_finishes_once(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.latency = 0.05
    config = emu_config(app_config, emulator, BACKFILL_CONCURRENCY=1, BACKFILL_LEASE_SECONDS=0.9)
    async with running_app(config) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, END)
        await wait_job(client, body["job_id"], until=("done",), min_chunks=2)
        # Another instance took the job over (as after a network partition outlasting the lease).
        await pg.execute("UPDATE backfill_jobs SET owner = 'elsewhere', lease_until = now() +"
                         " interval '1 hour' WHERE id = $1", body["job_id"])
        taken = (await job_row(pg, body["job_id"]))["chunks_done"]
        await wait_for(lambda: not manager(app).runner._running, within=5)
        assert manager(app).runner._running == {}  # our runner let go of it
        row = await job_row(pg, body["job_id"])
        assert row["owner"] == "elsewhere" and row["chunks_done"] == taken
        # "elsewhere" dies: its lease ends and our runner resumes and finishes the job.
        emulator.latency = 0.0
        await pg.execute("UPDATE backfill_jobs SET lease_until = now() - interval '1 second'"
                         " WHERE id = $1", body["job_id"])
        job = await wait_job(client, body["job_id"])
    assert job["status"] == "done" and job["bars_written"] == 14_400
    assert await table_stats(pg) == (14_400, 14_400)


async def test_overlapping_jobs_run_one_after_the_other_and_fetch_the_overlap_once(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.latency = 0.02
    config = emu_config(app_config, emulator, BACKFILL_MAX_JOBS=2)
    async with running_app(config) as app:
        client = app.test_client()
        _, first = await post_backfill(client, T0, END)  # 15 chunks
        _, second = await post_backfill(client, T0 + 5 * DAY_MS, T0 + 15 * DAY_MS)
        assert first["job_id"] != second["job_id"]
        a = await wait_job(client, first["job_id"])
        b = await wait_job(client, second["job_id"])
    assert a["status"] == b["status"] == "done"
    # The second waited for the first: only its 5 days beyond END were fetched.
    assert a["bars_written"] == 14_400 and b["bars_written"] == 7_200 and b["chunks_total"] == 8
    assert emulator.calls(KLINES) == 15 + 8
    assert await table_stats(pg) == (21_600, 21_600)


async def test_jobs_the_orchestrator_schedules_keep_to_the_epoch_and_the_range_limit(
    app_config: dict[str, Any]
) -> None:
    """A latest-5000-weeks window reaches back to 1930: its job starts at most
    BACKFILL_MAX_RANGE_DAYS before its end, and never before the epoch."""
    from core.types import Series

    config = {**app_config, "BACKFILL_RUNNER": False, "BACKFILL_MAX_RANGE_DAYS": 30,
              "BACKFILL_AUTO_MAX_DAYS": 3660}
    series = Series("sim", "sim", "SIM/USD")
    async with running_app(config) as app:
        backfill = manager(app)
        job_id = await backfill.schedule_missing(series, [(-5000 * 7 * DAY_MS, T0)])
        assert job_id is not None
        job = await backfill.get_job(job_id)
        assert (job.start_ms, job.end_ms) == (T0 - 30 * DAY_MS, T0)
        job_id = await backfill.schedule_missing(series, [(-DAY_MS, DAY_MS)])
        assert job_id is not None
        job = await backfill.get_job(job_id)
        assert (job.start_ms, job.end_ms) == (0, DAY_MS)
        assert await backfill.schedule_missing(series, [(-2 * DAY_MS, -DAY_MS)]) is None


async def _sim_job(client: TestClientProtocol, day: int) -> str:
    resp = await client.post("/api/v1/backfill", json={
        "market": "sim", "provider": "sim", "symbol": "SIM/USD",
        "start": T0 + day * DAY_MS, "end": T0 + (day + 1) * DAY_MS})
    assert resp.status_code == 202
    job_id: str = (await resp.get_json())["job_id"]
    return job_id


async def jobs_running(client: TestClientProtocol, job_ids: list[str]) -> bool:
    return all([(await get_job(client, job_id))["status"] == "running" for job_id in job_ids])


async def test_jobs_of_an_unreachable_provider_yield_their_slots_also_after_a_restart(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    """Issue 24.1: two jobs against a dead exchange held both runner slots for BACKFILL_PATIENCE
    (30 s here) and a sim job waited behind them; after a restart they were taken again first."""
    emulator.inject(KLINES, status=503, times=None)
    config = emu_config(app_config, emulator, BACKFILL_MAX_JOBS=2, BACKFILL_YIELD_AFTER=0.5,
                        BREAKER_OPEN_SECONDS=0.5, BREAKER_PROBE_SECONDS=0.5,
                        BACKFILL_RETRY_MAX_WAIT=0.3)
    async with running_app(config) as app:
        client = app.test_client()
        dead = [(await post_backfill(client, T0 + d * DAY_MS, T0 + (d + 1) * DAY_MS))[1]["job_id"]
                for d in range(2)]
        # both are running (and failing) before the sim job comes
        await wait_for(lambda: jobs_running(client, dead))
        await wait_for(lambda: emulator.calls(KLINES) >= 2)
        sim = await _sim_job(client, 0)
        assert (await wait_job(client, sim, seconds=10))["status"] == "done"
        for job_id in dead:
            job = await get_job(client, job_id)
            assert job["status"] in ("queued", "running") and job["bars_written"] == 0, job
        parked = await wait_job(client, dead[0], seconds=10, until=("queued",))
        assert parked["error"].startswith("provider_unavailable: ") and "next try at" in \
            parked["error"], parked
        assert (await job_row(pg, dead[0]))["failing_since"] is not None
    # A restart: the failing jobs are queued again, but a new sim job does not wait behind them.
    async with running_app(config) as app:
        client = app.test_client()
        sim = await _sim_job(client, 1)
        assert (await wait_job(client, sim, seconds=10))["status"] == "done"
        emulator.clear_faults()  # the exchange is back: the parked jobs end well
        for job_id in dead:
            done = await wait_job(client, job_id, seconds=20)
            assert done["status"] == "done" and done["error"] is None, done
            assert done["bars_written"] == 1440
        assert (await job_row(pg, dead[0]))["failing_since"] is None


async def test_a_job_failing_longer_than_its_patience_fails(
    emulator: ExchangeEmulator, app_config: dict[str, Any]
) -> None:
    emulator.inject(KLINES, status=503, times=None)
    config = emu_config(app_config, emulator, BACKFILL_YIELD_AFTER=0.2, BACKFILL_PATIENCE=1.0,
                        BREAKER_OPEN_SECONDS=0.5,
                        BACKFILL_RETRY_MAX_WAIT=0.2)
    async with running_app(config) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, T0 + DAY_MS)
        job = await wait_job(client, body["job_id"], seconds=15)
    assert job["status"] == "failed", job
    assert job["error"].startswith("provider_unavailable: ") and "BACKFILL_PATIENCE" in job["error"]
