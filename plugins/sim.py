"""The ``sim`` market: a deterministic simulated market that needs no network or keys.

The 1m bar of a symbol at minute ``m`` is a pure function of (seed, symbol, m): any range is
reproducible and gap-free from ``HISTORY_START_MS`` (the market's opening, like a listing date)
to the current minute, and computed offline. It looks like a market at every scale:

- a trend: the log price is a sum of value-noise octaves (hashed levels every 240, 60, 15 and 4
  days, joined smoothly), so it drifts up and down for weeks and months without repeating;
- volatility regimes: a volatility factor (value noise over 5 and 30 days, plus a daily cycle)
  scales the intraday octaves (1 day, 4 hours), the minutes' hashed noise and the wicks;
- volume follows volatility and the size of each bar's move.

The slow part (trend and volatility) is evaluated on an hourly grid and interpolated linearly
in between, so a minute costs one hash; each bar closes where the next one opens. Prices are
rounded to the symbol's price step (``DECIMALS``), volumes to its volume step. The bar of the
current minute forms with the wall clock and equals the closed bar once its minute is over. Like
Binance, one call returns at most 1000 bars.
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
from plugins.base import Capabilities, MarketPlugin, PluginSettings, ProviderInfo, SymbolMeta, Ticker

#: symbol -> (base price, base volume)
SYMBOLS: dict[str, tuple[float, float]] = {
    "SIM/USD": (100.0, 50.0),
    "SIMA/USD": (2500.0, 8.0),
    "SIMB/EUR": (0.5, 40_000.0),
    "SIMC/USD": (42_000.0, 1.5),
}
#: symbol -> (price decimals, volume decimals): its price step (UDF's pricescale) and volume step.
DECIMALS: dict[str, tuple[int, int]] = {
    "SIM/USD": (2, 3),
    "SIMA/USD": (2, 4),
    "SIMB/EUR": (4, 1),
    "SIMC/USD": (1, 5),
}
#: The sim market opened at 2023-01-01 00:00 UTC (like an exchange's listing date): no bars before.
#: It bounds the minutes a query reaching back decades makes the sim compute.
HISTORY_START_MS = 1_672_531_200_000
#: Pages spanning more minutes than this are computed on a worker thread (~4 µs a minute).
THREAD_MINUTES = 5_000
CAPABILITIES = Capabilities(
    max_bars_per_call=1000, timeframes=tuple(TIMEFRAMES), min_poll_interval=1.0, continuous=True,
    normalized=True,
)
#: (span in minutes, amplitude in log price) of the trend's octaves: 240, 60, 15 and 4 days.
TREND = ((345_600, 0.9), (86_400, 0.35), (21_600, 0.14), (5_760, 0.06))
#: The intraday octaves (1 day, 4 hours), scaled by the volatility factor.
SWING = ((1_440, 0.03), (240, 0.012))
#: Volatility: exp(sum of amplitude x value noise) over 5 and 30 days (about 0.35x to 2.9x),
#: times a daily cycle (busier in the afternoon, UTC).
VOLATILITY = ((7_200, 1.3), (43_200, 0.9))
DAY_CYCLE = 0.25
#: The grid of the slow part, in minutes (an hour: 4-hour swings stay smooth).
GRID = 60
#: A minute's own noise (times volatility), its wicks, and how much volume a bar's move adds.
NOISE = 0.003
WICK = 0.0015
MOVE_VOLUME = 60.0

_SCALE = 1.0 / float(1 << 53)
_UNPACK3 = struct.Struct("<QQQ").unpack


def _unit(seed: int, symbol: str, minute: int, salt: str) -> float:
    """A hashed number in [0, 1) for (seed, symbol, minute, salt)."""
    digest = hashlib.blake2b(f"{seed}:{symbol}:{minute}:{salt}".encode(), digest_size=8).digest()
    return float(struct.unpack("<Q", digest)[0] >> 11) / float(1 << 53)


def _units(seed: int, symbol: str, minute: int) -> tuple[float, float, float]:
    """A minute's three hashed numbers in [0, 1): (noise, wick, volume), from one digest."""
    digest = hashlib.blake2b(f"{seed}:{symbol}:{minute}".encode(), digest_size=24).digest()
    n, w, v = struct.unpack("<QQQ", digest)
    return (n >> 11) * _SCALE, (w >> 11) * _SCALE, (v >> 11) * _SCALE


@functools.lru_cache(maxsize=4096)
def _knot(seed: int, symbol: str, span: int, k: int) -> float:
    """The hashed level in [-0.5, 0.5) of value noise with knots every ``span`` minutes, at knot k."""
    return _unit(seed, symbol, k, f"knot{span}") - 0.5


