"""marshmallow schemas of the backfill and gaps endpoints (also the source of their OpenAPI doc)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from blueprints.schemas import SYMBOL_RULES, SymbolQuery, TimeField

JOB_STATES = ["queued", "running", "done", "failed"]


def _check_range(data: dict[str, Any]) -> None:
    if data["end"] <= data["start"]:
        raise ValidationError("end must be after start", "end")


class BackfillBody(Schema):
    """``POST /backfill`` body: the 1m series and the range [start, end) to complete."""

    class Meta:
        unknown = EXCLUDE

    market = fields.String(required=True, validate=validate.Length(1, 32))
    provider = fields.String(required=True, validate=validate.Length(1, 64))
    symbol = fields.String(required=True, validate=SYMBOL_RULES)
    start = TimeField(required=True)
    end = TimeField(required=True)

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_range(data)


class GapsQuery(SymbolQuery):
    """``GET /gaps`` query."""

    start = TimeField(required=True)
    end = TimeField(required=True, metadata={"description": (
        "exclusive; after start, at most BACKFILL_MAX_RANGE_DAYS (default 3660) days after it")})

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_range(data)


class JobListQuery(Schema):
    """``GET /backfill`` query: jobs newest first, optionally of one status."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(load_default=None, validate=validate.OneOf(JOB_STATES))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class JobIdPath(Schema):
    """``GET /backfill/<job_id>`` path parameter."""

    job_id = fields.String(required=True, validate=validate.Regexp(r"^[0-9a-f]{32}$"))


class BackfillAccepted(Schema):
    """``202`` answer of ``POST /backfill``."""

    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["queued", "running"]))


class BackfillJobAnswer(Schema):
    """``GET /backfill/<job_id>`` answer."""

    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    progress = fields.Float(required=True, metadata={"description": "share of chunks done, 0..1"})
    bars_written = fields.Integer(required=True)
    error = fields.String(allow_none=True, required=True, metadata={
        "description": "why the job failed; while a running job retries, its last failure"})
    market = fields.String(required=True)
    provider = fields.String(required=True)
    symbol = fields.String(required=True)
    start = fields.Integer(required=True, metadata={"description": "ms, inclusive"})
    end = fields.Integer(required=True, metadata={"description": "ms, exclusive"})
    chunks_total = fields.Integer()
    chunks_done = fields.Integer()


class JobListAnswer(Schema):
    """``GET /backfill`` answer: jobs newest first."""

    jobs = fields.List(fields.Nested(BackfillJobAnswer), required=True)


class GapsAnswer(Schema):
    """``GET /gaps`` answer: half-open [start, end) ranges in ms of the 1m series."""

    missing = fields.List(fields.List(fields.Integer()), required=True, metadata={
        "description": "ranges never fetched complete from the provider"})
    verified_empty = fields.List(fields.List(fields.Integer()), required=True, metadata={
        "description": "ranges the provider answered with no bars (a hole it has itself)"})
