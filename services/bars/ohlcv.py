"""What ``GET /ohlcv`` asks of the bars path, in one call: ``OhlcvService.answer``.

It chooses the chain: the shared orchestrator, or for a caller whose own credentials configure
the provider the same orchestrator over the user's provider instance alone (``users_chain``: what
a user's key sees may be more than every user may see, Alpaca's ``sip`` feed against ``iex``, so
nothing of it is read from or written to the caches, the database or the gap ledger, which key
bars by market, provider and symbol alone). It counts shared queries for cache warming, and says
which answers are settled enough for an HTTP cache to keep. Keeping them is the HTTP layer's business
(``app_extensions.response_cache``).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.timeframes import MINUTE_MS, now_ms
from services.bars.cache import BestEffortCache
from services.bars.orchestrator import DataOrchestrator, OrchestratorSettings
from services.bars.provider_source import ProviderClient, ProviderSource
from services.bars.query import BarAnswer, BarQuery
from services.bars.sources import LEDGER_SAFETY_MS
from services.bars.warmup import Warmer, range_key
from services.upstream.credentials import UserCredentials
from services.upstream.market_service import MarketService


@dataclass(frozen=True)
class OhlcvResult:
    """An answer, and what a shared HTTP cache may do with it."""

    answer: BarAnswer
    #: ``[start, end)`` of a settled shared answer a cache may keep (``start`` 0 for a
    #: latest-bars query, which any revision before its end drops); None: not to be kept.
    settled: tuple[int, int] | None
    #: The query's key in the warming records (``Warmer.note_key``).
    warm_key: str


class OhlcvService:
    """``answer(query, user)``: bars from the user's own provider instance or the shared chain."""

    def __init__(self, orchestrator: DataOrchestrator, markets: MarketService, warmer: Warmer) -> None:
        self.orchestrator, self.markets, self.warmer = orchestrator, markets, warmer

    async def answer(self, q: BarQuery, user: UserCredentials | None) -> OhlcvResult:
        """The answer to ``q``; ``user`` (the caller's own credentials) bypasses every shared
        store, and such an answer is never marked settled."""
        key = range_key(q)
        if user is not None:
            users = users_chain(self.markets, self.orchestrator.settings, user)
            try:
                return OhlcvResult(await users.get_bars(q), None, key)
            finally:
                await users.close()  # a build past the deadline serves no one: nothing is kept
        self.warmer.note_key(key)  # counted for cache warming (memory only)
        answer = await self.orchestrator.get_bars(q)
        # An answer that queued a backfill is not kept: its job header belongs to this answer.
        keep = answer.closed and not answer.incomplete and not answer.backfill_job
        return OhlcvResult(answer, self._settled(q, answer.span) if keep else None, key)

    def count_hit(self, warm_key: str) -> None:
        """Count a shared query answered from an HTTP cache, for cache warming."""
        self.warmer.note_key(warm_key)

    @staticmethod
    def _settled(q: BarQuery, span: tuple[int, int] | None) -> tuple[int, int] | None:
        """The range of a closed answer (its query's window, ``span``) when it is settled: older
        than the minutes an exchange may still correct (``LEDGER_SAFETY_MS``)."""
        if span is None:
            return None
        now = now_ms()
        a, b = span
        if b > now // MINUTE_MS * MINUTE_MS - LEDGER_SAFETY_MS:
            return None
        return (a if q.start is not None else 0), b


def users_chain(markets: MarketService, settings: OrchestratorSettings,
                user: UserCredentials) -> DataOrchestrator:
    """The orchestrator of one user's answer: the same window, paging and deadline rules over the
    user's own provider instance alone, with no cache, no storage and no backfill."""
    source = ProviderSource(markets, settings.max_provider_calls, stored=False, user=user)
    return DataOrchestrator(cache=BestEffortCache(None), chain=[], fallback=[source],
                            provider=ProviderClient(markets, user), settings=settings)
