"""Request ids, access metrics and JSON logging.

Every request gets an id (the client's ``X-Request-ID`` when it is sane, else a new one) that is
echoed in the response and carried by every log line written while the request is handled.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import logging.config
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import click
from quart import Quart, Request, Response, request

from app_extensions.hooks import RequestHooks
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: dict[str, Any]) -> None:
    """dictConfig from config: JSON lines in production, readable text otherwise.

    Under the ``quart`` CLI (``--help``, ``migrate``, ``backfill``, ``api-key``) the level is at
    least WARNING, so the development default (DEBUG) does not bury a command's own output, unless
    ``LOG_LEVEL`` is set in the environment; :func:`serving_log_level` restores it for a command
    that serves (``quart run``).
    """
    fmt = config["LOG_FORMAT"]
    level = config["LOG_LEVEL"]
    if click.get_current_context(silent=True) is not None and "LOG_LEVEL" not in os.environ:
        level = max(logging.getLevelName(level), logging.WARNING)
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {"hypercorn.access": {"level": "WARNING"}, "redis": {"level": "INFO"}},
    })


def serving_log_level(config: dict[str, Any]) -> None:
    """Serving (also ``quart run``): the configured ``LOG_LEVEL``, whatever the CLI capped."""
    logging.getLogger().setLevel(config["LOG_LEVEL"])


#: Methods reported as themselves in metrics; anything else a client sends is ``other``.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_COUNTERS: dict[tuple[str, str, int], Any] = {}
_HISTOGRAMS: dict[tuple[str, str], Any] = {}


def header(name: bytes) -> str | None:
    """A request header by its lower-case name, straight from the ASGI scope (werkzeug's
    ``Headers.get`` raises and catches an exception for every header that is absent)."""
    return scope_header(request.scope, name)


def scope_header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """A header of an ASGI request scope by its lower-case name (the server gives lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class _Ids:
    """New request ids: 32 hex digits, a random per-process prefix (64 bits, drawn again in a
    forked child) and a counter, unique as ``uuid4().hex`` is and a third of the cost of
    ``os.urandom(16).hex()`` (a system call per request). Ids name requests in logs; they are
    not secrets."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(8), "big") >> 1)

    def new(self) -> str:
        return "%s%016x" % (self.prefix, next(self.counter))  # noqa: UP031 - the cheapest format


new_request_id = _Ids().new


def request_id_from(sent: str) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new id."""
    return sent if sent and _SANE_ID.match(sent) else new_request_id()


def http_metrics(method: str, route: str, status: int, seconds: float | None) -> None:
    """Count a request and observe its latency. Labels are fixed names or route templates; the
    children are kept, since ``labels()`` costs more than the increment itself."""
    method = method if method in KNOWN_METHODS else "other"
    _counter(method, route, status).inc()
    if seconds is not None:
        _histogram(method, route).observe(seconds)


def http_metric_children(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The counter and latency children ``http_metrics`` updates for these labels, for a caller
    that keeps them: ``inc()`` the first and ``observe(seconds)`` the second is ``http_metrics``."""
    method = method if method in KNOWN_METHODS else "other"
    return _counter(method, route, status), _histogram(method, route)


def _counter(method: str, route: str, status: int) -> Any:
    counter = _COUNTERS.get((method, route, status))
    if counter is None:
        counter = _COUNTERS[(method, route, status)] = HTTP_REQUESTS.labels(method, route, str(status))
    return counter


def _histogram(method: str, route: str) -> Any:
    histogram = _HISTOGRAMS.get((method, route))
    if histogram is None:
        histogram = _HISTOGRAMS[(method, route)] = HTTP_LATENCY.labels(method, route)
    return histogram


def start_request(req: Request, ctx_g: Any) -> None:
    """The first before-request function: the request's id and start time."""
    ctx_g.request_id = rid = request_id_from(scope_header(req.scope, b"x-request-id") or "")
    ctx_g.started = time.perf_counter()
    request_id_var.set(rid)


def finish_request(req: Request, ctx_g: Any, response: Response) -> Response:
    """The last after-request function: ``X-Request-ID`` and the access metrics."""
    response.headers["X-Request-ID"] = ctx_g.get("request_id") or request_id_from("")
    rule = req.url_rule
    started = ctx_g.get("started")
    http_metrics(req.method, rule.rule if rule is not None else "unmatched", response.status_code,
                 None if started is None else time.perf_counter() - started)
    return response


def init_request_context(app: Quart) -> None:
    """Request ids and access metrics; also creates the app's ``RequestHooks`` (these functions
    run first before a request and last after it)."""
    @app.before_serving
    async def _serving_log_level() -> None:
        serving_log_level(app.config)

    hooks = RequestHooks(app)
    hooks.before(start_request)
    hooks.after(finish_request)
