"""The ``sim`` market: a deterministic simulated market that needs no network or keys.

The 1m bar of a symbol at minute ``m`` is a pure function of (seed, symbol, m): any range is
reproducible and gap-free from ``HISTORY_START_MS`` (the market's opening, like a listing date)
to the current minute. The price path is a sum of slow waves plus hashed noise, and each bar
closes where the next one opens. The bar of the current minute forms with the wall clock and equals
the closed bar once its minute is over. Like Binance, one call returns at most 1000 bars.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import struct
from typing import Any, ClassVar

from core.errors import PluginFeatureNotSupportedError, UnknownSymbol
from core.timeframes import (
    HOUR_MS,
    MINUTE_MS,
    TIMEFRAMES,
    Bar,
    bucket_ceil,
    bucket_start,
    now_ms,
    resample,
)
from plugins.base import Capabilities, MarketPlugin, ProviderInfo, SymbolMeta, Ticker

#: symbol -> (base price, base volume)
SYMBOLS: dict[str, tuple[float, float]] = {
    "SIM/USD": (100.0, 50.0),
    "SIMA/USD": (2500.0, 8.0),
    "SIMB/EUR": (0.5, 40_000.0),
    "SIMC/USD": (42_000.0, 1.5),
}
#: The sim market opened at 2023-01-01 00:00 UTC (like an exchange's listing date): no bars before.
#: It bounds the minutes a query reaching back decades makes the sim compute.
HISTORY_START_MS = 1_672_531_200_000
#: Prices and volumes are rounded to this many decimals (the symbol's tick, for UDF's pricescale).
PRICE_DECIMALS = 6
#: Pages spanning more minutes than this are computed on a worker thread (~7 µs a minute).
THREAD_MINUTES = 5_000
CAPABILITIES = Capabilities(
    max_bars_per_call=1000, timeframes=tuple(TIMEFRAMES), min_poll_interval=1.0, continuous=True,
    normalized=True,
)


def _unit(seed: int, symbol: str, minute: int, salt: str) -> float:
    """A hashed number in [0, 1) for (seed, symbol, minute, salt)."""
    digest = hashlib.blake2b(f"{seed}:{symbol}:{minute}:{salt}".encode(), digest_size=8).digest()
    return float(struct.unpack("<Q", digest)[0] >> 11) / float(1 << 53)


_SCALE = 1.0 / float(1 << 53)
_UNPACK3 = struct.Struct("<QQQ").unpack


def _units(seed: int, symbol: str, minute: int) -> tuple[float, float, float]:
    """A minute's three hashed numbers in [0, 1): (noise, wick, volume), from one digest."""
    digest = hashlib.blake2b(f"{seed}:{symbol}:{minute}".encode(), digest_size=24).digest()
    n, w, v = struct.unpack("<QQQ", digest)
    return (n >> 11) * _SCALE, (w >> 11) * _SCALE, (v >> 11) * _SCALE


def _price(seed: int, symbol: str, t_min: float) -> float:
    """Price at (fractional) minute ``t_min``: slow waves, plus noise fixed at whole minutes."""
    base = SYMBOLS[symbol][0]
    phase = _unit(seed, symbol, 0, "phase") * 2 * math.pi
    wave = 0.04 * math.sin(t_min / 1440.0 * 2 * math.pi + phase) + 0.015 * math.sin(
        t_min / 97.0 * 2 * math.pi
    )
    m = math.floor(t_min)
    frac = t_min - m
    n0 = _units(seed, symbol, m)[0] - 0.5
    n1 = _units(seed, symbol, m + 1)[0] - 0.5
    noise = 0.004 * (n0 + (n1 - n0) * frac)
    return round(base * (1 + wave + noise), PRICE_DECIMALS)


def round6(x: float) -> float:
    """``round(x, 6)`` exactly, for ``0 <= x < 2**53 / 1e6``, in about half its time (``round``
    with digits goes through a decimal string). ``y = x * 1e6`` is within half an ulp of the exact
    product, so when ``y`` is further than that from a half the nearest integer of the exact
    product is ``floor(y)`` or the next, and dividing it by ``1e6`` gives the double nearest to
    that decimal, as ``round`` does; at (or next to) a half ``round`` itself decides."""
    y = x * 1e6
    f = math.floor(y)
    d = y - f - 0.5
    return (f + (d > 0)) / 1e6 if d > 4e-16 * y or d < -4e-16 * y else round(x, 6)


