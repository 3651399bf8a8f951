"""Settings for tests that build plugins (or a MarketService) themselves, made the way the app
makes them: the testing config, overridden by key, read by ``plugin_settings`` of the service
layer. Every test builds its plugin settings here, so none repeats a setting's value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import TestingConfig
from plugins.base import PluginSettings
from services.upstream import market_service

#: Plugin tests against the local exchange emulator: short timeouts, two quick retries, and an
#: Alpaca key (the emulator takes any).
EMULATOR: dict[str, Any] = {
    "PROVIDER_TIMEOUT": 2.0, "PROVIDER_RETRIES": 2, "PROVIDER_RETRY_MAX_WAIT": 0.05,
    "ALPACA_API_KEY_ID": "key", "ALPACA_API_SECRET_KEY": "secret",
}


def plugin_config(*bases: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The testing app config, updated with each of ``bases`` in turn, then ``overrides``
    (config keys: ``plugin_config(EMULATOR, CCXT_EXCHANGES="binance")``)."""
    config = TestingConfig().as_dict()
    for base in bases:
        config.update(base)
    config.update(overrides)
    return config


def plugin_settings(*bases: Mapping[str, Any], **overrides: Any) -> PluginSettings:
    """The plugins' settings from ``plugin_config(*bases, **overrides)``."""
    return market_service.plugin_settings(plugin_config(*bases, **overrides))


def stream_settings(*bases: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``KlineStreams``' settings keywords, as ``services.live.streams`` passes them."""
    settings = plugin_settings(*bases, **overrides)
    return {"market_types": settings.market_types, "timeout": settings.timeout}
