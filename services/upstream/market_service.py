"""MarketService: resolves (market, provider) to plugin instances and caches them.

Instances are keyed by plugin class, provider id, a hash of the credentials (or a public marker)
and the testnet flag. A background task closes instances idle longer than
``PLUGIN_IDLE_TIMEOUT``; the next request opens a fresh one.

Bounded whatever clients send: a user has at most one instance per provider (new credentials
replace the old instance, which is closed) and ``PLUGIN_MAX_INSTANCES_PER_USER`` in all; the
service holds ``PLUGIN_MAX_INSTANCES`` in all. Past a bound the least recently used instance is
closed (after ``REQUEST_DEADLINE``, so calls already running on it end first). The symbol lists
cached per user's instance go with it, and at most ``SYMBOLS_CACHE_MAX`` lists are kept.

Plugins never see the app config: ``plugin_settings(config)`` reads the keys they use, once, into
the frozen ``PluginSettings`` every instance receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config import declared, names
from core.errors import AppError, UnknownMarket, UnknownProvider
from core.metrics import PLUGIN_INSTANCES
from core.timeframes import TIMEFRAMES
from plugins.base import MarketPlugin, PluginSettings, ProviderInfo, Ticker
from plugins.loader import PluginLoader
from services.settings import build, setting
from services.upstream.calls import ProviderCalls
from services.upstream.credentials import UserCredentials
from services.upstream.deadline import bounded

log = logging.getLogger(__name__)

InstanceKey = tuple[str, str, str, bool]
#: Symbol lists kept (one per provider, and per user's instance), least recently used out first.
SYMBOLS_CACHE_MAX = 1024


@dataclass
class _Entry:
    plugin: MarketPlugin
    last_used: float


class ProviderNotConfigured(AppError):
    """The provider needs settings this server lacks (e.g. Alpaca's keys): answered at once,
    without a network call, naming the missing settings. 503 ``dependency_unavailable`` as for
    any server-side configuration that is missing; ``Retry-After`` says when an operator's fix
    may be in place."""

    status, code = 503, "dependency_unavailable"


#: Retry-After (s) of ``ProviderNotConfigured``: configuration changes come with a restart.
NOT_CONFIGURED_RETRY_AFTER = 300.0


def credentials_marker(credentials: dict[str, str]) -> str:
    """A stable hash of the credentials, or ``public``; secrets never appear in keys or logs."""
    if not credentials:
        return "public"
    blob = json.dumps(credentials, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def user_marker(user: UserCredentials) -> str:
    """The instance marker of a user's credentials: the user and a hash of the credentials."""
    return f"user:{user.owner}:{user.marker()}"


def plugin_settings(config: Mapping[str, Any]) -> PluginSettings:
    """The plugins' settings from the app config (every key must be there); raises
    ``ValueError`` naming a key whose value is unusable."""
    declared("CCXT_MARKET_TYPES").validate(config["CCXT_MARKET_TYPES"])
    return PluginSettings(
        timeout=float(config["PROVIDER_TIMEOUT"]),
        retries=max(0, int(config["PROVIDER_RETRIES"])),
        retry_max_wait=max(0.0, float(config["PROVIDER_RETRY_MAX_WAIT"])),
        symbols_ttl=float(config["CACHE_TTL_SYMBOLS"]),
        exchanges=names(config["CCXT_EXCHANGES"]),
        market_types=names(config["CCXT_MARKET_TYPES"]),
        ccxt_credentials=dict(config["CCXT_CREDENTIALS"] or {}),
        alpaca_key_id=str(config["ALPACA_API_KEY_ID"] or ""),
        alpaca_secret_key=str(config["ALPACA_API_SECRET_KEY"] or ""),
        alpaca_feed=str(config["ALPACA_FEED"] or ""),
        alpaca_adjustment=str(config["ALPACA_ADJUSTMENT"] or ""),
        sim_seed=int(config["SIM_SEED"]),
    )


@dataclass(frozen=True)
class MarketSettings:
    """MarketService's settings (``build(MarketSettings, config)``)."""

    idle_timeout: float = setting("PLUGIN_IDLE_TIMEOUT")
    symbols_ttl: float = setting("CACHE_TTL_SYMBOLS", float)
    #: Seconds within which a symbols or ticker answer comes (else 503 provider_unavailable).
    deadline: float = setting("REQUEST_DEADLINE")
    provider_urls: Mapping[str, str] | None = setting("PROVIDER_URLS")
    max_instances: int = setting("PLUGIN_MAX_INSTANCES")
    max_instances_per_user: int = setting("PLUGIN_MAX_INSTANCES_PER_USER")


class MarketService:
    """The plugin instances of every (market, provider), and their symbols and tickers, called
    through ``calls`` (the one guarded provider-call path, with its budget and breaker); every
    instance gets ``plugins`` (``plugin_settings(config)``)."""

    def __init__(self, loader: PluginLoader, config: Mapping[str, Any], calls: ProviderCalls,
                 plugins: PluginSettings) -> None:
        self.loader = loader
        #: The settings handed to plugin classes and instances.
        self.plugin_settings = plugins
        self.settings = build(MarketSettings, config)
        self.idle_timeout = self.settings.idle_timeout
        #: Open instances, least recently used first.
        self._instances: OrderedDict[InstanceKey, _Entry] = OrderedDict()
        #: (user, provider) -> the key of that user's instance for the provider.
        self._user_slots: dict[tuple[str, str], InstanceKey] = {}
        self._lock = asyncio.Lock()
        self._symbols: OrderedDict[tuple[str, str, str], tuple[float, list[str]]] = OrderedDict()
        #: Retired instances not closed yet (each waits REQUEST_DEADLINE first), by id.
        self._retiring: dict[int, MarketPlugin] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: The one provider-call path (breaker, budget, metrics, paging) every caller uses.
        self.calls = calls

    # --- Catalogue ---------------------------------------------------------------------------
    def markets(self) -> list[dict[str, Any]]:
        out = []
        for market, cls in sorted(self.loader.by_market.items()):
            providers = cls.list_configurable_providers(self.plugin_settings)
            out.append({
                "market": market,
                "providers": [p.provider for p in providers],
                "timeframes": list(TIMEFRAMES),
            })
        return out

    def providers(self, market: str) -> list[ProviderInfo]:
        """Providers configured for ``market``; raises ``UnknownMarket``."""
        cls = self.loader.plugin_for_market(market)
        if cls is None:
            known = ", ".join(sorted(self.loader.by_market))
            raise UnknownMarket(f"unknown market {market!r}; one of: {known}",
                                details={"market": [f"one of: {known}"]})
        return cls.list_configurable_providers(self.plugin_settings)

    def check_provider(self, market: str, provider: str) -> type[MarketPlugin]:
        """The plugin class for (market, provider); raises UnknownMarket / UnknownProvider."""
        names = [p.provider for p in self.providers(market)]
        if provider not in names:
            raise UnknownProvider(
                f"unknown provider {provider!r} for market {market!r}; one of: {', '.join(names)}"
            )
        cls = self.loader.plugin_for_market(market)
        assert cls is not None
        return cls

    def _check_configured(self, cls: type[MarketPlugin], provider: str) -> None:
        """Raise ``ProviderNotConfigured`` naming the settings ``provider`` lacks."""
        missing = cls.missing_settings(provider, self.plugin_settings)
        if missing:
            names = " and ".join(missing)
            raise ProviderNotConfigured(
                f"{provider} is not configured on this server: set {names} (or store your own "
                f"key with PUT /api/v1/credentials/{provider})",
                details={"provider": [f"{provider} needs {names}"]},
                retry_after=NOT_CONFIGURED_RETRY_AFTER)

    # --- Instances -----------------------------------------------------------------------------
    async def get_plugin(
        self, market: str, provider: str, user: UserCredentials | None = None
    ) -> MarketPlugin:
        """The cached plugin instance for (market, provider) with its configured credentials, or
        with ``user``'s own: an instance per hash of the user's credentials and testnet flag."""
        cls = self.check_provider(market, provider)
        if user is None:
            self._check_configured(cls, provider)
            credentials, testnet = cls.settings_from_config(provider, self.plugin_settings)
            marker = credentials_marker(credentials)
        else:
            credentials = cls.credentials_from_user(user.api_key, user.secret, user.password)
            testnet, marker = user.testnet, user_marker(user)
        key = (cls.get_plugin_key(), provider, marker, testnet)
        async with self._lock:
            entry = self._instances.get(key)
            if entry is None:
                if user is not None:
                    self._make_room_for(user.owner, provider)
                base_url = (self.settings.provider_urls or {}).get(provider)
                plugin = cls(
                    provider, settings=self.plugin_settings, credentials=credentials,
                    testnet=testnet, base_url=base_url, user_instance=user is not None,
                )
                entry = self._instances[key] = _Entry(plugin, time.monotonic())
                if user is not None:
                    self._user_slots[(user.owner, provider)] = key
                PLUGIN_INSTANCES.labels(cls.get_plugin_key()).inc()
                log.info("opened plugin %s for provider %s", cls.__name__, provider)
                while len(self._instances) > max(1, self.settings.max_instances):
                    self._retire(next(iter(self._instances)))
            self._instances.move_to_end(key)
            entry.last_used = time.monotonic()
            return entry.plugin

    def _make_room_for(self, owner: str, provider: str) -> None:
        """Before a user's new instance for ``provider``: retire the user's old one for it (their
        credentials changed), and their least recently used ones past the per-user bound."""
        old = self._user_slots.get((owner, provider))
        if old is not None:
            self._retire(old)
        mine = [k for (who, _), k in self._user_slots.items() if who == owner]
        if len(mine) >= self.settings.max_instances_per_user:
            order = {k: i for i, k in enumerate(self._instances)}
            for doomed in sorted(mine, key=lambda k: order.get(k, -1))[
                    :len(mine) - self.settings.max_instances_per_user + 1]:
                self._retire(doomed)

    def _retire(self, key: InstanceKey) -> None:
        """Take ``key``'s instance out of use (under the lock) and close it after
        ``REQUEST_DEADLINE``, by which the calls running on it have ended."""
        entry = self._instances.pop(key, None)
        for slot in [s for s, k in self._user_slots.items() if k == key]:
            del self._user_slots[slot]
        for cached in [c for c in self._symbols if c[2] == key[2]]:
            del self._symbols[cached]
        if entry is None:
            return
        PLUGIN_INSTANCES.labels(key[0]).dec()
        self._retiring[id(entry.plugin)] = entry.plugin
        task = asyncio.ensure_future(self._close_later(entry.plugin))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_later(self, plugin: MarketPlugin) -> None:
        await asyncio.sleep(self.settings.deadline)
        if self._retiring.pop(id(plugin), None) is not None:
            await self._close(plugin)

    async def forget_user(self, owner: str, provider: str) -> None:
        """The user's credentials for ``provider`` were replaced or deleted: retire the instance
        made from the old ones."""
        async with self._lock:
            key = self._user_slots.get((owner, provider))
            if key is not None:
                self._retire(key)

    async def symbols(
        self, market: str, provider: str, user: UserCredentials | None = None
    ) -> list[str]:
        """Symbols of a provider, cached in memory for ``CACHE_TTL_SYMBOLS`` seconds (per user's
        credentials for a user's instance: what a key may list is its own); fetched within
        ``REQUEST_DEADLINE``."""
        key = (market, provider, user_marker(user) if user else "")
        hit = self._symbols.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.settings.symbols_ttl:
            self._symbols.move_to_end(key)
            return hit[1]
        plugin = await self.get_plugin(market, provider, user)
        found = await bounded(self.calls.call(provider, "fetch_symbols", plugin.fetch_symbols,
                                              plugin.testnet),
                              self.settings.deadline, provider)
        self._symbols[key] = (time.monotonic(), found)
        self._symbols.move_to_end(key)
        while len(self._symbols) > SYMBOLS_CACHE_MAX:
            self._symbols.popitem(last=False)
        return found

    def known_symbols(self, market: str, provider: str) -> list[str] | None:
        """The last symbol list ``symbols`` fetched for (market, provider) with the server's
        credentials, however old (None: never fetched); no call. For answers that must not wait."""
        hit = self._symbols.get((market, provider, ""))
        return None if hit is None else hit[1]

    async def ticker(
        self, market: str, provider: str, symbol: str, user: UserCredentials | None = None
    ) -> Ticker:
        """The provider's last price for ``symbol`` (one guarded call, within
        ``REQUEST_DEADLINE``), with ``user``'s own instance when given."""
        plugin = await self.get_plugin(market, provider, user)
        call = self.calls.call(provider, "fetch_ticker", lambda: plugin.fetch_ticker(symbol),
                               plugin.testnet, plugin.call_weight("fetch_ticker"))
        return await bounded(call, self.settings.deadline, provider)

    async def close_idle(self, now: float | None = None) -> int:
        """Close instances unused for ``idle_timeout`` seconds; returns how many were closed."""
        now = time.monotonic() if now is None else now
        async with self._lock:
            idle = [k for k, e in self._instances.items() if now - e.last_used > self.idle_timeout]
            entries = [self._instances.pop(k) for k in idle]
            for slot in [s for s, k in self._user_slots.items() if k in idle]:
                del self._user_slots[slot]
            markers = {k[2] for k in idle}
            for cached in [c for c in self._symbols if c[2] in markers]:
                del self._symbols[cached]
        for key, entry in zip(idle, entries, strict=True):
            PLUGIN_INSTANCES.labels(key[0]).dec()
            await self._close(entry.plugin)
        return len(entries)

    async def _close(self, plugin: MarketPlugin) -> None:
        try:
            await asyncio.wait_for(plugin.close(), timeout=5.0)
        except (OSError, TimeoutError) as exc:
            log.warning("closing plugin %s failed: %s", plugin.provider_id, exc, exc_info=True)

    async def run_idle_reaper(self, shutdown: asyncio.Event, interval: float = 30.0) -> None:
        """Background loop: close idle instances until shutdown."""
        while not shutdown.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(), timeout=min(interval, self.idle_timeout))
            await self.close_idle()

    async def close(self) -> None:
        async with self._lock:
            entries = list(self._instances.items())
            self._instances.clear()
            self._user_slots.clear()
        for key, entry in entries:
            PLUGIN_INSTANCES.labels(key[0]).dec()
            await self._close(entry.plugin)
        closing = list(self._closing)
        for task in closing:  # retired instances: closed now rather than after their wait
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        retiring = list(self._retiring.values())
        self._retiring.clear()
        for plugin in retiring:
            await self._close(plugin)
