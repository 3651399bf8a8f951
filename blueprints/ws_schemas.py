"""marshmallow schemas of the client messages on ``/api/v1/ws`` (see docs/api.md, WebSocket)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from blueprints.schemas import SYMBOL_RULES, TimeField
from core.timeframes import TIMEFRAMES

OPS = ("subscribe", "unsubscribe", "ping", "auth")


class MessageId(fields.Field):
    """The optional client ``id``: a string (up to 64 characters) or an integer, echoed as is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError("must be a string or an integer")
        if isinstance(value, str) and len(value) > 64:
            raise ValidationError("must be at most 64 characters")
        return value


class _Message(Schema):
    class Meta:
        unknown = EXCLUDE

    op = fields.String(required=True, validate=validate.OneOf(OPS))
    id = MessageId(load_default=None, allow_none=True)


class SubscribeMessage(_Message):
    market = fields.String(required=True, validate=validate.Length(1, 32))
    provider = fields.String(required=True, validate=validate.Length(1, 64))
    symbol = fields.String(required=True, validate=SYMBOL_RULES)  # the same rules as REST
    timeframe = fields.String(load_default="1m", validate=validate.OneOf(list(TIMEFRAMES)))
    history = fields.Integer(load_default=100, strict=True, validate=validate.Range(0, 1000))
    #: Resume from this bar (ms); the REST time rules: seconds (before 1973 in ms) are refused.
    since = TimeField(load_default=None, allow_none=True)


class UnsubscribeMessage(_Message):
    channel = fields.String(required=True, validate=validate.Length(1, 200))


class PingMessage(_Message):
    pass


class AuthMessage(_Message):
    """The API key, as the first message of a connection whose handshake carried none."""

    api_key = fields.String(required=True, validate=validate.Length(1, 512))


#: One instance each, made once: a schema instance is reusable, and making one per message cost
#: its deep copy of the fields and left ~40 objects of cyclic garbage per subscribe.
SCHEMAS: dict[str, _Message] = {
    "subscribe": SubscribeMessage(),
    "unsubscribe": UnsubscribeMessage(),
    "ping": PingMessage(),
    "auth": AuthMessage(),
}
