"""Which live channels are fed by a stream: the ``STREAM_*`` settings and the per-provider
``KlineStreams`` of this instance (one ``ccxt.pro`` exchange per provider, reference-counted by
the feeds using it). See ``services.stream_feed`` for the feed itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from plugins.base import MarketPlugin
from plugins.ccxt_stream import KlineStreams, stream_possible
from plugins.crypto import CryptoPlugin


@dataclass(frozen=True)
class StreamSettings:
    """``STREAM_*`` settings, read once."""

    enabled: bool = True
    silence: float = 10.0
    verify: float = 90.0
    retry: float = 5.0
    retry_max: float = 300.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StreamSettings:
        return cls(bool(config["STREAM_FEEDS"]), float(config["STREAM_SILENCE_SECONDS"]),
                   float(config["STREAM_VERIFY_SECONDS"]), float(config["STREAM_RETRY_SECONDS"]),
                   float(config["STREAM_RETRY_MAX_SECONDS"]))


class StreamRegistry:
    """The ``KlineStreams`` of this instance, one per provider, made on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.settings = StreamSettings.from_config(config)
        self.ws_urls: dict[str, str] = dict(config["PROVIDER_WS_URLS"] or {})
        self.rest_urls: dict[str, str] = dict(config["PROVIDER_URLS"] or {})
        self.timeout = float(config["PROVIDER_TIMEOUT"])
        self._streams: dict[str, KlineStreams] = {}
        self._users: dict[str, int] = {}

    def _streams_for(self, plugin: MarketPlugin) -> KlineStreams | None:
        provider = plugin.provider_id
        if (not self.settings.enabled or not isinstance(plugin, CryptoPlugin) or plugin.testnet
                or not stream_possible(provider, self.rest_urls.get(provider),
                                       self.ws_urls.get(provider))):
            return None
        if provider not in self._streams:
            self._streams[provider] = KlineStreams(
                provider, ws_base_url=self.ws_urls.get(provider),
                rest_base_url=self.rest_urls.get(provider), market_types=plugin.market_types,
                timeout=self.timeout)
        return self._streams[provider]

    @asynccontextmanager
    async def use(self, plugin: MarketPlugin) -> AsyncIterator[KlineStreams | None]:
        """The provider's streams for one channel's feed, or None when the channel is polled
        (CCXT Pro has no kline stream for it, it is a testnet, or its URLs forbid it). The
        provider's connections close when the last feed using them ends."""
        streams = self._streams_for(plugin)
        if streams is None:
            yield None
            return
        provider = plugin.provider_id
        self._users[provider] = self._users.get(provider, 0) + 1
        try:
            yield streams
        finally:
            self._users[provider] -= 1
            if not self._users[provider]:
                del self._users[provider]
                self._streams.pop(provider, None)
                await streams.close()
