"""Pure range logic of backfills (no I/O) and the one query it needs: chunk plans and gap reports.

Ranges are half-open ``(start_ms, end_ms)`` tuples of whole minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from core.types import Series, subtract_ranges, to_dt


@dataclass(frozen=True)
class Chunk:
    """Minutes [start, end) fetched in one call; [start, complete_end) is recorded complete."""

    start: int
    end: int
    complete_end: int


def split_chunks(missing: Sequence[tuple[int, int]], step: int, safe_end: int) -> list[Chunk]:
    """Cut each missing range into chunks of at most ``step`` ms, in order. A chunk's complete
    part stops at ``safe_end`` (minutes after it may still change and are never recorded)."""
    if step <= 0:
        raise ValueError("step must be positive")
    return [
        Chunk(x, min(x + step, b), max(x, min(x + step, b, safe_end)))
        for a, b in missing for x in range(a, b, step)
    ]


def gap_report(
    start: int, end: int, covered: Sequence[tuple[int, int]], islands: Sequence[tuple[int, int]]
) -> dict[str, list[list[int]]]:
    """``missing``: parts of [start, end) the ledger does not cover; ``verified_empty``: covered
    parts with no stored bar (``islands``: runs of stored bars)."""
    empty = [r for a, b in covered for r in subtract_ranges(max(a, start), min(b, end), islands)]
    return {"missing": [list(r) for r in subtract_ranges(start, end, covered)],
            "verified_empty": [list(r) for r in empty]}


async def bar_islands(
    conn: asyncpg.Connection, series: Series, start: int, end: int
) -> list[tuple[int, int]]:
    """Maximal runs of consecutive stored 1m bars in [start, end), as [first, last + 1m)."""
    rows = await conn.fetch(
        "SELECT min(ms) AS a, max(ms) + 60000 AS b FROM ("
        " SELECT ms, ms - 60000 * row_number() OVER (ORDER BY ms) AS grp FROM ("
        "  SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms FROM ohlcv_1m"
        "  WHERE market = $1 AND provider = $2 AND symbol = $3 AND ts >= $4 AND ts < $5) s) t"
        " GROUP BY grp ORDER BY a",
        series.market, series.provider, series.symbol, to_dt(start), to_dt(end),
    )
    return [(int(r["a"]), int(r["b"])) for r in rows]
