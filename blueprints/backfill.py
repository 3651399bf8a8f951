"""REST endpoints of backfills (``/api/v1``): queue and inspect jobs, list gaps of a 1m series."""

from __future__ import annotations

from marshmallow import ValidationError
from quart import Blueprint, Response, current_app, jsonify

from app_extensions.services import get_services
from blueprints.backfill_schemas import BackfillBody, GapsQuery, JobIdPath
from blueprints.common import load_body, load_query
from services.errors import InvalidParameter, NotFound
from services.storage import Series

backfill_blueprint = Blueprint("backfill", __name__, url_prefix="/api/v1")


@backfill_blueprint.post("/backfill")
async def create_backfill() -> tuple[Response, int]:
    body = await load_body(BackfillBody())
    manager = get_services(current_app).backfill
    if body["end"] - body["start"] > manager.max_range_ms:
        raise InvalidParameter("range too long for one backfill job",
                               details={"end": [f"at most {manager.max_range_ms // 86_400_000} days"
                                                " after start"]})
    series = Series(body["market"], body["provider"], body["symbol"])
    job, _ = await manager.submit(series, body["start"], body["end"])
    return jsonify({"job_id": job.id, "status": job.status}), 202


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
    services.markets.check_provider(q["market"], q["provider"])
    series = Series(q["market"], q["provider"], q["symbol"])
    return jsonify(await services.backfill.gaps(series, q["start"], q["end"]))
