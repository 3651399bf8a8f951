"""Tickers with stale-while-error: the last good ticker of each (instance scope, symbol) is kept in
Redis; when the provider fails with a temporary error (down, timing out, rate-limiting us, its
circuit breaker open) the last one is answered, flagged stale, instead of an error.

The scope is ``shared`` for the service's own plugin instance and the hash of a user's credentials
for a user's own instance, so a ticker one user's entitlements gave (Alpaca's ``sip`` quote) is
never answered to another user.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from core.errors import DataSourceError, NetworkPluginError
from core.metrics import STALE_ANSWERS
from plugins.base import Ticker
from services.upstream.breaker import RedisRunner
from services.upstream.credentials import UserCredentials
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)


class TickerService:
    """``get`` answers (ticker, stale)."""

    def __init__(self, markets: MarketService, redis: RedisRunner | None, ttl: int = 86_400) -> None:
        self.markets = markets
        self.redis = redis
        self.ttl = ttl

    async def get(
        self, market: str, provider: str, symbol: str, user: UserCredentials | None = None
    ) -> tuple[Ticker, bool]:
        """The provider's ticker (stale False), or on a temporary provider failure the last
        known one (stale True); raises the failure when none is known."""
        scope = "shared" if user is None else user.marker()
        try:
            ticker = await self.markets.ticker(market, provider, symbol, user)
        except NetworkPluginError as exc:
            last = await self._read(scope, market, provider, symbol)
            if last is None:
                raise
            STALE_ANSWERS.labels(provider, "ticker").inc()
            log.warning("%s ticker failed, answering the last known one: %s", provider, exc)
            return last, True
        await self._write(scope, market, provider, symbol, ticker)
        return ticker, False

    def _key(self, scope: str, market: str, provider: str, symbol: str) -> str | None:
        return None if self.redis is None else self.redis.key("ticker", scope, market, provider, symbol)

    async def _write(self, scope: str, market: str, provider: str, symbol: str, t: Ticker) -> None:
        key = self._key(scope, market, provider, symbol)
        if key is None or self.redis is None:
            return
        blob = json.dumps(asdict(t))
        try:
            await self.redis.run(lambda r: r.set(key, blob, ex=self.ttl))
        except DataSourceError as exc:
            log.debug("last ticker not kept: %s", exc.details)

    async def _read(self, scope: str, market: str, provider: str, symbol: str) -> Ticker | None:
        key = self._key(scope, market, provider, symbol)
        if key is None or self.redis is None:
            return None
        try:
            raw = await self.redis.run(lambda r: r.get(key))
        except DataSourceError as exc:
            log.warning("last ticker unavailable: %s", exc.details)
            return None
        return None if raw is None else Ticker(**json.loads(raw))
