"""marshmallow schemas of ``/credentials`` (also the source of their OpenAPI doc)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class CredentialsBody(Schema):
    """``PUT /credentials/<provider>`` body: the exchange key, its secret and, for exchanges that
    have one, the passphrase; ``testnet`` selects the exchange's sandbox."""

    class Meta:
        unknown = EXCLUDE

    api_key = fields.String(required=True, validate=validate.Length(1, 512))
    secret = fields.String(required=True, validate=validate.Length(1, 4096))
    password = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 512))
    testnet = fields.Boolean(load_default=False)


class CredentialsEntry(Schema):
    provider = fields.String(required=True)
    testnet = fields.Boolean(required=True)
    key_hint = fields.String(required=True, metadata={"description": "last characters of the API key"})
    updated_at = fields.Integer(required=True, metadata={"description": "ms since the epoch"})


class CredentialsList(Schema):
    """``GET /credentials`` answer: the caller's own, never a secret."""

    credentials = fields.List(fields.Nested(CredentialsEntry), required=True)