def _whole_minute_price(seed: int, symbol: str, m: int, phase: float, noise_unit: float) -> float:
    """``_price`` at a whole minute, given that minute's noise unit (no hashing here)."""
    wave = 0.04 * math.sin(m / 1440.0 * 2 * math.pi + phase) + 0.015 * math.sin(m / 97.0 * 2 * math.pi)
    return round6(SYMBOLS[symbol][0] * (1 + wave + 0.004 * (noise_unit - 0.5)))


def closed_bars(seed: int, symbol: str, first: int, stop: int) -> list[Bar]:
    """``sim_bar`` of every minute opening in ``[first, stop)`` (closed minutes): the same values,
    with one hash per minute (each minute's close is the next one's open). Backfills spend their
    time here, so ``_units``, ``_whole_minute_price`` and ``round6`` are inlined (the same
    operations in the same order: the same floats) and the hash state of the ``"seed:symbol:"``
    prefix is computed once."""
    assert PRICE_DECIMALS == 6  # round6
    phase = _unit(seed, symbol, 0, "phase") * 2 * math.pi
    base, base_vol = SYMBOLS[symbol]
    prefix = hashlib.blake2b(f"{seed}:{symbol}:".encode(), digest_size=24)
    unpack, sin, pi, scale, floor = _UNPACK3, math.sin, math.pi, _SCALE, math.floor
    out: list[Bar] = []
    append = out.append
    m0 = -(-first // MINUTE_MS)
    units = _units(seed, symbol, m0)
    o = _whole_minute_price(seed, symbol, m0, phase, units[0])
    w, v = units[1], units[2]
    for m in range(m0, -(-stop // MINUTE_MS)):
        k = m + 1
        h = prefix.copy()
        h.update(b"%d" % k)
        n2, w2, v2 = unpack(h.digest())
        # k / 720.0 and k / 48.5 are exactly k / 1440.0 * 2 and k / 97.0 * 2 (doubling is exact).
        x = base * (1 + (0.04 * sin(k / 720.0 * pi + phase) + 0.015 * sin(k / 48.5 * pi))
                    + 0.004 * ((n2 >> 11) * scale - 0.5))
        y = x * 1e6
        d = y - (f := floor(y)) - 0.5
        c = (f + 1) / 1e6 if d > 4e-16 * y else f / 1e6 if d < -4e-16 * y else round(x, 6)
        wick = 0.002 * w
        x = (o if o >= c else c) * (1 + wick)  # the high
        y = x * 1e6
        d = y - (f := floor(y)) - 0.5
        hi = (f + 1) / 1e6 if d > 4e-16 * y else f / 1e6 if d < -4e-16 * y else round(x, 6)
        x = (c if o >= c else o) * (1 - wick)  # the low
        y = x * 1e6
        d = y - (f := floor(y)) - 0.5
        lo = (f + 1) / 1e6 if d > 4e-16 * y else f / 1e6 if d < -4e-16 * y else round(x, 6)
        x = base_vol * (0.5 + v)
        y = x * 1e6
        d = y - (f := floor(y)) - 0.5
        append([m * MINUTE_MS, o, hi, lo, c,
                (f + 1) / 1e6 if d > 4e-16 * y else f / 1e6 if d < -4e-16 * y else round(x, 6)])
        o, w, v = c, (w2 >> 11) * scale, (v2 >> 11) * scale
    return out


@functools.lru_cache(maxsize=150_000)  # ~4 symbols x 4 years of hours, ~25 MB at most
def _hour_bar(seed: int, symbol: str, hour_ms: int) -> tuple[float, ...]:
    """The closed 1h bar opening at ``hour_ms``: the aggregate of its 60 ``closed_bars``."""
    return tuple(resample(closed_bars(seed, symbol, hour_ms, hour_ms + HOUR_MS), "1h")[0])


def sim_bar(seed: int, symbol: str, ts: int, at_ms: int | None = None) -> Bar:
    """The 1m bar opening at ``ts``; when ``at_ms`` falls inside its minute, the forming bar."""
    m = ts // MINUTE_MS
    frac = 1.0 if at_ms is None else min(1.0, max(0.0, (at_ms - ts) / MINUTE_MS))
    o = _price(seed, symbol, m)
    c = _price(seed, symbol, m + frac)
    _, w, v = _units(seed, symbol, m)
    wick = 0.002 * w * frac
    vol = SYMBOLS[symbol][1] * (0.5 + v) * frac
    return [ts, o, round(max(o, c) * (1 + wick), PRICE_DECIMALS), round(min(o, c) * (1 - wick), PRICE_DECIMALS),
            c, round(vol, PRICE_DECIMALS)]


class SimPlugin(MarketPlugin):
    plugin_key: ClassVar[str] = "sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("sim",)
    accepts_credentials: ClassVar[bool] = False

    def __init__(self, provider_id: str, **kwargs: Any) -> None:
        super().__init__(provider_id, **kwargs)
        self.seed = int(self.options.get("SIM_SEED", 42))
        #: Upstream calls made, by method (tests count them).
        self.calls: dict[str, int] = {}

    @classmethod
    def list_configurable_providers(cls, config: dict[str, Any]) -> list[ProviderInfo]:
        return [ProviderInfo("sim", False, True, list(TIMEFRAMES))]

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in SYMBOLS:
            raise UnknownSymbol(f"unknown symbol {symbol!r} for provider sim",
                                details={"symbol": ["unknown on sim"]})  # as crypto and alpaca say

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        """Whole buckets of ``timeframe`` from the first at or after ``since`` (from the bucket
        holding ``HISTORY_START_MS`` when ``since`` is older, like an exchange's first page)."""
        self._count("fetch_ohlcv")
        self._check_symbol(symbol)
        if timeframe not in TIMEFRAMES:
            raise PluginFeatureNotSupportedError(f"timeframe {timeframe} not supported")
        now = now_ms()
        size = TIMEFRAMES[timeframe]
        limit = min(limit, CAPABILITIES.max_bars_per_call)
        first = max(bucket_ceil(since, timeframe), bucket_start(HISTORY_START_MS, timeframe))
        stop = min(now + 1, until if until is not None else now + 1, first + limit * size)
        first = max(first, HISTORY_START_MS)
        if stop - first > THREAD_MINUTES * MINUTE_MS:
            # A coarse page is up to 1000 buckets of minutes: compute it off the event loop.
            return await asyncio.to_thread(self._bars, symbol, timeframe, first, stop, now, limit)
        return self._bars(symbol, timeframe, first, stop, now, limit)

    def _bars(self, symbol: str, timeframe: str, first: int, stop: int, now: int, limit: int) -> list[Bar]:
        forming = now // MINUTE_MS * MINUTE_MS
        closed_end = min(stop, forming)
        if TIMEFRAMES[timeframe] >= HOUR_MS and first % HOUR_MS == 0 and closed_end - first >= HOUR_MS:
            # Coarse pages: whole closed hours come from a memo (each hour's 60 minutes are
            # hashed once per process), the minutes of the last, unfinished hour are computed.
            hours_end = closed_end // HOUR_MS * HOUR_MS
            hours = [list(_hour_bar(self.seed, symbol, h)) for h in range(first, hours_end, HOUR_MS)]
            bars = hours + closed_bars(self.seed, symbol, hours_end, closed_end)
        else:
            bars = closed_bars(self.seed, symbol, first, closed_end)
        if first <= forming < stop:
            bars.append(sim_bar(self.seed, symbol, forming, now))
        # 1m bars come out of closed_bars / sim_bar as [int, float x 5] already: no copy.
        return (bars if timeframe == "1m" else resample(bars, timeframe))[:limit]

    def listing_ms(self, symbol: str) -> int | None:
        """Every sim symbol lists at the market's opening, ``HISTORY_START_MS``."""
        return HISTORY_START_MS if symbol in SYMBOLS else None

    async def fetch_symbols(self) -> list[str]:
        self._count("fetch_symbols")
        return sorted(SYMBOLS)

    async def symbol_meta(self, symbol: str) -> SymbolMeta:
        """Sim prices and volumes are rounded to 6 decimals (``PRICE_DECIMALS``)."""
        self._check_symbol(symbol)
        step = 10.0 ** -PRICE_DECIMALS
        return SymbolMeta(price_tick=step, volume_tick=step, description=f"{symbol} (simulated)")

    async def fetch_ticker(self, symbol: str) -> Ticker:
        self._count("fetch_ticker")
        self._check_symbol(symbol)
        now = now_ms()
        last = _price(self.seed, symbol, now / MINUTE_MS)
        spread = last * 0.0001
        return Ticker(now, last, round(last - spread, PRICE_DECIMALS), round(last + spread, PRICE_DECIMALS))
