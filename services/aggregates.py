"""Reading bars of any timeframe from storage. (Plain-mode version; TimescaleDB mode pending.)"""

from __future__ import annotations

import asyncpg

from services.storage import Series, to_dt
from services.timeframes import Bar, tf_ms, tf_offset


async def select_bars(
    conn: asyncpg.Connection,
    mode: str,
    market: str,
    provider: str,
    symbol: str,
    timeframe: str,
    start_ms: int,
    end_ms: int,
    limit: int,
) -> list[Bar]:
    """Bars of ``timeframe`` with start_ms <= ts < end_ms, ascending, the first ``limit``."""
    size, off = tf_ms(timeframe), tf_offset(timeframe)
    s = Series(market, provider, symbol)
    rows = await conn.fetch(
        "WITH b AS (SELECT ((extract(epoch FROM ts) * 1000)::bigint - $6) / $7 * $7 + $6 AS bts,"
        " ts, open, high, low, close, volume FROM ohlcv_1m"
        " WHERE market = $1 AND provider = $2 AND symbol = $3 AND ts >= $4 AND ts < $5)"
        " SELECT bts, (array_agg(open ORDER BY ts))[1], max(high), min(low),"
        " (array_agg(close ORDER BY ts DESC))[1], sum(volume) FROM b GROUP BY bts ORDER BY bts LIMIT $8",
        s.market, s.provider, s.symbol, to_dt(start_ms), to_dt(end_ms), off, size, limit,
    )
    return [[int(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in rows]


async def refresh_window(conn: asyncpg.Connection, mode: str, start_ms: int, end_ms: int) -> None:
    """Refresh continuous aggregates over a written window (no-op in plain mode)."""
    return None
