"""Helpers shared by blueprints: schema loading with docs/api.md's errors."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import Schema, ValidationError
from quart import request

from core.errors import InvalidJSON, InvalidParameter


def load_query(schema: Schema) -> dict[str, Any]:
    """Validate the query string; raises ``InvalidParameter`` with per-field details."""
    try:
        data: dict[str, Any] = schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise InvalidParameter(_summary(exc), details=_details(exc)) from exc
    return data


async def load_body(schema: Schema) -> dict[str, Any]:
    """Validate a JSON body; raises ``InvalidJSON`` or ``InvalidParameter``."""
    raw = await request.get_data(as_text=False)
    try:
        # bytes: json detects UTF-8/16/32 itself and raises ValueError (not a 500) on bad bytes.
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidJSON("body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise InvalidJSON("body must be a JSON object")
    try:
        data: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        raise InvalidParameter(_summary(exc), details=_details(exc)) from exc
    return data


def _details(exc: ValidationError) -> dict[str, Any]:
    messages = exc.messages
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _summary(exc: ValidationError) -> str:
    parts = []
    for field, msgs in _details(exc).items():
        text = msgs[0] if isinstance(msgs, list) and msgs else msgs
        parts.append(f"{field}: {text}")
    return "; ".join(parts) or "invalid parameters"
