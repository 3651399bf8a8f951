"""Wires the service layer into the app, in one place: ``Services.init_app`` builds every
collaborator in order (the provider budget, breaker and call path, the markets, the bars chain,
backfill, the live hub, cache warming, tickers, the ``/ohlcv`` service (shared and users' own
bars) and the UDF service), each receiving what it uses in its constructor. The Redis client is
handed in before it connects (``before_serving``): until then, and whenever it fails, the budget
and breaker decide in memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from quart import Quart

from app_extensions.db_pool import Database
from app_extensions.redis_client import RedisClient
from config import ConfigError, names
from plugins.loader import PluginLoader
from services import live
from services.backfill.manager import BackfillManager
from services.bars.cache import BestEffortCache, RedisCache
from services.bars.ohlcv import OhlcvService
from services.bars.orchestrator import DataOrchestrator, OrchestratorSettings
from services.bars.provider_source import ProviderClient, ProviderSource
from services.bars.sources import BarWriter, Cache1mSource, StorageSource
from services.bars.warmup import Warmer, warmup_settings
from services.bus.broadcast import Broadcast
from services.bus.redis_backend import RedisBackend
from services.bus.revisions import Revisions
from services.live import HubSettings, SubscriptionService
from services.live.streams import StreamRegistry
from services.settings import build
from services.udf import UdfService
from services.upstream.breaker import BreakerSettings, CircuitBreaker
from services.upstream.budget import ProviderBudget
from services.upstream.calls import ProviderCalls
from services.upstream.market_service import MarketService, plugin_settings
from services.upstream.tickers import TickerService

log = logging.getLogger(__name__)


class Services:
    """Owner of the service layer. Reach it with ``get_services(app)``."""

    def __init__(self, database: Database, redis: RedisClient, app: Quart | None = None) -> None:
        self.database, self.redis = database, redis
        self.budget: ProviderBudget
        self.breaker: CircuitBreaker
        self.calls: ProviderCalls
        self.markets: MarketService
        self.orchestrator: DataOrchestrator
        self.backfill: BackfillManager
        self.subscriptions: SubscriptionService
        self.warmer: Warmer
        self.tickers: TickerService
        #: What GET /ohlcv calls: the shared chain or a user's own (the same chain over the
        #: user's provider instance alone).
        self.ohlcv: OhlcvService
        #: TradingView's UDF (``blueprints/udf.py`` serves it).
        self.udf: UdfService
        self.shutdown = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.step_timeout = 5.0
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Build the service layer over the database and Redis (neither is connected yet)."""
        app.extensions["services"] = self
        config = app.config
        self.step_timeout = float(config["SHUTDOWN_TIMEOUT"])
        try:
            warming = warmup_settings(config)
            plugins = plugin_settings(config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        db, redis = self.database, self.redis
        markets = list(names(config["ENABLED_MARKETS"]))
        loader = PluginLoader(markets)
        loader.load()
        # The one provider-call path: the breaker first, then the budget and ban pause, both
        # shared through Redis.
        self.budget = ProviderBudget(config, redis)
        self.breaker = CircuitBreaker(BreakerSettings.from_config(config), redis)
        self.calls = ProviderCalls(self.budget, self.breaker)
        self.markets = MarketService(loader, dict(config), self.calls, plugins)
        redis_cache = RedisCache(redis, int(config["CACHE_TTL_CLOSED"]),
                                 int(float(config["CACHE_RECENT_SECONDS"]) * 1000))
        cache = BestEffortCache(redis_cache)
        # The hub's cluster transport also carries revisions of stored bars (services.bus.revisions).
        broadcast = Broadcast(RedisBackend(redis), retry_after=float(config["DEPENDENCY_RETRY_AFTER"]))
        revisions = Revisions(broadcast, redis_cache)
        self.backfill = BackfillManager(self.markets, db, cache, dict(config), revisions)
        settings = build(OrchestratorSettings, config)
        storage, provider = StorageSource(db, revisions), ProviderClient(self.markets)
        self.orchestrator = DataOrchestrator(
            cache=cache,
            chain=[storage, ProviderSource(self.markets, settings.max_provider_calls, stored=True)],
            fallback=[Cache1mSource(cache, provider.capabilities),
                      ProviderSource(self.markets, settings.max_provider_calls, stored=False)],
            provider=provider,
            settings=settings,
            on_missing=self.backfill.schedule_missing,
            store=storage,
        )
        self.subscriptions = live.build(
            markets=self.markets, orchestrator=self.orchestrator, broadcast=broadcast,
            db=BarWriter(db, revisions), settings=HubSettings.from_config(config),
            streams=StreamRegistry(config),
        )
        subscriptions = self.subscriptions
        self.warmer = Warmer(self.orchestrator, redis, warming, lambda: list(subscriptions.channels))
        self.tickers = TickerService(self.markets, redis, int(config["TICKER_STALE_TTL"]))
        self.ohlcv = OhlcvService(self.orchestrator, self.markets, self.warmer)
        self.udf = UdfService(self.markets, self.orchestrator, int(config["OHLCV_MAX_LIMIT"]),
                              float(config["UDF_SEARCH_SECONDS"]))
        app.before_serving(self.start)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Start a background task owned by this object (cancelled at shutdown)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        self.shutdown.clear()
        self.spawn(self.markets.run_idle_reaper(self.shutdown), "plugin-idle-reaper")
        await self.backfill.start()
        await self.subscriptions.start()

    async def close(self) -> None:
        """Stop in order (live workers, backfill, answer builds, UDF searches, owned tasks, plugins),
        each step bounded by ``SHUTDOWN_TIMEOUT``; plugins are closed even when an earlier step fails or times out."""
        self.shutdown.set()
        try:
            await self._step(self.subscriptions.close(), "subscriptions")  # live workers first
            await self._step(self.backfill.close(), "backfill")
            await self._step(self.orchestrator.close(), "answer builds")
            await self._step(self.udf.close(), "UDF symbol-list fetches")
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await self._step(task, task.get_name())
        finally:
            await self._step(self.markets.close(), "plugins")

    async def _step(self, aw: Any, name: str) -> None:
        try:
            await asyncio.wait_for(aw, timeout=self.step_timeout)
        except TimeoutError:
            log.warning("shutdown step %s timed out after %.1fs", name, self.step_timeout)


def get_services(app: Quart) -> Services:
    services: Services = app.extensions["services"]
    return services
