"""Deterministic candles for the exchange emulator.

A 1m candle is a pure function of ``(symbol, minute open time)``: a smooth price curve plus a
hash-derived jitter, so the same request always answers the same numbers, and the close of one
minute is the open of the next. Higher intervals are aggregated here from those 1m candles,
deliberately without ``core.timeframes`` so that tests compare our resampling against an
independent implementation: buckets are aligned to the UNIX epoch in UTC, ``1d`` to UTC midnight
and ``1w`` to Monday 00:00 UTC (as Binance does).

Stocks trade only in a simplified US session: weekdays 14:30-21:00 UTC (no holidays, no DST
shift), so there are no stock candles at night or on weekends. A maintenance window removes every
1m candle in ``[start, end)``; aggregated buckets are built from the minutes that remain. A revision
(``CandleBook.revise``) replaces one 1m candle, as an exchange correcting a closed bar does; every
interval aggregated over it follows.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator
from functools import lru_cache

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
WEEK = 7 * DAY
#: 1970-01-01 was a Thursday; Monday 1970-01-05 is the origin of week buckets.
WEEK_ORIGIN = 4 * DAY
SESSION_OPEN = 14 * HOUR + 30 * MIN
SESSION_CLOSE = 21 * HOUR
_MASK = (1 << 64) - 1

#: Candle tuple: (open time ms, open, high, low, close, volume)
Candle = tuple[int, float, float, float, float, float]


def interval_ms(minutes: int) -> int:
    return minutes * MIN


def bucket_of(ts: int, size: int) -> int:
    """Open time of the bucket of ``size`` ms containing ``ts`` (weeks start on Monday)."""
    origin = WEEK_ORIGIN if size == WEEK else 0
    return (ts - origin) // size * size + origin


def in_session(ts: int) -> bool:
    """True when minute ``ts`` lies in the simplified US stock session (Mon-Fri 14:30-21:00 UTC)."""
    weekday = (ts // DAY + 3) % 7  # 0 = Monday
    return weekday < 5 and SESSION_OPEN <= ts % DAY < SESSION_CLOSE


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@lru_cache(maxsize=256)
def _profile(symbol: str) -> tuple[int, float, float, int]:
    """(seed, base price, base volume, decimals) of a symbol, derived from its name."""
    seed = zlib.crc32(symbol.encode())
    known = {"BTC": 40_000.0, "ETH": 2_500.0, "SOL": 100.0, "BNB": 300.0, "AAPL": 180.0,
             "MSFT": 380.0, "SPY": 450.0, "TSLA": 220.0, "NVDA": 480.0}
    base = next((v for k, v in known.items() if symbol.startswith(k)), 10.0 + seed % 500)
    if symbol.endswith("BTC") and not symbol.startswith("BTC"):
        base /= 40_000.0
    decimals = 2 if base >= 1 else 6
    return seed, base, 1000.0 / math.sqrt(base) + 1.0, decimals


def _price(seed: int, base: float, minute: int) -> float:
    """The price curve at the open of minute index ``minute``."""
    jitter = (_mix(seed ^ (minute * 2654435761)) >> 11) / float(1 << 53) - 0.5
    wave = 0.04 * math.sin(minute / 1440.0 + seed % 7) + 0.015 * math.sin(minute / 97.0)
    return base * (1.0 + wave + 0.002 * jitter)


def _candle(seed: int, base: float, volume: float, decimals: int, minute: int, o: float,
            c: float) -> Candle:
    """The 1m candle of minute index ``minute`` given its rounded open and close."""
    h_bits = _mix(seed + minute * 0x632BE59BD9B4E019)
    wick_up = (h_bits & 0xFFFF) / 65535.0 * 0.0015
    wick_down = ((h_bits >> 16) & 0xFFFF) / 65535.0 * 0.0015
    vol_f = 0.2 + ((h_bits >> 32) & 0xFFFF) / 65535.0
    h = round(max(o, c) * (1 + wick_up), decimals)
    low = round(min(o, c) * (1 - wick_down), decimals)
    return minute * MIN, o, h, low, c, round(volume * vol_f, 2)


def minute_candle(symbol: str, ts: int) -> Candle:
    """The 1m candle of ``symbol`` opening at ``ts`` (a multiple of 60 000)."""
    seed, base, volume, decimals = _profile(symbol)
    minute = ts // MIN
    o = round(_price(seed, base, minute), decimals)
    c = round(_price(seed, base, minute + 1), decimals)
    return _candle(seed, base, volume, decimals, minute, o, c)


def _merge(parts: list[Candle], start: int) -> Candle | None:
    if not parts:
        return None
    return (start, parts[0][1], max(p[2] for p in parts), min(p[3] for p in parts), parts[-1][4],
            round(sum(p[5] for p in parts), 8))


@lru_cache(maxsize=65_536)
def _closed_hour(symbol: str, stock: bool, hour: int) -> Candle | None:
    """The aggregated hour ``hour`` (a closed one, no maintenance) of the pure series; the same
    numbers as ``minute_candle``, with each price point computed once."""
    seed, base, volume, decimals = _profile(symbol)
    first = hour // MIN
    prices = [round(_price(seed, base, m), decimals) for m in range(first, first + 61)]
    mins = [_candle(seed, base, volume, decimals, first + i, prices[i], prices[i + 1])
            for i in range(60) if not stock or in_session((first + i) * MIN)]
    return _merge(mins, hour)


class CandleBook:
    """Candles of one emulator instance: the pure series minus maintenance windows, up to now."""

    def __init__(self, history_start_ms: int) -> None:
        self.history_start_ms = history_start_ms
        self.maintenance: list[tuple[int, int]] = []
        #: Frozen "now" in ms for deterministic tests; None follows the wall clock.
        self.now_ms: int | None = None
        #: Revised 1m candles: (symbol, open time) -> candle; the hours holding them.
        self.revised: dict[tuple[str, int], Candle] = {}
        self._revised_hours: set[tuple[str, int]] = set()

    def revise(self, symbol: str, ts: int, **values: float) -> Candle:
        """Replace the 1m candle of ``symbol`` at ``ts`` (a minute open time) with other values.

        ``values`` may name ``open``, ``high``, ``low``, ``close``, ``volume``; with none given the
        close moves up 0.1 % (the high follows) and the volume grows by half. Returns the new
        candle; REST answers and aggregates over it change from now on."""
        if ts % MIN:
            raise ValueError("ts must be a minute open time")
        unknown = set(values) - {"open", "high", "low", "close", "volume"}
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        _, o, h, low, c, v = self.revised.get((symbol, ts)) or minute_candle(symbol, ts)
        if not values:
            values = {"close": round(c * 1.001, 8), "volume": round(v * 1.5, 8)}
        o, c = float(values.get("open", o)), float(values.get("close", c))
        h = float(values.get("high", max(h, o, c)))
        low = float(values.get("low", min(low, o, c)))
        candle: Candle = (ts, o, h, low, c, float(values.get("volume", v)))
        if not low <= min(o, c) <= max(o, c) <= h or candle[5] < 0:
            raise ValueError("need low <= open, close <= high and volume >= 0")
        self.revised[(symbol, ts)] = candle
        self._revised_hours.add((symbol, ts - ts % HOUR))
        return candle

    def clear_revisions(self) -> None:
        self.revised.clear()
        self._revised_hours.clear()

    def minute(self, symbol: str, ts: int) -> Candle:
        """The 1m candle at ``ts``, revised or pure (maintenance and session not applied)."""
        return self.revised.get((symbol, ts)) or minute_candle(symbol, ts)

    def now(self) -> int:
        return self.now_ms if self.now_ms is not None else int(time.time() * 1000)

    def _in_maintenance(self, start: int, end: int) -> bool:
        return any(a < end and start < b for a, b in self.maintenance)

    def _minutes(self, symbol: str, stock: bool, start: int, end: int) -> list[Candle]:
        return [self.minute(symbol, t) for t in range(start, end, MIN)
                if (not stock or in_session(t)) and not self._in_maintenance(t, t + MIN)]

    def _hour(self, symbol: str, stock: bool, hour: int, now: int) -> Candle | None:
        if (hour + HOUR <= now and not self._in_maintenance(hour, hour + HOUR)
                and (symbol, hour) not in self._revised_hours):
            return _closed_hour(symbol, stock, hour)
        return _merge(self._minutes(symbol, stock, hour, min(hour + HOUR, now + 1)), hour)

    def bucket(self, symbol: str, stock: bool, size: int, start: int) -> Candle | None:
        """The candle of the bucket of ``size`` ms opening at ``start``, or None when it is empty."""
        now = self.now()
        end = min(start + size, bucket_of(now, MIN) + MIN, start + size)
        lo = max(start, self.history_start_ms)
        if lo >= end:
            return None
        if size < HOUR or size % HOUR or lo % HOUR:
            return _merge(self._minutes(symbol, stock, lo, end), start)
        hours = [self._hour(symbol, stock, h, now) for h in range(lo, end, HOUR)]
        return _merge([c for c in hours if c is not None], start)

    def candles(
        self, symbol: str, stock: bool, size: int, start: int | None, end: int | None, limit: int
    ) -> list[Candle]:
        """Up to ``limit`` candles with ``start <= open time <= end`` (both optional, like Binance):
        from ``start`` forward, or the latest ones up to ``end`` (or now) when only that is given."""
        now = self.now()
        last = bucket_of(min(end, now) if end is not None else now, size)
        if start is None:
            out: list[Candle] = []
            first = bucket_of(self.history_start_ms, size)
            b = last
            while b >= first and len(out) < limit:
                c = self.bucket(symbol, stock, size, b)
                if c is not None:
                    out.append(c)
                b -= size
            return out[::-1]
        return list(self._forward(symbol, stock, size, start, last, limit))

    def _forward(
        self, symbol: str, stock: bool, size: int, start: int, last: int, limit: int
    ) -> Iterator[Candle]:
        b = bucket_of(max(start, self.history_start_ms), size)
        if b < start:
            b += size
        count = 0
        while b <= last and count < limit:
            if stock and size < DAY and self._skip_closed(b, size):
                b = self._next_session(b, size)
                continue
            c = self.bucket(symbol, stock, size, b)
            if c is not None:
                count += 1
                yield c
            b += size

    @staticmethod
    def _skip_closed(b: int, size: int) -> bool:
        """True when the intraday bucket at ``b`` lies wholly outside the stock session."""
        day = b - b % DAY
        return b + size <= day + SESSION_OPEN or b >= day + SESSION_CLOSE or not in_session(
            day + SESSION_OPEN)

    @staticmethod
    def _next_session(b: int, size: int) -> int:
        """The first bucket start after ``b`` that may overlap a session."""
        day = b - b % DAY
        target = day + SESSION_OPEN if b < day + SESSION_OPEN else day + DAY + SESSION_OPEN
        while not in_session(target):
            target += DAY
        nb = bucket_of(target, size)
        return nb if nb > b else b + size
