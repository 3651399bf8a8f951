"""The plugin contract every market data source implements.

A plugin class serves one or more markets (``get_supported_markets``); an *instance* is bound to
one ``provider_id`` (a CCXT exchange id, ``alpaca``, ``sim``) with its credentials and testnet flag.
MarketService caches instances and closes idle ones. Provider differences are data
(``capabilities``), never ``if provider == ...`` branches in callers.

Settings: plugins never read the app config. The service layer builds one frozen
``PluginSettings`` from it at start-up and hands it to every instance; the defaults live with the
settings' declaration, none here.

Errors: plugins raise only ``core.errors`` classes (``PluginError`` and subclasses,
``UnknownSymbol``), translated from their client library with ``raise ... from exc``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.timeframes import Bar, bucket_ceil, tf_ms
from plugins.retry import RetryPolicy


@dataclass(frozen=True)
class PluginSettings:
    """The settings plugins read, typed and checked, built once from the app config by the service
    layer (``services.upstream.market_service.plugin_settings``). Each field names its key."""

    #: ``PROVIDER_TIMEOUT``: seconds one upstream HTTP request may take.
    timeout: float
    #: ``PROVIDER_RETRIES``: retries of a temporary upstream error after the first attempt.
    retries: int
    #: ``PROVIDER_RETRY_MAX_WAIT``: the longest wait (s) before one retry.
    retry_max_wait: float
    #: ``CACHE_TTL_SYMBOLS``: seconds a provider's markets (symbol list) are kept.
    symbols_ttl: float
    #: ``CCXT_EXCHANGES``: the CCXT exchange ids served, in order.
    exchanges: tuple[str, ...]
    #: ``CCXT_MARKET_TYPES``: CCXT market types loaded (at least one; the first is the default).
    market_types: tuple[str, ...]
    #: ``CCXT_CREDENTIALS``: exchange id -> ``{"apiKey", "secret", "password"?, "testnet"?}``.
    ccxt_credentials: Mapping[str, Mapping[str, Any]]
    #: ``ALPACA_API_KEY_ID`` and ``ALPACA_API_SECRET_KEY`` (empty: not configured).
    alpaca_key_id: str
    alpaca_secret_key: str
    #: ``ALPACA_FEED`` and ``ALPACA_ADJUSTMENT``, sent with the server's bars requests.
    alpaca_feed: str
    alpaca_adjustment: str
    #: ``SIM_SEED``: seed of the simulated market.
    sim_seed: int


@dataclass(frozen=True)
class ProviderInfo:
    """One provider a plugin can serve, as ``/providers`` lists it."""

    provider: str
    requires_credentials: bool
    configured: bool
    timeframes: list[str]


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do; read by the orchestrator, backfill and pollers."""

    #: Most bars one fetch_ohlcv call returns (Binance 1000, Kraken 720, Alpaca 10000, sim 1000).
    max_bars_per_call: int = 1000
    #: Timeframes the provider serves natively (we always fetch 1m and resample).
    timeframes: tuple[str, ...] = ("1m",)
    #: Seconds between polls of the forming bar that stay well inside the rate limit.
    min_poll_interval: float = 2.0
    #: True when the market trades around the clock (crypto, sim): a missing minute is a hole.
    continuous: bool = True
    #: ``extra["history_bars"]``: the provider serves only its latest N bars of a timeframe, whatever
    #: ``since`` asks (Kraken: 720); older pages come back empty or start late.
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``fetch_ohlcv`` answers new ``[int ts, float x 5]`` lists, ascending, within
    #: ``[since, until)``: the provider-call path takes its pages as they are (the sim), instead of
    #: copying each bar into that form.
    normalized: bool = False

    def history_start(self, timeframe: str, now: int) -> int | None:
        """The oldest bar time still served for ``timeframe`` (a few bars of margin), or None
        when the provider's history is not limited that way."""
        depth = self.extra.get("history_bars")
        return None if not depth else bucket_ceil(now - (int(depth) - 10) * tf_ms(timeframe), timeframe)


@dataclass(frozen=True)
class SymbolMeta:
    """How a symbol's prices and volumes are stepped, as the provider states them (TradingView's
    UDF turns these into ``pricescale``/``minmov`` and ``volume_precision``)."""

    #: Smallest price step (0.01 for a cent), or None when the provider does not say.
    price_tick: float | None = None
    #: Smallest volume step (1 for whole shares), or None when the provider does not say.
    volume_tick: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Ticker:
    ts: int
    last: float
    bid: float | None
    ask: float | None


