"""``GET /api/v1/channels``: the live channels of the whole cluster, for operators and dashboards
(subscribers, feed, live/stale, the newest bar and the lag of its publish)."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify

from app_extensions.services import get_services

channels_blueprint = Blueprint("channels", __name__, url_prefix="/api/v1")


@channels_blueprint.get("/channels")
async def channels() -> Response:
    rows = await get_services(current_app).subscriptions.cluster_channels()
    return jsonify({"channels": rows})
