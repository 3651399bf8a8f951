"""Assertion helpers shared by the provider tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import aiohttp
import pytest

from core.timeframes import tf_ms


def assert_same_bars(
    got: Sequence[Sequence[float]], want: Sequence[Sequence[float]], rel: float = 1e-9
) -> None:
    """Same timestamps and prices; volumes equal up to float summation order."""
    assert [int(b[0]) for b in got] == [int(b[0]) for b in want]
    for g, w in zip(got, want, strict=True):
        assert [float(x) for x in g[1:5]] == [float(x) for x in w[1:5]], (g, w)
        assert math.isclose(float(g[5]), float(w[5]), rel_tol=rel, abs_tol=1e-9), (g, w)


def as_bars(rows: Sequence[Sequence[object]]) -> list[list[float]]:
    """Binance kline rows (strings) as float bars ``[ts, o, h, l, c, v]``."""
    return [[float(int(str(r[0]))), *(float(str(x)) for x in r[1:6])] for r in rows]


async def fetch_klines(base_url: str, interval: str, start: int, end: int,
                       symbol: str = "BTCUSDT") -> list[list[float]]:
    """The emulator's own klines of [start, end), paged over its HTTP API without CCXT."""
    out: list[list[float]] = []
    async with aiohttp.ClientSession() as http:
        while start < end:
            params = {"symbol": symbol, "interval": interval, "startTime": str(start),
                      "endTime": str(end - 1), "limit": "1000"}
            async with http.get(base_url + "/api/v3/klines", params=params) as resp:
                rows = await resp.json()
            if not rows:
                break
            out += as_bars(rows)
            start = int(rows[-1][0]) + tf_ms(interval)
    return out



#: Module mark: a leaked aiohttp session/connector (``Unclosed ...`` from ``__del__``) fails the
#: test instead of printing a warning.
NO_LEAKS = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
