"""Application factory. Nothing is created at import time: ``create_app()`` builds everything, and
changes nothing else in the process (the event loop, the garbage collector and signals are the
serving entry point's: ``serve.py``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from quart import Quart

from app_extensions.backfill_cli import init_backfill_cli
from app_extensions.cli import init_cli
from app_extensions.credentials import Credentials
from app_extensions.db_pool import Database
from app_extensions.errors import init_error_handlers
from app_extensions.export import init_export
from app_extensions.operations import init_operations
from app_extensions.redis_client import RedisClient
from app_extensions.request_context import configure_logging, init_request_context
from app_extensions.response_cache import ResponseCache
from app_extensions.services import Services
from app_extensions.warmup import Warmup
from blueprints.backfill import backfill_blueprint
from blueprints.channels import channels_blueprint
from blueprints.credentials import credentials_blueprint
from blueprints.export import export_blueprint
from blueprints.health import health_blueprint
from blueprints.market import market_blueprint
from blueprints.openapi import openapi_blueprint
from blueprints.page import page_blueprint
from blueprints.udf import udf_blueprint
from blueprints.websocket import websocket_blueprint
from blueprints.ws_asgi import WebsocketReceive
from config import BaseConfig, load_config

log = logging.getLogger(__name__)


def create_app(config: BaseConfig | dict[str, Any] | None = None) -> Quart:
    """Build the app. ``config``: a config object, a mapping of overrides on the ``APP_ENV``
    config, or None for ``APP_ENV`` with the environment applied."""
    if isinstance(config, BaseConfig):
        cfg = config
    else:
        cfg = load_config()
        for name, value in (config or {}).items():
            setattr(cfg, name, value)
    cfg.validate()
    app = Quart(__name__)
    app.config.update(cfg.as_dict())
    app.config["MAX_CONTENT_LENGTH"] = int(cfg.MAX_BODY_BYTES)  # Quart's name for the body limit
    configure_logging(app.config)
    init_request_context(app)
    init_error_handlers(app)
    # Each owner is built from the ones it uses (nothing connects before before_serving).
    database, redis = Database(app), RedisClient(app)
    services = Services(database, redis, app)  # every service object, built in order
    response_cache = ResponseCache(app)
    warmup = Warmup(services, app)  # cache warming's tasks
    # Extensions open in this order (before_serving) and close in reverse: warm-up tasks first
    # (they use the services), workers and plugins, then Redis, then the pool. Each bounds its own
    # steps by SHUTDOWN_TIMEOUT; the outer limit is only a safety net, and one extension failing
    # to close does not keep the next open.
    extensions: list[Database | RedisClient | Services | ResponseCache | Warmup] = [
        database, redis, services, response_cache, warmup]

    @app.after_serving
    async def _shutdown() -> None:
        limit = 4 * float(app.config["SHUTDOWN_TIMEOUT"])
        for ext in reversed(extensions):
            try:
                await asyncio.wait_for(ext.close(), timeout=limit)
            except TimeoutError:
                log.warning("closing %s timed out", type(ext).__name__)
            except (OSError, RuntimeError) as exc:
                log.warning("closing %s failed: %s", type(ext).__name__, exc, exc_info=True)

    app.register_blueprint(health_blueprint)
    app.register_blueprint(market_blueprint)
    app.register_blueprint(backfill_blueprint)
    app.register_blueprint(export_blueprint)  # bulk history (services/export/)
    app.register_blueprint(websocket_blueprint)
    app.asgi_app = WebsocketReceive(app.asgi_app)  # type: ignore[assignment,method-assign]  # ws_asgi.py
    app.register_blueprint(channels_blueprint)
    app.register_blueprint(openapi_blueprint)
    app.register_blueprint(credentials_blueprint)
    app.register_blueprint(page_blueprint)  # the chart page at / and the docs viewer
    app.register_blueprint(udf_blueprint)  # TradingView's UDF under /udf
    Credentials(database, app)  # users' exchange credentials
    init_operations(app)  # CORS, API keys, rate limits, the request guard
    init_cli(app)
    init_backfill_cli(app)
    init_export(app, database)  # the Exporter and the export command
    return app


if __name__ == "__main__":  # the same as `python serve.py`: serving, and its process-wide tuning
    import serve

    serve.main()
