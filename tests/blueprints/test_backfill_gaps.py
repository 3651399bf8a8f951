"""GET /api/v1/gaps: missing and verified-empty ranges of a 1m series, and its error cases."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app_extensions.services import get_services
from core.timeframes import MINUTE_MS, bucket_ceil, bucket_start, now_ms
from core.types import Series
from services.bars import storage
from tests.support.backfill import T0, candles

SIM = Series("sim", "sim", "SIM/USD")
BASE = "/api/v1/gaps?market=sim&provider=sim&symbol=SIM/USD"


async def gaps(client: TestClientProtocol, start: int, end: int) -> dict[str, Any]:
    resp = await client.get(f"{BASE}&start={start}&end={end}")
    assert resp.status_code == 200
    body: dict[str, Any] = await resp.get_json()
    return body


async def test_missing_and_verified_empty_ranges(
    app: Quart, client: TestClientProtocol, pg: asyncpg.Connection
) -> None:
    m = MINUTE_MS
    # Stored and complete: [T0, T0+100m) with bars except [T0+40m, T0+55m) (a provider hole);
    # never fetched: [T0+100m, T0+130m); complete again from T0+130m to T0+200m.
    bars = candles(T0, T0 + 40 * m) + candles(T0 + 55 * m, T0 + 100 * m)
    await storage.upsert_1m_bars(pg, SIM, bars, [(T0, T0 + 100 * m)])
    await storage.upsert_1m_bars(pg, SIM, candles(T0 + 130 * m, T0 + 200 * m),
                                 [(T0 + 130 * m, T0 + 200 * m)])
    body = await gaps(client, T0 - 10 * m, T0 + 210 * m)
    assert body == {
        "missing": [[T0 - 10 * m, T0], [T0 + 100 * m, T0 + 130 * m], [T0 + 200 * m, T0 + 210 * m]],
        "verified_empty": [[T0 + 40 * m, T0 + 55 * m]],
    }
    # Clipped to the asked range, ISO times accepted.
    body = await gaps(client, T0 + 45 * m, T0 + 120 * m)
    assert body == {"missing": [[T0 + 100 * m, T0 + 120 * m]],
                    "verified_empty": [[T0 + 45 * m, T0 + 55 * m]]}
    resp = await client.get(f"{BASE}&start=2024-01-01T00:00:00Z&end=2024-01-01T01:00:00%2B00:00")
    assert await resp.get_json() == {"missing": [], "verified_empty": [[T0 + 40 * m, T0 + 55 * m]]}


async def test_backfill_up_to_now_never_marks_the_forming_minutes_complete(
    app: Quart, client: TestClientProtocol
) -> None:
    now = now_ms()
    start, end = bucket_start(now, "1m") - 90 * MINUTE_MS, now + 5 * MINUTE_MS
    result = await get_services(app).backfill.backfill(SIM, start, end)
    # Every closed minute is written (a minute may tick over while this runs) ...
    assert result.chunks_done == 1 and 90 <= result.bars_written <= 91
    body = await gaps(client, start, end)
    assert body["verified_empty"] == []
    # ... but the last two closed minutes, the forming one and the future stay missing.
    (lo, hi), = body["missing"]
    assert hi == bucket_ceil(end, "1m")
    assert lo in (bucket_start(now, "1m") - 2 * MINUTE_MS, bucket_start(now, "1m") - MINUTE_MS)


A, B = 1_704_067_200_000, 1_704_067_260_000  # 2024-01-01 00:00 and 00:01 UTC


@pytest.mark.parametrize("query,status,code", [
    (f"?provider=sim&symbol=SIM/USD&start={A}&end={B}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&end={B}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start={A}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start=soon&end={B}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start={B}&end={B}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start=2024-01-01T00:00&end={B}", 400,
     "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start={A}&end=32503679999999", 400,
     "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM%00/USD&start={A}&end={B}", 400, "invalid_parameter"),
    (f"?market=sim&provider=sim&symbol=SIM/USD&start=%C2%B2&end={B}", 400, "invalid_parameter"),
    (f"?market=forex&provider=sim&symbol=SIM/USD&start={A}&end={B}", 404, "unknown_market"),
    (f"?market=sim&provider=nope&symbol=SIM/USD&start={A}&end={B}", 404, "unknown_provider"),
])
async def test_gaps_errors(client: TestClientProtocol, query: str, status: int, code: str) -> None:
    resp = await client.get(f"/api/v1/gaps{query}")
    assert resp.status_code == status
    body = await resp.get_json()
    assert body["error"]["code"] == code
    if status == 400:
        assert body["error"]["details"]
