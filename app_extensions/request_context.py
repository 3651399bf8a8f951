"""Request ids, access metrics, the access log and JSON logging.

Every request gets an id (the client's ``X-Request-ID`` when it is sane, else a new one) that is
echoed in the response and carried by every log line written while the request is handled. With
``ACCESS_LOG`` on, each HTTP request the app answers logs one INFO line on the ``access`` logger.
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
from datetime import UTC, datetime
from typing import Any

import click
from quart import Quart, Request, Response, request

from app_extensions.hooks import RequestHooks
from config import declared
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("access")
#: The value of an ``api_key`` query parameter, kept out of the access log.
_API_KEY_PARAM = re.compile(r"((?:^|&)api_key=)[^&]*", re.IGNORECASE)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def iso_utc(created: float) -> str:
    """A record's time as ISO 8601 in UTC with milliseconds: ``2024-01-01T00:00:00.123Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(config: dict[str, Any]) -> None:
    """dictConfig from config: JSON lines in production, readable text otherwise.

    Under the ``quart`` CLI (``--help``, ``migrate``, ``backfill``, ``api-key``) the level is at
    least WARNING, so the development default (DEBUG) does not bury a command's own output, unless
    ``LOG_LEVEL`` is set in the environment; :func:`serving_log_level` restores it for a command
    that serves (``quart run``).
    """
    fmt = config["LOG_FORMAT"]
    level = str(config["LOG_LEVEL"]).upper()
    if click.get_current_context(silent=True) is not None and "LOG_LEVEL" not in os.environ:
        level = max(logging.getLevelName(level), logging.WARNING)
    # Logger levels set whatever LOG_LEVEL is (the access log at INFO: ACCESS_LOG switches it);
    # LOG_LEVELS is merged over its declared default.
    levels = {**declared("LOG_LEVELS").default, **(config.get("LOG_LEVELS") or {})}
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
        "loggers": {name: {"level": str(lvl).upper()} for name, lvl in levels.items()},
    })


def serving_log_level(config: dict[str, Any]) -> None:
    """Serving (also ``quart run``): the configured ``LOG_LEVEL``, whatever the CLI capped."""
    logging.getLogger().setLevel(str(config["LOG_LEVEL"]).upper())


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


def finish_request_logged(req: Request, ctx_g: Any, response: Response) -> Response:
    """``finish_request``, then the access log line: client, method, path and query (an
    ``api_key`` value blanked), status, bytes (``-`` when streamed) and milliseconds."""
    finish_request(req, ctx_g, response)
    started = ctx_g.get("started")
    query = req.scope.get("query_string", b"").decode("latin-1")
    target = req.path + ("?" + _API_KEY_PARAM.sub(r"\1***", query) if query else "")
    client = req.scope.get("client")
    access_log.info('%s "%s %s" %d %s %.1f ms', client[0] if client else "-", req.method, target,
                    response.status_code, response.content_length if response.content_length is not None else "-",
                    0.0 if started is None else (time.perf_counter() - started) * 1000)
    return response


def init_request_context(app: Quart) -> None:
    """Request ids, access metrics and (``ACCESS_LOG``) the access log; also creates the app's
    ``RequestHooks`` (these functions run first before a request and last after it)."""
    @app.before_serving
    async def _serving_log_level() -> None:
        serving_log_level(app.config)

    hooks = RequestHooks(app)
    hooks.before(start_request)
    hooks.after(finish_request_logged if app.config.get("ACCESS_LOG") else finish_request)