class MarketPlugin(ABC):
    """Base class for market data plugins. Subclasses are discovered by ``PluginLoader``."""

    #: Registry key of the plugin class (``crypto``, ``alpaca``, ``sim``).
    plugin_key: ClassVar[str]
    #: Markets this class serves (``crypto``, ``stocks``, ``sim``).
    supported_markets: ClassVar[tuple[str, ...]]
    #: False for providers that take no user credentials (``PUT /credentials`` refuses them).
    accepts_credentials: ClassVar[bool] = True

    def __init__(
        self,
        provider_id: str,
        *,
        settings: PluginSettings,
        credentials: dict[str, str] | None = None,
        testnet: bool = False,
        base_url: str | None = None,
        user_instance: bool = False,
    ) -> None:
        self.provider_id = provider_id
        self.settings = settings
        self.credentials = credentials or {}
        self.testnet = testnet
        self.base_url = base_url
        #: Built with a user's own credentials (``credentials_from_user``), not the server's.
        self.user_instance = user_instance
        #: The retry policy of every upstream request this instance makes.
        self.retry = RetryPolicy(provider_id, retries=settings.retries,
                                 max_wait=settings.retry_max_wait)

    @classmethod
    def get_plugin_key(cls) -> str:
        return cls.plugin_key

    @classmethod
    def get_supported_markets(cls) -> tuple[str, ...]:
        return cls.supported_markets

    @classmethod
    @abstractmethod
    def list_configurable_providers(cls, settings: PluginSettings) -> list[ProviderInfo]:
        """Providers this class can serve under ``settings``."""

    @classmethod
    def settings_from_config(
        cls, provider_id: str, settings: PluginSettings
    ) -> tuple[dict[str, str], bool]:
        """(credentials, testnet) the server's settings give ``provider_id``; public access by
        default."""
        return {}, False

    @classmethod
    def missing_settings(cls, provider_id: str, settings: PluginSettings) -> list[str]:
        """Names of the settings ``provider_id`` needs that ``settings`` lack (none by default).
        A provider with some is answered at once with an error naming them, never called."""
        return []

    @classmethod
    def credentials_from_user(
        cls, api_key: str, secret: str, password: str | None = None
    ) -> dict[str, str]:
        """A user's stored credentials in this plugin's ``credentials`` form (CCXT's by default).
        Instances built with them get ``user_instance=True``."""
        creds = {"apiKey": api_key, "secret": secret}
        if password:
            creds["password"] = password
        return creds

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """This instance's provider capabilities."""

    @abstractmethod
    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        """Bars of ``timeframe`` with ``since <= ts`` (and ``ts < until`` when given), ascending,
        at most ``min(limit, capabilities.max_bars_per_call)`` of them; one upstream call. The last
        bar may still be forming. Raises ``UnknownSymbol`` or a ``PluginError`` subclass."""

    @abstractmethod
    async def fetch_symbols(self) -> list[str]:
        """All symbols the provider serves, in the API's symbol form."""

    @abstractmethod
    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Last price (and bid/ask when the provider has them)."""

    def call_weight(self, method: str) -> int:
        """The request weight of one ``method`` call at the provider (``capabilities.extra
        ["weights"]``, 1 when not stated): what the call takes from the provider budget."""
        weights = self.capabilities.extra.get("weights") or {}
        return max(1, int(weights.get(method, 1)))

    def used_weight(self) -> int | None:
        """The request weight the provider says we used in its current minute (read back from its
        last answer, Binance's ``X-MBX-USED-WEIGHT-1M``); None when it does not say."""
        return None

    def listing_ms(self, symbol: str) -> int | None:
        """When ``symbol``'s history starts (its listing, ms), if the provider states it; None
        when unknown (callers then learn it from the first page of a fetch reaching back)."""
        return None

    async def symbol_meta(self, symbol: str) -> SymbolMeta:
        """Price and volume steps of ``symbol`` (steps unknown by default). Callers check first
        that the symbol exists (``fetch_symbols``)."""
        return SymbolMeta(description=symbol)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release network resources. Idempotent."""
