"""Alpaca's wire formats: RFC-3339 timestamps and bar/number fields, parsed strictly (a value of
the wrong type raises ``ValueError``, which the plugin reports as a malformed response)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from core.timeframes import Bar, bucket_start

_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def rfc3339(ms: int) -> str:
    """Whole-second RFC-3339 UTC timestamp of ``ms`` (rounded down)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(raw: Any) -> int:
    """Milliseconds of an Alpaca RFC-3339 timestamp (nanosecond fractions allowed)."""
    if not isinstance(raw, str):
        raise ValueError(f"timestamp is {type(raw).__name__}")
    dt = datetime.fromisoformat(_FRACTION.sub(r"\1", raw.replace("Z", "+00:00")))
    if dt.tzinfo is None:
        raise ValueError("timestamp without a zone")
    return int(dt.timestamp() * 1000)


def num(x: Any) -> float:
    """``x`` as a float; a bool or a non-number raises ``ValueError``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"not a number: {x!r}")
    return float(x)


def parse_bar(raw: Any, timeframe: str) -> Bar:
    """``{"t", "o", "h", "l", "c", "v"}`` to ``[ts, o, h, l, c, v]`` in our UTC bucket."""
    if not isinstance(raw, dict):
        raise ValueError("bar is not an object")
    ts = bucket_start(parse_ts(raw.get("t")), timeframe)
    return [ts, *(num(raw.get(k)) for k in ("o", "h", "l", "c", "v"))]


def positive(x: Any) -> float | None:
    """Alpaca reports an empty book side as 0."""
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and x > 0 else None
