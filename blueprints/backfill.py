"""REST endpoints of backfills (``/api/v1``): queue and inspect jobs, list gaps of a 1m series."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError
from quart import Blueprint, Response, current_app, g, jsonify, request

from app_extensions.auth import get_auth
from app_extensions.ratelimit import get_ratelimiter
from app_extensions.services import get_services
from blueprints.backfill_schemas import BackfillBody, GapsQuery, JobIdPath, JobListQuery
from blueprints.common import load_body, load_query
from core.errors import InvalidParameter, NotFound
from core.types import Series

backfill_blueprint = Blueprint("backfill", __name__, url_prefix="/api/v1")


def _client() -> str:
    """Whose jobs these are: the caller's API key, else its IP (as the rate limits see it)."""
    return get_ratelimiter(current_app).client_identity(request.headers, request.remote_addr)


def _check_span(data: dict[str, Any], max_range_ms: int) -> None:
    if data["end"] - data["start"] > max_range_ms:
        days = max_range_ms // 86_400_000
        raise InvalidParameter(f"end: at most {days} days after start",
                               details={"end": [f"at most {days} days after start"]})


@backfill_blueprint.post("/backfill")
async def create_backfill() -> tuple[Response, int]:
    body = await load_body(BackfillBody())
    manager = get_services(current_app).backfill
    _check_span(body, manager.max_range_ms)
    series = Series(body["market"], body["provider"], body["symbol"])
    job, _ = await manager.submit(series, body["start"], body["end"], _client())
    return jsonify({"job_id": job.id, "status": job.status}), 202


@backfill_blueprint.get("/backfill")
async def list_backfills() -> Response:
    q = load_query(JobListQuery())
    operator = get_auth(current_app).is_operator(g.get("api_key_id"))
    found = await get_services(current_app).backfill.list_jobs(
        q["status"], q["limit"], None if operator else _client())
    return jsonify({"jobs": [job.to_api() for job in found]})


@backfill_blueprint.get("/backfill/<job_id>")
async def get_backfill(job_id: str) -> Response:
    try:
        JobIdPath().load({"job_id": job_id})
    except ValidationError as exc:
        raise NotFound(f"no backfill job {job_id!r}") from exc
    job = await get_services(current_app).backfill.get_job(job_id)
    return jsonify(job.to_api())


@backfill_blueprint.get("/gaps")
async def gaps() -> Response:
    q = load_query(GapsQuery())
    services = get_services(current_app)
    _check_span(q, services.backfill.max_range_ms)
    series = Series(q["market"], q["provider"], q["symbol"])
    await services.backfill.check_series(series)  # 404 unknown_* as /ohlcv answers
    return jsonify(await services.backfill.gaps(series, q["start"], q["end"]))
