"""Domain types shared by every layer: a bar series, time conversions and half-open ranges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Series:
    """One 1m bar series."""

    market: str
    provider: str
    symbol: str

    def key(self) -> str:
        return f"{self.market}:{self.provider}:{self.symbol}"


def to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open ranges, sorted, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract_ranges(
    start: int, end: int, covered: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Parts of [start, end) not in ``covered``."""
    out, cur = [], start
    for a, b in merge_ranges(covered):
        if b <= cur or a >= end:
            continue
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
    if cur < end:
        out.append((cur, end))
    return out
