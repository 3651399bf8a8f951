"""Wires failure handling and users' own answers into the app: the providers' circuit breaker
(shared through Redis), stale-while-error tickers, and OHLCV answers from a user's own plugin
instance (``services.bars.user_bars``). Reach it with ``get_resilience(app)``."""

from __future__ import annotations

from quart import Quart

from app_extensions.redis_client import get_redis
from app_extensions.services import get_services
from app_extensions.warmup import get_warmup
from services.bars.ohlcv import OhlcvService
from services.bars.user_bars import UserBars
from services.upstream.breaker import CircuitBreaker
from services.upstream.tickers import TickerService


class Resilience:
    """Owner of the circuit breaker, the ticker service and users' own OHLCV answers."""

    def __init__(self, app: Quart | None = None) -> None:
        self.breaker: CircuitBreaker
        self.tickers: TickerService
        self.user_bars: UserBars
        self.ohlcv: OhlcvService
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Call after the RedisClient and Services extensions exist."""
        redis, markets = get_redis(app), get_services(app).markets
        self.breaker = markets.breaker
        self.breaker.attach(redis)
        self.tickers = TickerService(markets, redis, int(app.config["TICKER_STALE_TTL"]))
        self.user_bars = UserBars(markets, int(app.config["OHLCV_MAX_PROVIDER_CALLS"]))
        # What GET /ohlcv calls: the shared chain or the user's own answers (after Warmup).
        self.ohlcv = OhlcvService(get_services(app).orchestrator, self.user_bars,
                                  get_warmup(app).warmer)
        app.extensions["resilience"] = self


def get_resilience(app: Quart) -> Resilience:
    owner: Resilience = app.extensions["resilience"]
    return owner
