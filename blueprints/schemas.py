"""marshmallow schemas of the REST parameters (also the source of the OpenAPI doc). The answers'
schemas are in ``blueprints/openapi_schemas.py``, the backfill endpoints' in ``backfill_schemas.py``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from core.timeframes import TIMEFRAMES
from core.times import TimeError, parse_time

#: A symbol is printable text: control characters (NUL above all, which PostgreSQL refuses in
#: text) are a 400, not a database error.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("must not hold control characters")


SYMBOL_RULES: list[Callable[[Any], Any]] = [validate.Length(1, 64), _printable]


class TimeField(fields.Field):
    """Integer milliseconds since the epoch, or ISO-8601 with a zone; loads as int ms
    (``core.times.parse_time``: seconds, zone-less and out-of-range times are refused)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        try:
            return parse_time(value)
        except TimeError as exc:
            raise ValidationError(str(exc)) from exc


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


class MarketQuery(_Query):
    market = fields.String(required=True, validate=validate.Length(1, 32))


class ProviderQuery(MarketQuery):
    provider = fields.String(required=True, validate=validate.Length(1, 64))


class SymbolQuery(ProviderQuery):
    symbol = fields.String(required=True, validate=SYMBOL_RULES)


class OhlcvQuery(SymbolQuery):
    timeframe = fields.String(load_default="1m", validate=validate.OneOf(list(TIMEFRAMES)))
    start = TimeField(load_default=None)
    end = TimeField(load_default=None)
    limit = fields.Integer(load_default=500, validate=validate.Range(1, 5000))

    @validates_schema
    def _order(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("start") is not None and data.get("end") is not None and data["end"] <= data["start"]:
            raise ValidationError("end must be after start", "end")
