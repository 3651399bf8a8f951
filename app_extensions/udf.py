"""Wires TradingView's UDF service (``services.udf``) into the app; ``blueprints/udf.py`` serves it."""

from __future__ import annotations

from quart import Quart

from app_extensions.services import Services
from services.udf import UdfService


def init_udf(app: Quart, services: Services) -> None:
    """Build the UDF service over the app's ``services``."""
    service = app.extensions["udf"] = UdfService(services.markets, services.orchestrator,
                                                 int(app.config["OHLCV_MAX_LIMIT"]),
                                                 float(app.config["UDF_SEARCH_SECONDS"]))
    app.after_serving(service.close)  # symbol-list fetches a search left running
