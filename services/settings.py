"""Frozen settings objects for services, built once from the app config at start-up.

Public names (stable): ``setting``, ``build``.

A settings dataclass declares each field with ``setting("CONFIG_KEY", default)``; ``build(cls,
config)`` reads the keys the config holds (converted to the default's type) and keeps the defaults
for the others, so services never look settings up at call sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field, fields
from typing import Any, TypeVar

S = TypeVar("S")


def setting(key: str, default: Any, convert: Callable[[Any], Any] | None = None) -> Any:
    """A settings field read from ``config[key]`` (``convert``: default's type)."""
    return field(default=default, metadata={"key": key, "convert": convert})


def build(cls: type[S], config: Mapping[str, Any]) -> S:
    """``cls`` from ``config``; raises ``ValueError`` naming the key whose value is wrong."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("key")
        if key is None or config.get(key) is None:
            continue
        convert: Callable[[Any], Any] = f.metadata.get("convert") or type(f.default)
        try:
            kwargs[f.name] = convert(config[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from exc
    return cls(**kwargs)
