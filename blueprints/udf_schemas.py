"""marshmallow schemas of the UDF endpoints' query strings (``/udf``, TradingView's names)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from services.udf import MONTHLY, RESOLUTIONS

#: Seconds since the epoch, up to the year 3000 (a time in ms is refused, not read as year 50000).
SECONDS = validate.Range(0, 32_503_679_999, error="must be seconds since the epoch (0 to 32503679999)")


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


class UdfSymbolQuery(_Query):
    symbol = fields.String(required=True, validate=validate.Length(1, 128),
                           metadata={"example": "SIM:SIM/USD"})


class UdfSearchQuery(_Query):
    query = fields.String(load_default="", validate=validate.Length(0, 64), metadata={"example": "SIM"})
    type = fields.String(load_default="", validate=validate.Length(0, 32))
    exchange = fields.String(load_default="", validate=validate.Length(0, 64))
    limit = fields.Integer(load_default=30, validate=validate.Range(1, 1000))


class UdfHistoryQuery(_Query):
    symbol = fields.String(required=True, validate=validate.Length(1, 128),
                           metadata={"example": "SIM:SIM/USD"})
    resolution = fields.String(required=True, validate=validate.OneOf([*RESOLUTIONS, *MONTHLY]),
                               metadata={"example": "60"})
    start = fields.Integer(data_key="from", load_default=None, validate=SECONDS,
                           metadata={"example": 1704067200, "description": "seconds, inclusive"})
    to = fields.Integer(required=True, validate=SECONDS,
                        metadata={"example": 1704085200, "description": "seconds, exclusive"})
    countback = fields.Integer(load_default=None, validate=validate.Range(1, 1_000_000),
                               metadata={"description": "bars ending before to; wins over from"})

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("countback") is not None:
            return
        if data.get("start") is None:
            raise ValidationError("from is required unless countback is given", "from")
        if data["to"] <= data["start"]:
            raise ValidationError("to must be after from", "to")
