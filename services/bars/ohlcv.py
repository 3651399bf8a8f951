"""What ``GET /ohlcv`` asks of the bars path, in one call: ``OhlcvService.answer``.

It chooses the implementation (the shared orchestrator, or ``UserBars`` for a caller whose own
credentials configure the provider), counts shared queries for cache warming, and says which
answers are settled enough for an HTTP cache to keep. Keeping them is the HTTP layer's business
(``app_extensions.response_cache``).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.timeframes import MINUTE_MS, now_ms
from services.bars.orchestrator import DataOrchestrator, window
from services.bars.query import BarAnswer, BarQuery
from services.bars.sources import LEDGER_SAFETY_MS
from services.bars.user_bars import UserBars
from services.bars.warmup import Warmer, range_key
from services.upstream.credentials import UserCredentials


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

    def __init__(self, orchestrator: DataOrchestrator, user_bars: UserBars, warmer: Warmer) -> None:
        self.orchestrator, self.user_bars, self.warmer = orchestrator, user_bars, warmer

    async def answer(self, q: BarQuery, user: UserCredentials | None) -> OhlcvResult:
        """The answer to ``q``; ``user`` (the caller's own credentials) bypasses every shared
        store, and such an answer is never marked settled."""
        key = range_key(q)
        if user is not None:
            return OhlcvResult(await self.user_bars.get_bars(q, user), None, key)
        self.warmer.note_key(key)  # counted for cache warming (memory only)
        answer = await self.orchestrator.get_bars(q)
        # An answer that queued a backfill is not kept: its job header belongs to this answer.
        keep = answer.closed and not answer.incomplete and not answer.backfill_job
        return OhlcvResult(answer, self._settled(q) if keep else None, key)

    def count_hit(self, warm_key: str) -> None:
        """Count a shared query answered from an HTTP cache, for cache warming."""
        self.warmer.note_key(warm_key)

    @staticmethod
    def _settled(q: BarQuery) -> tuple[int, int] | None:
        """The range of a closed answer when it is settled: older than the minutes an exchange
        may still correct (``LEDGER_SAFETY_MS``)."""
        now = now_ms()
        a, b, _ = window(q, now)
        if b > now // MINUTE_MS * MINUTE_MS - LEDGER_SAFETY_MS:
            return None
        return (a if q.start is not None else 0), b