def _noise(seed: int, symbol: str, span: int, m: int) -> float:
    """Value noise at whole minute ``m``: knots joined by a smoothstep (no kinks, no period)."""
    k = m // span
    f = (m - k * span) / span
    a = _knot(seed, symbol, span, k)
    return a + (_knot(seed, symbol, span, k + 1) - a) * (f * f * (3.0 - 2.0 * f))


@functools.lru_cache(maxsize=8192)
def _slow(seed: int, symbol: str, g: int) -> tuple[float, float]:
    """(log level relative to the base price, volatility factor) at grid minute ``g``."""
    vol = math.exp(sum(amp * _noise(seed, symbol, span, g) for span, amp in VOLATILITY)
                   + DAY_CYCLE * math.sin((g % 1440 - 840) / 1440.0 * 2 * math.pi + math.pi / 2))
    trend = sum(amp * _noise(seed, symbol, span, g) for span, amp in TREND)
    swing = sum(amp * _noise(seed, symbol, span, g) for span, amp in SWING)
    return trend + vol * swing, vol


def _round(x: float, scale: float, decimals: int) -> float:
    """``round(x, decimals)`` exactly, for ``0 <= x * scale < 2**53`` (``scale = 10.0 ** decimals``),
    in about half its time (``round`` with digits goes through a decimal string). ``y = x * scale``
    is within half an ulp of the exact product, so when ``y`` is further than that from a half
    the nearest integer of the exact product is ``floor(y)`` or the next, and dividing it by
    ``scale`` gives the double nearest to that decimal, as ``round`` does; at (or next to) a half
    ``round`` itself decides."""
    y = x * scale
    f = math.floor(y)
    d = y - f - 0.5
    return (f + (d > 0)) / scale if d > 4e-16 * y or d < -4e-16 * y else round(x, decimals)


def round6(x: float) -> float:
    """``round(x, 6)`` exactly (see ``_round``)."""
    return _round(x, 1e6, 6)


def _level(seed: int, symbol: str, t_min: float) -> tuple[float, float]:
    """(unrounded price, volatility) at (fractional) minute ``t_min``; the minute noise is fixed
    at whole minutes and interpolated in between, like the slow part on its grid."""
    m = math.floor(t_min)
    g = m - m % GRID
    s0, v0 = _slow(seed, symbol, g)
    s1, v1 = _slow(seed, symbol, g + GRID)
    j = t_min - g
    vol = v0 + (v1 - v0) / GRID * j
    n0 = _units(seed, symbol, m)[0] - 0.5
    n1 = _units(seed, symbol, m + 1)[0] - 0.5
    noise = n0 + (n1 - n0) * (t_min - m)
    return SYMBOLS[symbol][0] * math.exp(s0 + (s1 - s0) / GRID * j + NOISE * vol * noise), vol


def _price(seed: int, symbol: str, t_min: float) -> float:
    """Price at (fractional) minute ``t_min``, rounded to the symbol's price step."""
    decimals = DECIMALS[symbol][0]
    return _round(_level(seed, symbol, t_min)[0], 10.0 ** decimals, decimals)


