"""marshmallow schemas of ``GET /export`` (also the source of its OpenAPI doc)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from blueprints.schemas import SymbolQuery, TimeField
from core.timeframes import TIMEFRAMES
from services.export import FORMATS


class ExportQuery(SymbolQuery):
    """``GET /export`` query: the series, the timeframe, ``[start, end)`` and the format."""

    timeframe = fields.String(load_default="1m", validate=validate.OneOf(list(TIMEFRAMES)))
    start = TimeField(required=True)
    end = TimeField(required=True)
    format = fields.String(required=True, validate=validate.OneOf(list(FORMATS)))
    backfill = fields.Boolean(load_default=False)

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["end"] <= data["start"]:
            raise ValidationError("end must be after start", "end")
