"""``GET /api/v1/openapi.json``: the OpenAPI 3 document, generated with apispec from the marshmallow
schemas, with examples of parameters and answers. ``GET /api/v1/docs`` renders it with Swagger UI
(``blueprints/page.py``; every file served from here, no CDN).

Each REST operation is one row of ``OPERATIONS``; only rows whose route the app registered are
documented, and ``tests/blueprints/test_openapi.py`` fails when a registered REST route has no row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema
from quart import Blueprint, Quart, Response, current_app, jsonify

from app_extensions.services import get_services
from blueprints import backfill_schemas as backfill
from blueprints import credentials_schemas as credentials
from blueprints import export_schemas as export
from blueprints import openapi_examples as examples
from blueprints import openapi_schemas as doc
from blueprints.schemas import MarketQuery, OhlcvQuery, ProviderQuery, SymbolQuery, TimeField
from core.times import MAX_MS, MIN_MS
from services.export import FORMATS

openapi_blueprint = Blueprint("openapi", __name__, url_prefix="/api/v1")

_ERROR_TEXT = {
    304: "Not modified (If-None-Match matched the ETag)",
    400: "invalid_parameter / invalid_json: details maps field to messages",
    401: "unauthorized: auth is on and the API key is missing or wrong",
    403: "forbidden: the endpoint needs a user (auth is off)",
    404: "unknown_market, unknown_provider, unknown_symbol or not_found",
    409: "range_not_stored: the 1m series has minutes in the range that are neither stored nor"
         " verified empty; details: missing_minutes and the first missing ranges",
    413: "payload_too_large: the request body is larger than MAX_BODY_BYTES",
    429: "rate_limited: see Retry-After",
    502: "provider_error: the exchange answered with an error",
    503: "provider_unavailable or dependency_unavailable",
    500: "internal_error: the answer carries the request id",
}
_COMMON = (401, 429, 500)


@dataclass(frozen=True)
class Operation:
    """One documented REST operation (path in OpenAPI form, relative to /api/v1)."""

    path: str
    method: str
    summary: str
    answer: type[Schema] | None
    status: int = 200
    query: type[Schema] | None = None
    body: type[Schema] | None = None
    errors: tuple[int, ...] = ()
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: tuple[str, ...] = ()
    #: Content types of a non-JSON answer (a file: ``/export``), in place of ``answer``'s JSON.
    media_types: tuple[str, ...] = ()
    #: A 202 answer besides the usual one (``/export?backfill=true`` queues a backfill).
    accepted: type[Schema] | None = None


OPERATIONS: list[Operation] = [
    Operation("/markets", "get", "Markets with their providers and timeframes", doc.MarketsDoc),
    Operation("/providers", "get", "Providers of a market", doc.ProvidersDoc, query=MarketQuery,
              errors=(400, 404)),
    Operation("/symbols", "get", "Symbols of a provider", doc.SymbolsDoc, query=ProviderQuery,
              errors=(400, 404, 502, 503)),
    Operation("/ohlcv", "get", "Bars of a series (CCXT arrays), paged by next", doc.OhlcvDoc,
              query=OhlcvQuery, errors=(304, 400, 404, 502, 503),
              headers=("X-Data-Source", "ETag", "X-Data-Incomplete", "X-Backfill-Job")),
    Operation("/ticker", "get", "Last price, bid and ask", doc.TickerDoc, query=SymbolQuery,
              errors=(400, 404, 502, 503)),
    Operation("/openapi.json", "get", "This document", None),
    Operation("/backfill", "post", "Queue a backfill of the 1m series over [start, end)",
              backfill.BackfillAccepted, status=202, body=backfill.BackfillBody,
              errors=(400, 404, 413, 503)),
    Operation("/backfill", "get", "Backfill jobs, newest first", backfill.JobListAnswer,
              query=backfill.JobListQuery, errors=(400, 503)),
    Operation("/backfill/{job_id}", "get", "A backfill job's state", backfill.BackfillJobAnswer,
              errors=(404, 503),
              path_params={"job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}),
    Operation("/channels", "get", "The live WebSocket channels of the whole cluster",
              doc.ChannelsDoc, errors=(503,)),
    Operation("/export", "get", "Every closed bar of [start, end) in one streamed file (CSV, JSON lines,"
              " Parquet, Arrow), from storage only", None, query=export.ExportQuery,
              errors=(304, 400, 404, 409, 503), media_types=tuple(f.media_type for f in FORMATS.values()),
              accepted=backfill.BackfillAccepted,
              headers=("ETag", "Content-Disposition", "Content-Encoding", "Vary")),
    Operation("/gaps", "get", "Missing and verified-empty ranges of the 1m series",
              backfill.GapsAnswer, query=backfill.GapsQuery, errors=(400, 404, 503)),
    Operation("/credentials/{provider}", "put", "Store your own credentials for a provider (encrypted)",
              None, status=204, body=credentials.CredentialsBody, errors=(400, 403, 404, 413, 503),
              path_params={"provider": {"type": "string"}}),
    Operation("/credentials", "get", "Your stored credentials (never a secret)",
              credentials.CredentialsList, errors=(403, 503)),
    Operation("/credentials/{provider}", "delete", "Forget your credentials for a provider", None,
              status=204, errors=(403, 404, 503), path_params={"provider": {"type": "string"}}),
]


#: Swagger UI groups operations by tag: a path's first segment names its group.
TAGS = {
    "markets": "market", "providers": "market", "symbols": "market", "ohlcv": "market", "ticker": "market",
    "backfill": "backfill", "gaps": "backfill", "channels": "live", "credentials": "credentials",
    "openapi.json": "spec",
}
TAG_TEXT = {
    "market": "Markets, providers, symbols, bars and tickers",
    "backfill": "Backfill jobs and the gaps of stored series",
    "export": "Bulk history in CSV, JSON lines, Parquet or Arrow",
    "live": "Live channels (the bars themselves come over WebSocket /api/v1/ws)",
    "credentials": "Your own exchange credentials (auth on)",
    "spec": "This document",
}


def _tag(path: str) -> str:
    first = path.strip("/").split("/")[0]
    return TAGS.get(first, first)


def _time_field(self: Any, fld: Any, **kwargs: Any) -> dict[str, Any]:
    """TimeField: integer ms since the epoch, or ISO-8601 with a zone."""
    if not isinstance(fld, TimeField):
        return {}
    return {"oneOf": [
        {"type": "integer", "minimum": MIN_MS, "maximum": MAX_MS - 1},
        {"type": "string", "format": "date-time"},
    ], "description": "integer ms since the epoch, or ISO-8601 with a zone; from 1973 (a smaller"
                      " integer is seconds and is refused) to 3000"
                      + (f"; {fld.metadata['description']}" if "description" in fld.metadata else ""),
        "example": fld.metadata.get("example", doc.TIME_EXAMPLES.get(fld.name or "", doc.TIME_EXAMPLES["start"]))}


def _quart_rule(path: str) -> str:
    return "/api/v1" + path.replace("{", "<").replace("}", ">")


def _responses(op: Operation) -> dict[str, Any]:
    rid = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    limits = {h: {"$ref": f"#/components/headers/{h}"} for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining")}
    ok_headers = {**rid, **limits, **{h: {"schema": {"type": "string"}} for h in op.headers}}
    ok: dict[str, Any] = {"description": "OK", "headers": ok_headers}
    if op.media_types:
        ok["content"] = {t: {"schema": {"type": "string", "format": "binary"}} for t in op.media_types}
    elif op.status != 204:
        ok["content"] = {"application/json": {"schema": op.answer if op.answer else {"type": "object"}}}
        if (op.path, op.method) in examples.ANSWERS:
            ok["content"]["application/json"]["example"] = examples.ANSWERS[(op.path, op.method)]
    out: dict[str, Any] = {str(op.status): ok}
    if op.accepted is not None:
        out["202"] = {"description": "Accepted: a backfill job was queued", "headers": rid,
                      "content": {"application/json": {"schema": op.accepted}}}
    for status in sorted({*op.errors, *_COMMON}):
        if status == 304:
            out["304"] = {"description": _ERROR_TEXT[304], "headers": {**rid, "ETag": {"schema": {"type": "string"}}}}
            continue
        headers = dict(rid)
        if status in (429, 503):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if status == 429:
            headers.update(limits)
        out[str(status)] = {"description": _ERROR_TEXT[status], "headers": headers,
                            "content": {"application/json": {"schema": doc.ErrorDoc, "example": examples.ERROR}}}
    return out


def build_spec(app: Quart) -> dict[str, Any]:
    """The OpenAPI document of the REST routes ``app`` registered."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Market data service", version="1", openapi_version="3.0.3", plugins=[plugin],
        info={"description": "OHLCV bars, tickers and backfills of crypto exchanges, US stocks and the "
                             "built-in sim market. Every error answers {\"error\": {\"code\", \"message\", "
                             "\"details\"}}. Live candles: WebSocket /api/v1/ws (JSON frames); TradingView's "
                             "UDF: /udf. The full reference: [docs/api.md](/api/v1/docs/api.md)."},
        servers=[{"url": "/api/v1"}],
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_time_field)
    spec.components.schema("ErrorDoc", schema=doc.ErrorDoc)
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    int_header = {"schema": {"type": "integer"}}
    spec.components.header("X-Request-ID", {"schema": {"type": "string"}, "description": "request id"})
    spec.components.header("X-RateLimit-Limit", {**int_header, "description": "requests per window"})
    spec.components.header("X-RateLimit-Remaining", {**int_header, "description": "left in the window"})
    spec.components.header("Retry-After", {**int_header, "description": "seconds to wait"})
    registered = {(r.rule, m.lower()) for r in app.url_map.iter_rules() for m in (r.methods or ())}
    by_path: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if (_quart_rule(op.path), op.method) not in registered:
            continue
        params: list[dict[str, Any]] = [
            {"in": "path", "name": name, "required": True, "schema": schema}
            for name, schema in op.path_params.items()
        ]
        if op.query is not None:
            params.append({"in": "query", "schema": op.query})
        operation: dict[str, Any] = {"summary": op.summary, "tags": [_tag(op.path)], "parameters": params,
                                     "responses": _responses(op)}
        if app.config.get("AUTH_ENABLED") and op.path != "/openapi.json":
            operation["security"] = [{"ApiKey": []}]
        if op.body is not None:
            body: dict[str, Any] = {"schema": op.body}
            if (op.path, op.method) in examples.BODIES:
                body["example"] = examples.BODIES[(op.path, op.method)]
            operation["requestBody"] = {"required": True, "content": {"application/json": body}}
        by_path.setdefault(op.path, {})[op.method] = operation
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    used = {_tag(path) for path in by_path}
    for tag in sorted(used, key=[*TAG_TEXT, *sorted(used)].index):  # in TAG_TEXT's order
        spec.tag({"name": tag, **({"description": TAG_TEXT[tag]} if tag in TAG_TEXT else {})})
    document = spec.to_dict()
    enums = doc.catalogue_enums(get_services(app).markets.markets())
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                example = examples.parameter(path, param["name"])
                if example is not None:
                    param["example"] = example
                if param["in"] == "query" and param["name"] in enums:
                    param["schema"]["enum"] = enums[param["name"]]
    return document


@openapi_blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    cached = current_app.extensions.get("openapi_doc")
    if cached is None:
        cached = current_app.extensions["openapi_doc"] = build_spec(current_app)
    return jsonify(cached)