def closed_bars(seed: int, symbol: str, first: int, stop: int) -> list[Bar]:
    """``sim_bar`` of every minute opening in ``[first, stop)`` (closed minutes): the same values,
    with one hash per minute (each minute's close is the next one's open). Backfills spend their
    time here, so ``_level`` and ``_round`` are inlined (the same operations in the same order:
    the same floats), the slow part is taken once per grid step, and the hash state of the
    ``"seed:symbol:"`` prefix is computed once."""
    base, base_vol = SYMBOLS[symbol]
    pdec, vdec = DECIMALS[symbol]
    pscale, vscale = 10.0 ** pdec, 10.0 ** vdec
    prefix = hashlib.blake2b(f"{seed}:{symbol}:".encode(), digest_size=24)
    unpack, exp, scale, floor, slow = _UNPACK3, math.exp, _SCALE, math.floor, _slow
    noise_amp, wick_amp, move = NOISE, WICK, MOVE_VOLUME
    out: list[Bar] = []
    append = out.append
    m0 = -(-first // MINUTE_MS)
    units = _units(seed, symbol, m0)
    o = _price(seed, symbol, m0)
    w, v = units[1], units[2]
    j = m0 % GRID
    g = m0 - j
    s0, v0 = slow(seed, symbol, g)
    s1, v1 = slow(seed, symbol, g + GRID)
    ds, dv = (s1 - s0) / GRID, (v1 - v0) / GRID
    vol = v0 + dv * j  # the opening minute's volatility
    for m in range(m0, -(-stop // MINUTE_MS)):
        k = m + 1
        h = prefix.copy()
        h.update(b"%d" % k)
        n2, w2, v2 = unpack(h.digest())
        j += 1
        if j == GRID:  # the next grid step
            g, j = k, 0
            s0, v0, (s1, v1) = s1, v1, slow(seed, symbol, k + GRID)
            ds, dv = (s1 - s0) / GRID, (v1 - v0) / GRID
        vol2 = v0 + dv * j
        x = base * exp(s0 + ds * j + noise_amp * vol2 * ((n2 >> 11) * scale - 0.5))
        y = x * pscale
        d = y - (f := floor(y)) - 0.5
        c = (f + 1) / pscale if d > 4e-16 * y else f / pscale if d < -4e-16 * y else round(x, pdec)
        wick = wick_amp * vol * w
        x = (o if o >= c else c) * (1 + wick)  # the high
        y = x * pscale
        d = y - (f := floor(y)) - 0.5
        hi = (f + 1) / pscale if d > 4e-16 * y else f / pscale if d < -4e-16 * y else round(x, pdec)
        x = (c if o >= c else o) * (1 - wick)  # the low
        y = x * pscale
        d = y - (f := floor(y)) - 0.5
        lo = (f + 1) / pscale if d > 4e-16 * y else f / pscale if d < -4e-16 * y else round(x, pdec)
        x = base_vol * vol * (0.5 + v) * (1 + move * (c - o if c >= o else o - c) / o)
        y = x * vscale
        d = y - (f := floor(y)) - 0.5
        append([m * MINUTE_MS, o, hi, lo, c,
                (f + 1) / vscale if d > 4e-16 * y else f / vscale if d < -4e-16 * y else round(x, vdec)])
        o, w, v, vol = c, (w2 >> 11) * scale, (v2 >> 11) * scale, vol2
    return out


@functools.lru_cache(maxsize=150_000)  # ~4 symbols x 4 years of hours, ~25 MB at most
def _hour_bar(seed: int, symbol: str, hour_ms: int) -> tuple[float, ...]:
    """The closed 1h bar opening at ``hour_ms``: the aggregate of its 60 ``closed_bars``."""
    return tuple(resample(closed_bars(seed, symbol, hour_ms, hour_ms + HOUR_MS), "1h")[0])


def sim_bar(seed: int, symbol: str, ts: int, at_ms: int | None = None) -> Bar:
    """The 1m bar opening at ``ts``; when ``at_ms`` falls inside its minute, the forming bar."""
    m = ts // MINUTE_MS
    frac = 1.0 if at_ms is None else min(1.0, max(0.0, (at_ms - ts) / MINUTE_MS))
    pdec, vdec = DECIMALS[symbol]
    pscale = 10.0 ** pdec
    raw_open, vol = _level(seed, symbol, m)
    o = _round(raw_open, pscale, pdec)
    c = _round(_level(seed, symbol, m + frac)[0], pscale, pdec)
    _, w, v = _units(seed, symbol, m)
    wick = WICK * vol * w * frac
    volume = SYMBOLS[symbol][1] * vol * (0.5 + v) * (1 + MOVE_VOLUME * abs(c - o) / o) * frac
    return [ts, o, _round(max(o, c) * (1 + wick), pscale, pdec), _round(min(o, c) * (1 - wick), pscale, pdec),
            c, _round(volume, 10.0 ** vdec, vdec)]


class SimPlugin(MarketPlugin):
    plugin_key: ClassVar[str] = "sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("sim",)
    accepts_credentials: ClassVar[bool] = False

    def __init__(self, provider_id: str, **kwargs: Any) -> None:
        super().__init__(provider_id, **kwargs)
        self.seed = self.settings.sim_seed
        #: Upstream calls made, by method (tests count them).
        self.calls: dict[str, int] = {}

    @classmethod
    def list_configurable_providers(cls, settings: PluginSettings) -> list[ProviderInfo]:
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
        """Sim prices and volumes are rounded to the symbol's steps (``DECIMALS``)."""
        self._check_symbol(symbol)
        pdec, vdec = DECIMALS[symbol]
        return SymbolMeta(price_tick=10.0 ** -pdec, volume_tick=10.0 ** -vdec, description=f"{symbol} (simulated)")

    async def fetch_ticker(self, symbol: str) -> Ticker:
        self._count("fetch_ticker")
        self._check_symbol(symbol)
        now = now_ms()
        last = _price(self.seed, symbol, now / MINUTE_MS)
        decimals = DECIMALS[symbol][0]
        spread = max(last * 0.0001, 10.0 ** -decimals)
        return Ticker(now, last, round(last - spread, decimals), round(last + spread, decimals))
