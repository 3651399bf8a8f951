"""Resampling and bucket alignment, checked against a naive reference (property tests)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.timeframes import (
    MINUTE_MS,
    TIMEFRAMES,
    bucket_ceil,
    bucket_start,
    resample,
)


def naive_bucket(ts: int, timeframe: str) -> int:
    """Reference alignment computed from calendar fields, not from modular arithmetic."""
    dt = datetime.fromtimestamp(ts / 1000, tz=UTC)
    if timeframe == "1w":
        monday = dt.toordinal() - dt.weekday()
        day = datetime.fromordinal(monday).replace(tzinfo=UTC)
        return int(day.timestamp() * 1000)
    if timeframe == "1d":
        return int(dt.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
    if timeframe.endswith("h"):
        hours = int(timeframe[:-1])
        # Hour buckets of N hours are aligned to the epoch; days are multiples of 2, 4, 6, 12 h.
        start = dt.replace(hour=dt.hour - dt.hour % hours, minute=0, second=0, microsecond=0)
        return int(start.timestamp() * 1000)
    minutes = int(timeframe[:-1])
    minute_of_day = dt.hour * 60 + dt.minute
    start_min = minute_of_day - minute_of_day % minutes
    start = dt.replace(hour=start_min // 60, minute=start_min % 60, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


def naive_resample(bars: list[list[float]], timeframe: str) -> list[list[float]]:
    groups: dict[int, list[list[float]]] = {}
    for b in bars:
        groups.setdefault(naive_bucket(int(b[0]), timeframe), []).append(b)
    out = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda b: b[0])
        out.append([key, g[0][1], max(b[2] for b in g), min(b[3] for b in g), g[-1][4],
                    sum(b[5] for b in g)])
    return out


prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def minute_bars(draw: st.DrawFn) -> list[list[float]]:
    start = draw(st.integers(min_value=0, max_value=2_000_000_000)) * MINUTE_MS
    offsets = sorted(draw(st.sets(st.integers(min_value=0, max_value=30 * 24 * 60), max_size=80)))
    bars = []
    for off in offsets:
        o, c = draw(prices), draw(prices)
        hi = max(o, c) + draw(st.floats(min_value=0, max_value=10))
        lo = min(o, c) - draw(st.floats(min_value=0, max_value=min(o, c) / 2))
        bars.append([start + off * MINUTE_MS, o, hi, lo, c, draw(st.floats(0, 1e6))])
    return bars


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
@settings(max_examples=60, deadline=None)
@given(bars=minute_bars())
def test_resample_equals_naive_reference(timeframe: str, bars: list[list[float]]) -> None:
    got = resample(bars, timeframe)
    want = naive_resample(bars, timeframe)
    assert [b[0] for b in got] == [b[0] for b in want]
    for g, w in zip(got, want, strict=True):
        assert g[1:5] == w[1:5]
        assert g[5] == pytest.approx(w[5])


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
@given(ts=st.integers(min_value=0, max_value=4_000_000_000_000))
def test_bucket_start_matches_calendar(timeframe: str, ts: int) -> None:
    assert bucket_start(ts, timeframe) == naive_bucket(ts, timeframe)
    ceil = bucket_ceil(ts, timeframe)
    assert ceil >= ts and ceil - ts < TIMEFRAMES[timeframe]


def test_week_buckets_start_on_monday() -> None:
    # 2024-01-03 is a Wednesday; its week opens Monday 2024-01-01 00:00 UTC.
    wed = int(datetime(2024, 1, 3, 15, 30, tzinfo=UTC).timestamp() * 1000)
    monday = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert bucket_start(wed, "1w") == monday
    assert datetime.fromtimestamp(bucket_start(wed, "1w") / 1000, tz=UTC).weekday() == 0


def test_empty_buckets_have_no_bar() -> None:
    bars: list[list[float]] = [[0, 1, 2, 0.5, 1.5, 10], [3 * 3600_000, 2, 3, 1, 2, 5]]
    assert [b[0] for b in resample(bars, "1h")] == [0, 3 * 3600_000]
