"""Kline updates of CCXT Pro streams, checked at our boundary.

CCXT Pro parses every frame itself; we see only what ``watch_ohlcv`` returns: rows of
``[ts, o, h, l, c, v]``. ``checked_row`` turns one into a ``Bar`` or raises ``ValueError``; the
caller counts a row that does not parse as malformed (``stream_malformed_frames_total``) and
skips it, so it never reaches a client.

What CCXT's public API does not give us, and what we do without:

- The raw frames. Binance's carry ``x`` (the bar is closed) and ``E`` (the event time); CCXT's
  unified candle has neither (https://github.com/ccxt/ccxt/issues/21885). So a bar counts as
  closed once a later one arrives, for every exchange, and the event time is unknown (``None``).
- A hook for frames that are not JSON. CCXT Pro's client decodes a text frame that starts like
  JSON with no ``try`` and the error escapes its receive loop: the connection stays open but deaf.
  We cannot count such frames; the stream goes silent, and the feed's silence check closes the
  provider's connections through ``close()`` (``KlineStreams.reset_silent``) and dials anew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.timeframes import Bar


@dataclass(frozen=True)
class KlineUpdate:
    """One kline event: the bar, closed per the exchange, and its event time (ms) if known."""

    bar: Bar
    closed: bool
    event_ms: int | None


def finite(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"not a number: {raw!r:.40}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {raw!r:.40}")
    return value


def checked_row(row: Any) -> Bar:
    """One candle of CCXT's ``watch_ohlcv`` as a bar: an integer open time and five finite
    numbers (a missing volume is 0, as over REST); raises ``ValueError`` for anything else (a
    frame CCXT parsed into ``None``s)."""
    if not isinstance(row, list | tuple) or len(row) < 6:
        raise ValueError(f"not a candle: {row!r:.80}")
    ts = row[0]
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ValueError(f"candle without an open time: {row!r:.80}")
    volume = 0.0 if row[5] is None else finite(row[5])
    return [ts, *(finite(v) for v in row[1:5]), volume]
