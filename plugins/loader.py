"""Discovers ``MarketPlugin`` subclasses in the ``plugins`` package and maps markets to them."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import plugins
from plugins.base import MarketPlugin

log = logging.getLogger(__name__)


class PluginLoader:
    """Imports every module of ``plugins`` once and indexes the concrete plugin classes."""

    def __init__(self, enabled_markets: list[str] | None = None) -> None:
        self.enabled_markets = enabled_markets
        self.by_key: dict[str, type[MarketPlugin]] = {}
        self.by_market: dict[str, type[MarketPlugin]] = {}

    def load(self) -> None:
        for mod in pkgutil.iter_modules(plugins.__path__):
            importlib.import_module(f"plugins.{mod.name}")
        for cls in _subclasses(MarketPlugin):  # type: ignore[type-abstract]
            if getattr(cls, "__abstractmethods__", None):
                continue
            self.by_key[cls.get_plugin_key()] = cls
            for market in cls.get_supported_markets():
                if self.enabled_markets is None or market in self.enabled_markets:
                    self.by_market[market] = cls
        log.debug("plugins: %s", {m: c.__name__ for m, c in self.by_market.items()})

    def plugin_for_market(self, market: str) -> type[MarketPlugin] | None:
        return self.by_market.get(market)


def _subclasses(cls: type[MarketPlugin]) -> list[type[MarketPlugin]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out
