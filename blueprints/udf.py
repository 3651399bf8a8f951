"""TradingView's UDF adapter endpoints under ``/udf``: thin adapters over ``services.udf``.

Errors keep their HTTP status (400, 404, 429, 503 with ``Retry-After``...) but carry UDF's body,
``{"s": "error", "errmsg": "..."}``, which TradingView's UDF adapter reads whatever the status.
"""

from __future__ import annotations

import json

from quart import Blueprint, Response, current_app, jsonify

from app_extensions.errors import error_response
from app_extensions.services import get_services
from blueprints.common import load_query
from blueprints.udf_schemas import UdfHistoryQuery, UdfSearchQuery, UdfSymbolQuery
from core.errors import AppError
from services.udf import UdfService

udf_blueprint = Blueprint("udf", __name__, url_prefix="/udf")
SCHEMAS = {"symbol": UdfSymbolQuery(), "search": UdfSearchQuery(), "history": UdfHistoryQuery()}


def _udf() -> UdfService:
    return get_services(current_app).udf


@udf_blueprint.errorhandler(AppError)
async def _udf_error(exc: AppError) -> Response:
    response = error_response(exc)  # status and Retry-After as on REST
    response.set_data(json.dumps({"s": "error", "errmsg": exc.message}))
    return response


@udf_blueprint.get("/config")
async def config() -> Response:
    return jsonify(_udf().config())


@udf_blueprint.get("/symbols")
async def symbols() -> Response:
    q = load_query(SCHEMAS["symbol"])
    return jsonify(await _udf().symbol_info(q["symbol"]))


@udf_blueprint.get("/search")
async def search() -> Response:
    q = load_query(SCHEMAS["search"])
    return jsonify(await _udf().search(q["query"], q["type"], q["exchange"], q["limit"]))


@udf_blueprint.get("/history")
async def history() -> Response:
    q = load_query(SCHEMAS["history"])
    return jsonify(await _udf().history(q["symbol"], q["resolution"], q["start"], q["to"], q["countback"]))


@udf_blueprint.get("/time")
async def server_time() -> Response:
    return Response(str(UdfService.server_time()), mimetype="text/plain")
