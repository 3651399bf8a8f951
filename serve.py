"""The serving entry point: ``python serve.py`` (what ``make run``, the container image and the
systemd unit run) serves ``app:create_app()`` under one of three ASGI servers, through each
server's public API only.

    SERVER=uvicorn|hypercorn|granian python serve.py      (or ``--server NAME``)

``uvicorn`` (the default, chosen by ``bench/servers.py``: see docs/performance.md) runs with
httptools and wsproto; ``hypercorn`` is the design's server and stays supported; ``granian`` is
measured and works, but has no WebSocket heartbeat or frame-size setting (see ``granian_server``).

Everything that changes the whole process lives here, never in ``create_app`` (which only builds
an app, so tests, the CLI and other servers get an untouched interpreter):

- **The event loop**: uvloop (``LOOP=asyncio`` keeps asyncio's own). Every server gets the same
  loop, so a comparison between them compares the servers.
- **The loop's exception handler**: :func:`ignore_cancelled_connections`.
- **The cyclic garbage collector**: :func:`freeze_startup_objects`, once the app has started.
- **Signals**: SIGINT and SIGTERM first tell every WebSocket client to reconnect elsewhere (close
  1001, ``SubscriptionService.going_away``, waiting up to ``SHUTDOWN_TIMEOUT`` for them to go);
  only then does the server stop: it closes its sockets, waits for the requests in flight and runs
  the app's shutdown (the extensions close in reverse order). A second SIGINT under Uvicorn skips
  the wait (its own force-exit).

The WebSocket heartbeat, frame-size and permessage-deflate settings (``WS_HEARTBEAT_SECONDS``,
``WS_MAX_MESSAGE_BYTES``, ``WS_PER_MESSAGE_DEFLATE``) map to each server's own options
(``blueprints/ws_server.py``: ``hypercorn_options``, ``uvicorn_options``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from config import ConfigError, declared

log = logging.getLogger("serve")

SERVERS = ("uvicorn", "hypercorn", "granian")
DEFAULT_SERVER: str = declared("SERVER").default
DEFAULT_LOOP: str = declared("LOOP").default
LOOPS = ("uvloop", "asyncio")
#: Net new tracked objects that start a collection of the youngest generation (Python's: 700).
GC_YOUNG_THRESHOLD = 50_000

GoingAway = Callable[[], Awaitable[None]]
_frozen = False


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


def ignore_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler under :func:`serve`: drops the report of a cancelled
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


def hypercorn_config(host: str, port: int, config: Mapping[str, Any], graceful: float) -> Any:
    from hypercorn.config import Config

    from blueprints.websocket import hypercorn_options

    hc = Config()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    # Our logging set-up (request ids, JSON in production) writes Hypercorn's lines, once: a
    # logger object is used as is, where "-" would add a second handler of Hypercorn's own.
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.backlog = 2048
    hc.graceful_timeout = graceful
    for option, value in hypercorn_options(config).items():  # heartbeat and frame size
        setattr(hc, option, value)
    return hc


def uvicorn_config(app: Any, host: str, port: int, config: Mapping[str, Any], graceful: float) -> Any:
    import uvicorn

    from blueprints.websocket import uvicorn_options

    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_config=None, access_log=False,
        backlog=2048, http="httptools",
        # X-Forwarded-For is the app's to read (TRUSTED_PROXIES): Uvicorn's own rewrite of the
        # client address (on by default for 127.0.0.1) would come first.
        proxy_headers=False,
        # wsproto (pinned), not websockets: less memory per connection and a shorter fan-out
        # (docs/performance.md, "Choosing the server").
        ws="wsproto", **uvicorn_options(config),  # heartbeat, frame size, permessage-deflate
        timeout_graceful_shutdown=max(1, round(graceful)),
    )


async def serve(app: Any, server: str, host: str, port: int, config: Mapping[str, Any], *,
                graceful: float = 5.0, going_away: GoingAway | None = None) -> None:
    """Serve the ASGI ``app`` under ``server`` until SIGINT or SIGTERM; then ``going_away``
    (when given) runs before the server stops. ``config`` holds the WebSocket settings
    (``WS_HEARTBEAT_SECONDS``, ``WS_MAX_MESSAGE_BYTES``, ``WS_PER_MESSAGE_DEFLATE``). Installs
    the loop's exception handler."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(ignore_cancelled_connections)
    stop = asyncio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()
        if going_away is not None:
            await going_away()

    if server == "uvicorn":
        await uvicorn_serve(app, uvicorn_config(app, host, port, config, graceful), stop, shutdown_trigger)
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if server == "hypercorn":
            from hypercorn.asyncio import serve as hypercorn_serve

            await hypercorn_serve(app, hypercorn_config(host, port, config, graceful),
                                  shutdown_trigger=shutdown_trigger)
        elif server == "granian":
            await granian_serve(app, host, port, shutdown_trigger)
        else:
            raise ValueError(f"SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def uvicorn_serve(app: Any, config: Any, stop: asyncio.Event,
                        shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    """Uvicorn's ``Server.serve`` handles SIGINT/SIGTERM itself (``Server.handle_exit``, a public
    method, overridden here): a signal starts ``shutdown_trigger``, and the server is told to exit
    (``should_exit``) when it is done. A second SIGINT forces the exit, as Uvicorn's own does."""
    import uvicorn

    loop = asyncio.get_running_loop()

    class GoingAwayServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if stop.is_set():  # a second signal: a second Ctrl-C skips the drain and the waits
                if sig == signal.SIGINT:
                    self.force_exit = self.should_exit = True
                return
            loop.call_soon_threadsafe(stop.set)  # from a signal handler: thread-safe

    server = GoingAwayServer(config)

    async def exit_after_trigger() -> None:
        await shutdown_trigger()
        server.should_exit = True

    trigger = asyncio.create_task(exit_after_trigger())
    try:
        await server.serve()
    finally:
        trigger.cancel()
    if server.started is False and not stop.is_set():
        raise SystemExit(3)  # start-up failed (Uvicorn logged why)


async def granian_serve(app: Any, host: str, port: int,
                        shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    """Granian's embedded server (``granian.server.embed.Server``: ``serve()`` and ``stop()``).
    Granian 2.8 has no WebSocket ping or frame-size setting, so a dead peer is found only when a
    write fails, and a large frame is read whole before the app's ``WS_MAX_MESSAGE_BYTES`` check
    (https://github.com/emmett-framework/granian/issues/613 asks for pings). Granian marks its
    embedded mode experimental."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    # Granian's loggers go through ours (propagate), at WARNING.
    quiet = {"version": 1, "disable_existing_loggers": False,
             "loggers": {"_granian": {"propagate": True}, "granian.access": {"propagate": True}}}
    server = Server(app, address=host, port=port, interface=Interfaces.ASGI, backlog=2048,
                    log_level=LogLevels.warning, log_dictconfig=quiet)

    async def stop_after_trigger() -> None:
        await shutdown_trigger()
        server.stop()

    trigger = asyncio.create_task(stop_after_trigger())
    try:
        await server.serve()
    finally:
        trigger.cancel()


def prepare(app: Any) -> None:
    """Process-wide tuning that needs the app: the collector is frozen once the app has started
    (registered last, so after every extension's own start-up)."""
    app.before_serving(freeze_startup_objects)


async def serve_app(app: Any, server: str) -> None:
    """Serve ``app`` (from ``create_app``, or anything with its ``config``, ``before_serving`` and
    ``extensions``) under ``server`` with its own settings; WebSocket clients get 1001 first at
    shutdown."""
    prepare(app)
    drain = float(app.config["SHUTDOWN_TIMEOUT"])

    async def going_away() -> None:
        await app.extensions["services"].subscriptions.going_away(drain_seconds=drain)

    await serve(app, server, app.config["HOST"], int(app.config["PORT"]), app.config,
                graceful=drain, going_away=going_away)


def load(spec: str) -> Any:
    """``module:factory`` (``app:create_app``): the factory's product."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "create_app")()


def run(main: Awaitable[None], loop: str) -> None:
    """Run ``main`` on a new event loop of kind ``loop``."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    else:
        asyncio.run(main)  # type: ignore[arg-type]


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        sys.exit(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--server", default=os.environ.get("SERVER") or DEFAULT_SERVER,
                        help=f"one of {', '.join(SERVERS)} (env SERVER; default {DEFAULT_SERVER})")
    parser.add_argument("--loop", default=os.environ.get("LOOP") or DEFAULT_LOOP,
                        help=f"one of {', '.join(LOOPS)} (env LOOP; default {DEFAULT_LOOP})")
    parser.add_argument("--app", default="app:create_app",
                        help="module:factory of the app (default app:create_app; the benches serve others)")
    args = parser.parse_args(argv)
    server = choice("SERVER", args.server, SERVERS)
    loop = choice("LOOP", args.loop, LOOPS)
    try:
        app = load(args.app)
    except ConfigError as exc:  # a bad setting: one line naming it, no traceback
        sys.exit(f"configuration error: {exc.message}")
    run(serve_app(app, server), loop)


if __name__ == "__main__":
    main()
