"""Assertion helpers shared by the provider tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest


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



#: Module mark: a leaked aiohttp session/connector (``Unclosed ...`` from ``__del__``) fails the
#: test instead of printing a warning.
NO_LEAKS = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
