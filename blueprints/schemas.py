"""marshmallow schemas for every REST parameter and body (also the source of the OpenAPI doc)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from core.timeframes import TIMEFRAMES

#: Integer milliseconds as text: ASCII digits only (``str.isdigit`` also accepts "²", which
#: ``int`` refuses), and short enough that ``int`` never hits its digit limit.
_INTEGER = re.compile(r"-?[0-9]{1,20}")
#: A symbol is printable text: control characters (NUL above all, which PostgreSQL refuses in
#: text) are a 400, not a database error.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("must not hold control characters")


SYMBOL_RULES: list[Callable[[Any], Any]] = [validate.Length(1, 64), _printable]


class TimeField(fields.Field):
    """Integer milliseconds since the epoch, or ISO-8601 with a zone; loads as int ms."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("must be integer milliseconds or ISO-8601 with a zone")
        if isinstance(value, int):
            ms = value
        elif isinstance(value, str) and _INTEGER.fullmatch(value):
            ms = int(value)
        elif isinstance(value, str):
            try:
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValidationError("must be integer milliseconds or ISO-8601 with a zone") from exc
            if dt.tzinfo is None:
                raise ValidationError("ISO-8601 times must carry a zone (e.g. Z or +00:00)")
            ms = int(dt.timestamp() * 1000)
        else:
            raise ValidationError("must be integer milliseconds or ISO-8601 with a zone")
        if not 0 <= ms < 32_503_680_000_000:  # year 3000
            raise ValidationError("out of range")
        return ms


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


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBody, required=True)


class MarketsAnswer(Schema):
    markets = fields.List(fields.Dict())


class ProvidersAnswer(Schema):
    market = fields.String()
    providers = fields.List(fields.Dict())


class SymbolsAnswer(Schema):
    market = fields.String()
    provider = fields.String()
    symbols = fields.List(fields.String())


class OhlcvAnswer(Schema):
    market = fields.String()
    provider = fields.String()
    symbol = fields.String()
    timeframe = fields.String()
    bars = fields.List(fields.List(fields.Float()))
    partial = fields.Boolean()  # type: ignore[assignment]
    next = fields.Integer(allow_none=True)


class TickerAnswer(Schema):
    market = fields.String()
    provider = fields.String()
    symbol = fields.String()
    ts = fields.Integer()
    last = fields.Float()
    bid = fields.Float(allow_none=True)
    ask = fields.Float(allow_none=True)
