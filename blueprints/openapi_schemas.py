"""Answer schemas of the OpenAPI document where ``blueprints/schemas.py`` leaves items untyped.

These describe what the handlers answer, field by field, so the document (and schemathesis, which
checks answers against it) catches an answer that breaks the contract.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from core.timeframes import TIMEFRAMES

#: Examples of a time parameter: ``end`` 3 h after ``start``, so an example request is valid (the
#: same example for both was refused: end must be after start).
TIME_EXAMPLES = {"start": 1704067200000, "end": 1704078000000}


def catalogue_enums(markets: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The values a ``market`` and a ``provider`` query parameter may take on this server (its
    ``GET /markets``): anything else is a 404, so the document says so (schemathesis then generates
    requests that reach the handlers instead of mostly refused ones)."""
    return {"market": sorted(m["market"] for m in markets),
            "provider": sorted({p for m in markets for p in m["providers"]})}


class MarketEntry(Schema):
    market = fields.String(required=True)
    providers = fields.List(fields.String(), required=True)
    timeframes = fields.List(fields.String(validate=validate.OneOf(list(TIMEFRAMES))), required=True)


class MarketsDoc(Schema):
    markets = fields.List(fields.Nested(MarketEntry), required=True)


class ProviderEntry(Schema):
    provider = fields.String(required=True)
    requires_credentials = fields.Boolean(required=True)
    configured = fields.Boolean(required=True)
    timeframes = fields.List(fields.String(), required=True)


class ProvidersDoc(Schema):
    market = fields.String(required=True)
    providers = fields.List(fields.Nested(ProviderEntry), required=True)


class SymbolsDoc(Schema):
    market = fields.String(required=True)
    provider = fields.String(required=True)
    symbols = fields.List(fields.String(), required=True)


class OhlcvDoc(Schema):
    market = fields.String(required=True)
    provider = fields.String(required=True)
    symbol = fields.String(required=True)
    timeframe = fields.String(required=True, validate=validate.OneOf(list(TIMEFRAMES)))
    bars = fields.List(
        fields.List(fields.Float(), validate=validate.Length(6, 6)), required=True,
        metadata={"description": "[ts, open, high, low, close, volume], ts ascending"},
    )
    partial = fields.Boolean(required=True)  # type: ignore[assignment]
    next = fields.Integer(required=True, allow_none=True)


class TickerDoc(Schema):
    market = fields.String(required=True)
    provider = fields.String(required=True)
    symbol = fields.String(required=True)
    ts = fields.Integer(required=True)
    last = fields.Float(required=True)
    bid = fields.Float(required=True, allow_none=True)
    ask = fields.Float(required=True, allow_none=True)
    stale = fields.Boolean(required=True, metadata={
        "description": "true: the provider failed and this is the last known ticker (X-Data-Stale)"})


class ChannelEntry(Schema):
    channel = fields.String(required=True, metadata={"description": "market:provider:symbol:timeframe"})
    subscribers = fields.Integer(required=True, metadata={
        "description": "WebSocket subscriptions to it on every instance (0 in its grace period)"})
    feed = fields.String(required=True, validate=validate.OneOf(["poll", "stream"]))
    state = fields.String(required=True, validate=validate.OneOf(["live", "stale"]))
    last_bar_ts = fields.Integer(required=True, allow_none=True,
                                 metadata={"description": "open time of the newest bar published"})
    lag_ms = fields.Integer(required=True, allow_none=True, metadata={
        "description": "how old the newest data was when published (grows while stale)"})


class ChannelsDoc(Schema):
    channels = fields.List(fields.Nested(ChannelEntry), required=True)


class ErrorBodyDoc(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorDoc(Schema):
    error = fields.Nested(ErrorBodyDoc, required=True)
