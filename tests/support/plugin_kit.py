"""A kit for tests that build plugins (or a MarketService) themselves.

Settings are made the way the app makes them: the testing config, overridden by key, read by
``plugin_settings`` of the service layer, so no test repeats a setting's value. ``TEMPORARY_FAULTS``
are the emulator faults every HTTP plugin retries; ``retries`` counts the retries made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY

from config import TestingConfig
from core.errors import AppError, MalformedResponseError, NetworkPluginError, RateLimitedPluginError
from plugins.base import MarketPlugin, PluginSettings
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


#: (emulator fault, the error a plugin raises once its retries are spent): what every HTTP
#: plugin treats as temporary. ``delay`` outlasts the timeout ``slow_down`` sets.
TEMPORARY_FAULTS: list[tuple[dict[str, Any], type[AppError]]] = [
    ({"status": 429, "retry_after": 1}, RateLimitedPluginError),
    ({"status": 500}, NetworkPluginError),
    ({"status": 502}, NetworkPluginError),
    ({"status": 503}, NetworkPluginError),
    ({"status": 504}, NetworkPluginError),
    ({"delay": 2.0}, NetworkPluginError),
    ({"malformed": "json"}, MalformedResponseError),
    ({"malformed": "invalid"}, MalformedResponseError),
    ({"malformed": "html"}, MalformedResponseError),
]


def slow_down(plugin: MarketPlugin, fault: dict[str, Any]) -> None:
    """For a ``delay`` fault: a 0.3 s timeout (read when the plugin's client is made, on its
    first call), so the 2 s delay times out quickly."""
    if "delay" in fault:
        plugin.settings = dataclasses.replace(plugin.settings, timeout=0.3)


def retries(provider: str) -> float:
    """``provider_retries_total`` of ``provider`` so far."""
    return REGISTRY.get_sample_value("provider_retries_total", {"provider": provider}) or 0.0
