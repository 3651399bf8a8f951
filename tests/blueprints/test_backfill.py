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


async def test_queued_jobs_are_capped_per_client_and_overlaps_merge(
    emulator: ExchangeEmulator, app_config: dict[str, Any]
) -> None:
    """Issue 23 (9): shifted ranges each made a new job of up to 10 years. Now a range overlapping a
    queued job widens it, and a client's distinct ranges stop at BACKFILL_MAX_QUEUED_PER_CLIENT."""
    cfg = emu_config(app_config, emulator, BACKFILL_RUNNER=False, BACKFILL_MAX_QUEUED_PER_CLIENT=3)
    async with running_app(cfg) as app:
        client = app.test_client()
        ids = set()
        for shift in range(20):  # shifted by a minute each: all one job
            status, body = await post_backfill(client, T0 + shift * 60_000, T0 + DAY_MS + shift * 60_000)
            assert status == 202
            ids.add(body["job_id"])
        assert len(ids) == 1
        job = await get_job(client, ids.pop())
        assert (job["start"], job["end"]) == (T0, T0 + DAY_MS + 19 * 60_000)
        for day in (2, 4):
            assert (await post_backfill(client, T0 + day * DAY_MS, T0 + (day + 1) * DAY_MS))[0] == 202
        r = await client.post("/api/v1/backfill", json={
            "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
            "start": T0 + 6 * DAY_MS, "end": T0 + 7 * DAY_MS})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.get_json())["error"]["code"] == "too_many_jobs"
        # Another client has its own quota, and sees only its own jobs.
        other = {"scope_base": {"client": ("192.0.2.9", 1)}}
        r = await client.post("/api/v1/backfill", json={
            "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
            "start": T0 + 6 * DAY_MS, "end": T0 + 7 * DAY_MS}, **other)
        assert r.status_code == 202
        mine = (await (await client.get("/api/v1/backfill")).get_json())["jobs"]
        theirs = (await (await client.get("/api/v1/backfill", **other)).get_json())["jobs"]
        assert len(mine) == 3 and [j["job_id"] for j in theirs] == [(await r.get_json())["job_id"]]


async def test_users_list_their_own_jobs_and_operators_all(
    emulator: ExchangeEmulator, app_config: dict[str, Any]
) -> None:
    """Issue 23 (9): GET /backfill listed every user's jobs."""
    from app_extensions.auth import hash_key

    cfg = emu_config(app_config, emulator, BACKFILL_RUNNER=False, AUTH_ENABLED=True,
                     API_KEYS=[hash_key("alice-key-0123"), hash_key("bob-key-0123")],
                     OPERATOR_KEYS=[hash_key("ops-key-0123")])
    async with running_app(cfg) as app:
        client = app.test_client()
        made = {}
        for who, day in (("alice", 0), ("bob", 2)):
            r = await client.post("/api/v1/backfill", headers={"X-API-Key": f"{who}-key-0123"}, json={
                "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
                "start": T0 + day * DAY_MS, "end": T0 + (day + 1) * DAY_MS})
            assert r.status_code == 202
            made[who] = (await r.get_json())["job_id"]

        async def listed(key: str) -> list[str]:
            r = await client.get("/api/v1/backfill", headers={"X-API-Key": key})
            return [j["job_id"] for j in (await r.get_json())["jobs"]]

        assert await listed("alice-key-0123") == [made["alice"]]
        assert await listed("bob-key-0123") == [made["bob"]]
        assert await listed("ops-key-0123") == [made["bob"], made["alice"]]


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
