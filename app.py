"""Application factory. Nothing is created at import time: ``create_app()`` builds everything."""

from __future__ import annotations

import asyncio
import gc
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
from app_extensions.resilience import Resilience
from app_extensions.response_cache import ResponseCache
from app_extensions.services import Services
from app_extensions.udf import init_udf
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
_frozen = False
#: Net new tracked objects that start a collection of the youngest generation (Python's: 700).
GC_YOUNG_THRESHOLD = 50_000


async def freeze_startup_objects() -> None:
    """Once per process, after start-up: move every object alive now (modules, CCXT's exchange
    classes, the plugins, the app) out of the cyclic collector's reach (``gc.freeze``). Start-up
    leaves about 250,000 long-lived objects, most from loading CCXT, and each full collection
    walked them all (about 0.1 s, a pause in whatever the loop was doing: a fan-out, a backfill
    batch). Frozen objects are still freed by reference counting; only cycles among them stay."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
    # A young generation of 700 (Python's default) fills within one broadcast to 1000 clients or
    # one backfill page: what is alive mid-way (its temporaries) is collected, survives, and is
    # promoted until full collections come every few seconds, each walking every connection's
    # objects (~100 ms here, a stall in the middle of a broadcast). At this size a broadcast's or
    # a page's temporaries are freed by reference counting before a collection comes.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())


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
    # Extensions open in this order (before_serving) and close in reverse: workers and plugins,
    # then Redis, then the pool. Each bounds its own steps by SHUTDOWN_TIMEOUT; the outer limit
    # is only a safety net, and one extension failing to close does not keep the next open.
    extensions: list[Database | RedisClient | Services | ResponseCache | Warmup] = [
        Database(app), RedisClient(app), Services(app), ResponseCache(app)]
    extensions.append(Warmup(app))  # cache warming: closed first, its tasks use the services

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
    Credentials(app)  # users' exchange credentials (after the Database)
    Resilience(app)  # circuit breaker, stale-while-error (after Redis and Services)
    init_udf(app)  # the UDF service (after Services)
    init_operations(app)  # CORS, API keys, rate limits, provider budget
    init_cli(app)
    init_backfill_cli(app)
    init_export(app)  # the Exporter and the export command (after the Database)
    app.before_serving(freeze_startup_objects)  # last: after every extension has opened
    return app


def ignore_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler under ``serve_app``: drops the report of a cancelled
    connection task, passes every other to the default handler.

    At shutdown Hypercorn cancels the connections still open after its ``graceful_timeout``
    (``hypercorn/asyncio/run.py``, ``worker_serve``: ``asyncio.wait_for(gathered_server_tasks,
    config.graceful_timeout)``), e.g. WebSocket clients that never answered our close frame
    (1001, 1009, 1013). Python 3.11's ``asyncio.streams`` (``StreamReaderProtocol.connection_made``,
    its done callback calls ``task.exception()``) then raises ``CancelledError`` inside a callback,
    which the loop logged as an ERROR with a traceback per connection (CPython gh-113538, fixed
    in 3.12). A cancellation is not an error."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def serve_app(application: Quart) -> None:
    """Serve under Hypercorn with the WebSocket settings; on SIGINT/SIGTERM, WebSocket clients are
    first told to reconnect elsewhere (close 1001), then Hypercorn and the extensions shut down."""
    import signal

    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    from app_extensions.services import get_services
    from blueprints.websocket import hypercorn_options

    hc = HypercornConfig()
    hc.bind = [f"{application.config['HOST']}:{application.config['PORT']}"]
    hc.accesslog = None
    # Our logging set-up (request ids, JSON in production) writes Hypercorn's lines, once: a
    # logger object is used as is, where "-" would add a second handler of Hypercorn's own.
    hc.errorlog = logging.getLogger("hypercorn.error")
    for option, value in hypercorn_options(application.config).items():  # WebSocket heartbeat
        setattr(hc, option, value)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(ignore_cancelled_connections)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        drain = float(application.config["SHUTDOWN_TIMEOUT"])
        await get_services(application).subscriptions.going_away(drain_seconds=drain)

    await serve(application, hc, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


if __name__ == "__main__":  # `make run`
    asyncio.run(serve_app(create_app()))
