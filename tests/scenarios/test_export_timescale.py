"""GET /api/v1/export in TimescaleDB mode (PGlite, tests/support/pglite): the binary COPY of the
continuous aggregates' query gives the bars /ohlcv gives, for every timeframe."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from quart import Quart

from core.timeframes import DAY_MS, TIMEFRAMES
from tests.support.backfill import wait_job

PAST = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a Wednesday
SERIES = "market=sim&provider=sim&symbol=SIM/USD"


async def test_export_equals_ohlcv_from_the_aggregates(ts_app: Quart) -> None:
    client = ts_app.test_client()
    start, end = PAST - 2 * DAY_MS, PAST + 12 * DAY_MS  # two whole weeks: Monday to Monday
    # A backfill from the sim provider stores the minutes and records them complete.
    backfill = await client.post("/api/v1/backfill", json={"market": "sim", "provider": "sim", "symbol": "SIM/USD",
                                                           "start": start - 7 * DAY_MS, "end": end + 7 * DAY_MS})
    assert backfill.status_code == 202
    job = await wait_job(client, (await backfill.get_json())["job_id"], seconds=120)
    assert job["status"] == "done", job
    for timeframe in TIMEFRAMES:
        resp = await client.get(f"/api/v1/export?{SERIES}&timeframe={timeframe}&start={start}&end={end}&format=parquet")
        assert resp.status_code == 200, await resp.get_data(as_text=True)
        table = pq.read_table(io.BytesIO(await resp.get_data(as_text=False)))
        columns = [table.column(c).to_pylist() for c in ("open", "high", "low", "close", "volume")]
        got = [[t, *v] for t, *v in zip(table.column("ts").cast(pa.int64()).to_pylist(), *columns, strict=True)]
        want: list[list[float]] = []
        nxt: int | None = start
        while nxt is not None:
            page = await (await client.get(f"/api/v1/ohlcv?{SERIES}&timeframe={timeframe}&start={nxt}&end={end}"
                                           "&limit=5000")).get_json()
            want += page["bars"]
            nxt = page["next"]
        assert got == want and got, timeframe
