"""Frozen settings objects for services, built once from the app config at start-up.

Public names (stable): ``setting``, ``build``.

A settings dataclass declares each field with ``setting("CONFIG_KEY")``: the field's default and
check are the key's declaration in ``config.py`` (written nowhere else). ``build(cls, config)``
reads the keys the config holds, converted to the declared type and checked, and keeps the
declared defaults for the others, so services never look settings up at call sites.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import field, fields
from typing import Any, TypeVar

from config import ConfigError, declared

S = TypeVar("S")


def setting(key: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A settings field read from ``config[key]``, with the declared default (``convert``: the
    declared type's constructor unless given)."""
    default = declared(key).default
    meta = {"key": key, "convert": convert}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def build(cls: type[S], config: Mapping[str, Any]) -> S:
    """``cls`` from ``config``; raises ``ConfigError`` (a ``ValueError``) naming the key whose
    value is wrong."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("key")
        if key is None or config.get(key) is None:
            continue
        declaration = declared(key)
        convert: Callable[[Any], Any] = f.metadata.get("convert") or type(declaration.default)
        try:
            value = convert(config[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: {exc}") from exc
        declaration.validate(value)
        kwargs[f.name] = value
    return cls(**kwargs)
