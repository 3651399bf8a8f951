"""Timeframes, bucket alignment and resampling of 1m bars (pure functions, no I/O).

Buckets are aligned to the UNIX epoch in UTC; ``1w`` buckets start Monday 00:00 UTC, like Binance
and TimescaleDB's ``time_bucket``. The epoch (1970-01-01) was a Thursday, so week buckets are offset
by four days.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
#: Monday 1970-01-05 00:00 UTC, the origin of week buckets.
WEEK_OFFSET_MS = 4 * DAY_MS

TIMEFRAMES: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "1w": WEEK_MS,
}

#: A bar: [ts_ms, open, high, low, close, volume]
Bar = list[float]


def tf_ms(timeframe: str) -> int:
    """Length of one bucket of ``timeframe`` in milliseconds (KeyError when unknown)."""
    return TIMEFRAMES[timeframe]


def tf_offset(timeframe: str) -> int:
    return WEEK_OFFSET_MS if timeframe == "1w" else 0


def bucket_start(ts: int, timeframe: str) -> int:
    """Open time of the bucket of ``timeframe`` that contains ``ts``."""
    size, off = TIMEFRAMES[timeframe], tf_offset(timeframe)
    return (ts - off) // size * size + off


def bucket_ceil(ts: int, timeframe: str) -> int:
    """The first bucket boundary at or after ``ts``."""
    start = bucket_start(ts, timeframe)
    return start if start == ts else start + TIMEFRAMES[timeframe]


def now_ms() -> int:
    return int(datetime.now().timestamp() * 1000)


def resample(bars_1m: Iterable[Sequence[float]], timeframe: str) -> list[Bar]:
    """Aggregate ascending 1m bars into ``timeframe`` bars: open of the first, max high, min low,
    close of the last, sum of volume. Buckets with no 1m bar produce no bar."""
    if timeframe == "1m":
        return [[int(b[0]), *map(float, b[1:6])] for b in bars_1m]
    out: list[Bar] = []
    cur: Bar | None = None
    for b in bars_1m:
        start = bucket_start(int(b[0]), timeframe)
        if cur is not None and cur[0] == start:
            cur[2] = max(cur[2], float(b[2]))
            cur[3] = min(cur[3], float(b[3]))
            cur[4] = float(b[4])
            cur[5] += float(b[5])
        else:
            cur = [start, float(b[1]), float(b[2]), float(b[3]), float(b[4]), float(b[5])]
            out.append(cur)
    return out



#: Decimals of a bar's volume on every path (REST answers and WebSocket frames): sums of float
#: volumes carry binary noise (3009.2870660000012, 6.5481430000000005). Prices are never summed
#: (first, max, min, last), so they are passed as they are: tiny prices keep every digit.
BAR_DECIMALS = 8


def round_bar(bar: Sequence[float]) -> Bar:
    """``[int ts, o, h, l, c, v]`` with the volume rounded to ``BAR_DECIMALS`` decimals."""
    return [int(bar[0]), float(bar[1]), float(bar[2]), float(bar[3]), float(bar[4]),
            round(float(bar[5]), BAR_DECIMALS)]
