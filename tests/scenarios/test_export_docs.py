"""The notebook lines of docs/api.md's ``GET /api/v1/export`` section, run as written against a live
Hypercorn server holding two days of stored sim bars: pandas, polars and DuckDB read what the
section says they read, and get the bars /ohlcv gives."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.timeframes import DAY_MS, MINUTE_MS
from core.types import Series
from plugins.sim import sim_bar
from services.bars import storage
from tests.conftest import DATABASE_URL
from tests.support.helpers import delete_prefix
from tests.support.live_server import hypercorn_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
T0 = 1_704_067_200_000  # 2024-01-01
SIM = Series("sim", "sim", "SIM/USD")


def notebook_block() -> str:
    section = DOC.read_text().split("## GET /api/v1/export", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "docs/api.md: the export section has no python block"
    return found.group(1)


async def _seed(schema: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}", public')
        bars = [sim_bar(42, "SIM/USD", t) for t in range(T0, T0 + 2 * DAY_MS, MINUTE_MS)]
        await storage.upsert_1m_bars(conn, SIM, bars, [(T0, T0 + 2 * DAY_MS)])
    finally:
        await conn.close()


async def _drop(schema: str, prefix: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    await delete_prefix("redis://127.0.0.1:6379/0", prefix)


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    uid = uuid.uuid4().hex[:10]
    schema, prefix = f"t_xd_{uid}", f"t:xd:{uid}"
    try:
        with hypercorn_server({"DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix}) as base:
            asyncio.run(_seed(schema))  # after start-up: the migrations made the tables
            yield base
    finally:
        asyncio.run(_drop(schema, prefix))


def test_the_documented_one_liners_read_the_bars_of_ohlcv(live: str) -> None:
    code = notebook_block().replace("http://127.0.0.1:8000", live)
    names: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), names)  # the lines exactly as the docs show them
    with urllib.request.urlopen(f"{live}/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h"
                                f"&start={T0}&end={T0 + 2 * DAY_MS}&limit=100") as resp:
        want = json.load(resp)["bars"]
    assert len(want) == 48
    df = names["df"]
    assert str(df["ts"].dtype) == "datetime64[ms, UTC]"
    assert [[int(r.ts.value // 1_000_000), r.open, r.high, r.low, r.close, r.volume]
            for r in df.itertuples()] == want
    assert names["df_csv"].values.tolist() == [[float(x) for x in bar] for bar in want]
    for frame in (names["pl_df"], names["pl_pq"]):
        assert frame.columns == ["ts", "open", "high", "low", "close", "volume"]
        assert frame["high"].to_list() == [bar[2] for bar in want]
    daily = names["daily"]
    assert daily["high"].tolist() == [max(b[2] for b in want[:24]), max(b[2] for b in want[24:])]
