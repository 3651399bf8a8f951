"""``GET /api/v1/export``: every closed bar of a range in one streamed answer (CSV, JSON lines,
Parquet or Arrow), from storage only; see ``services/export/`` and docs/api.md, *Bulk history*."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, Response, current_app, jsonify, request

from app_extensions.export import get_exporter
from app_extensions.prepared_answers import accepted_encoding, etag_matches
from app_extensions.ratelimit import get_ratelimiter
from app_extensions.services import get_services
from blueprints.common import load_query
from blueprints.export_schemas import ExportQuery
from core.errors import InvalidParameter, RangeNotStored
from core.types import Series
from services.export import FORMATS, ExportPlan, Format

export_blueprint = Blueprint("export", __name__, url_prefix="/api/v1")
QUERY = ExportQuery()


@export_blueprint.get("/export")
async def export() -> Response | tuple[Response, int]:
    q = load_query(QUERY)
    services, exporter = get_services(current_app), get_exporter(current_app)
    services.markets.check_provider(q["market"], q["provider"])
    plan = exporter.plan(Series(q["market"], q["provider"], q["symbol"]), q["timeframe"], q["start"], q["end"])
    fmt = FORMATS[q["format"]]
    try:
        stored = await exporter.check(plan)
    except RangeNotStored as exc:
        if not q["backfill"]:
            raise
        return await _backfill(plan.series, exc.missing)
    encoding = accepted_encoding(request.headers.get("Accept-Encoding", "")) if fmt.compressible else None
    etag = exporter.etag(plan, stored, fmt)
    if etag_matches(request.headers.get("If-None-Match", ""), etag):
        not_modified = Response(b"", status=304, headers={"ETag": etag})
        del not_modified.headers["Content-Type"]  # a 304 has no body
        return not_modified
    # A GET takes an export slot (503 when EXPORT_MAX_CONCURRENT run already) until its stream ends.
    body = _no_body() if request.method == "HEAD" else exporter.reserve().hold(exporter.stream(plan, fmt, encoding))
    response = Response(body, status=200, headers=_headers(plan, fmt, etag, encoding))
    response.timeout = None  # streamed for as long as it takes (EXPORT_TIMEOUT bounds the COPY)
    return response


def _headers(plan: ExportPlan, fmt: Format, etag: str, encoding: str | None) -> dict[str, str]:
    """The streamed answer's headers: type, ETag (one per encoding), file name, encoding."""
    headers = {"Content-Type": fmt.media_type, "ETag": f'{etag[:-1]}-{encoding}"' if encoding else etag,
               "Content-Disposition": f'attachment; filename="{plan.file_name(fmt)}"'}
    if fmt.compressible:
        headers["Vary"] = "Accept-Encoding"
    if encoding:
        headers["Content-Encoding"] = encoding
    return headers


async def _no_body() -> AsyncIterator[bytes]:
    """A HEAD's body: nothing, and no export run for it (no Content-Length either)."""
    return
    yield b""


async def _backfill(series: Series, missing: list[tuple[int, int]]) -> tuple[Response, int]:
    """202 with a backfill job over the span of the missing minutes, the caller's as POST /backfill's
    (BACKFILL_MAX_QUEUED_PER_CLIENT, overlapping ranges merged)."""
    manager = get_services(current_app).backfill
    start, end = missing[0][0], missing[-1][1]
    if end - start > manager.max_range_ms:
        days = manager.max_range_ms // 86_400_000
        raise InvalidParameter(f"the missing minutes span more than {days} days (BACKFILL_MAX_RANGE_DAYS):"
                               " backfill them in parts with POST /backfill",
                               details={"backfill": [f"missing minutes span more than {days} days"]})
    client = get_ratelimiter(current_app).client_identity(request.headers, request.remote_addr)
    job, _ = await manager.submit(series, start, end, client)
    return jsonify({"job_id": job.id, "status": job.status}), 202
