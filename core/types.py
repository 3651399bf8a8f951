"""Domain types shared by every layer: a bar series, a live channel, time conversions and
half-open ranges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.errors import InvalidParameter
from core.timeframes import TIMEFRAMES


@dataclass(frozen=True)
class Series:
    """One 1m bar series."""

    market: str
    provider: str
    symbol: str

    def key(self) -> str:
        return f"{self.market}:{self.provider}:{self.symbol}"


@dataclass(frozen=True)
class Channel:
    """One live stream: ``market:provider:symbol:timeframe`` (the symbol may contain ``:``)."""

    market: str
    provider: str
    symbol: str
    timeframe: str

    @property
    def name(self) -> str:
        return f"{self.market}:{self.provider}:{self.symbol}:{self.timeframe}"

    @property
    def series(self) -> Series:
        return Series(self.market, self.provider, self.symbol)

    @classmethod
    def parse(cls, name: str) -> Channel:
        """Parse a channel name; raises ``InvalidParameter``."""
        parts = name.split(":")
        if len(parts) < 4 or not all(parts) or parts[-1] not in TIMEFRAMES:
            shape = "must be market:provider:symbol:timeframe"
            raise InvalidParameter(f"channel {shape}", details={"channel": [shape]})
        return cls(parts[0], parts[1], ":".join(parts[2:-1]), parts[-1])


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
