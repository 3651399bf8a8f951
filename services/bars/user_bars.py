"""OHLCV answers from a user's own plugin instance, past every shared cache and shared storage.

What a user's key sees may be more than every user may see (Alpaca's ``sip`` feed against
``iex``), so nothing of it is read from or written to the answer cache, the 1m cache, the
database or the gap ledger, which all key bars by (market, provider, symbol) alone. The window
and paging rules are the orchestrator's (``window``, ``widened``, ``Window``: ``limit`` bars,
``next``, ``partial``, ``closed``); bars come in the requested timeframe when the provider serves
it natively, else as 1m bars resampled here, through the one provider-call path (guard, metrics, paging) within
``OHLCV_MAX_PROVIDER_CALLS`` calls. Latest-bars queries of markets that close look back as far as
the orchestrator's widest window at once.
"""

from __future__ import annotations

from core.timeframes import now_ms, resample
from services.bars.orchestrator import WIDEN_FACTORS, widened, window
from services.bars.query import BarAnswer, BarQuery
from services.bars.sources import Window
from services.upstream.credentials import UserCredentials
from services.upstream.market_service import MarketService


class UserBars:
    """``get_bars(query, user)``: the answer the user's own key gets from the provider."""

    def __init__(self, markets: MarketService, max_calls: int) -> None:
        self.markets = markets
        self.max_calls = max_calls

    async def get_bars(self, q: BarQuery, user: UserCredentials) -> BarAnswer:
        """Bars for ``q`` fetched with ``user``'s credentials; raises the provider's errors."""
        plugin = await self.markets.get_plugin(q.series.market, q.series.provider, user)
        caps, now = plugin.capabilities, now_ms()
        a, b, nxt = window(q, now)
        if q.start is None and not caps.continuous:  # nights and weekends hold no bars: the
            a = window(widened(q, WIDEN_FACTORS[-1]), now)[0]  # orchestrator's widest window
        w = Window(q.series, q.timeframe, a, b, now)
        native = q.timeframe in caps.timeframes
        tf = q.timeframe if native else "1m"
        oldest = caps.history_start(tf, now)
        start = a if oldest is None else max(a, oldest)
        fetched = await self.markets.calls.pages(plugin, q.series, tf, start, w.fetch_end,
                                                 budget=self.max_calls)
        bars = fetched.bars if native else resample(fetched.bars, q.timeframe)
        if q.start is None:
            bars = bars[-q.limit:]
        bars = [[int(x[0]), x[1], x[2], x[3], x[4], round(x[5], 8)] for x in bars]
        return BarAnswer(bars, w.partial(bars), nxt, ["provider"], closed=w.closed,
                         incomplete=fetched.until < w.fetch_end or (start > a and q.start is not None))
