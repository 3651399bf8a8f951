"""One before-request and one after-request hook for the whole service, calling plain functions.

Quart runs each registered request hook as its own coroutine, through ``ensure_async`` (an
``iscoroutinefunction`` check every time): about 2 us a hook, paid by every answer, cached hits
included. The service's hooks (request id and access metrics, API keys, rate limits, CORS,
compression, pool gauges) are registered here instead, as plain functions, and Quart sees two
hooks (and its requests are ``HookedRequest``s, which find their blueprints once per endpoint). They
run in Quart's order: ``before`` functions in the order they were added; ``after``
functions in the reverse order (the last added runs first), each with the response the previous
one returned.

Each function is handed the request and its ``g`` (looked up once for all of them, where each
``request.x`` through Quart's proxy costs a context-variable look-up). A ``before`` function
``fn(req, g)`` returns None, or an awaitable when it has to wait (Redis, the database); an
awaitable's result, when not None, answers the request (as a Quart before-request hook's would).
An ``after`` function ``fn(req, g, response)`` returns the response, or a coroutine that returns
it. So the common case costs a function call, and only a hook that waits pays for a coroutine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any

from quart import Quart, Request, Response, current_app, g, request

#: ``fn(req, g)``; ``g`` is the request's ``quart.g`` (typed Any: Quart's class for it is private).
BeforeFn = Callable[[Request, Any], Awaitable[Any] | None]
#: ``fn(req, g, response)``
AfterFn = Callable[[Request, Any, Response], Response | Awaitable[Response]]
#: Key in ``app.extensions`` of the one hook that runs before Quart and even before Hypercorn's
#: HTTP stream (``blueprints/http_early.py``): ``fn(method, path, headers, client)`` returns
#: ``(status, headers, body)`` to answer a plain GET at once, or None. The rate limiter's
#: ``EarlyRefusals.answer`` is it.
EARLY_ANSWER = "http.early_answer"
#: A raw HTTP header as Hypercorn and h11 carry it: (lower-case name, value).
Header = tuple[bytes, bytes]
EarlyAnswer = Callable[[str, str, list[Header], Any], tuple[int, list[Header], bytes] | None]


class HookedRequest(Request):
    """Quart's request, whose blueprint names (Quart looks for each blueprint's hooks, before and
    after every request, and derives the names from the endpoint each time) are found once per
    endpoint."""

    _blueprints: dict[str | None, list[str]] = {}

    @property
    def blueprints(self) -> list[str]:
        endpoint = self.endpoint
        names = self._blueprints.get(endpoint)
        if names is None:
            names = self._blueprints[endpoint] = super().blueprints
        return names


class RequestHooks:
    """The service's request hooks. Reach it with ``get_hooks(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self._before: list[BeforeFn] = []
        #: In the order they run (the last added first).
        self._after: list[AfterFn] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        app.extensions["hooks"] = self
        app.request_class = HookedRequest
        app.before_request(self._run_before)
        app.after_request(self._run_after)

    def before(self, fn: BeforeFn) -> BeforeFn:
        """Run ``fn`` before each request, after the ones added earlier."""
        self._before.append(fn)
        return fn

    def after(self, fn: AfterFn) -> AfterFn:
        """Run ``fn`` on each response, before the ones added earlier."""
        self._after.insert(0, fn)
        return fn

    async def _run_before(self) -> Any:
        req, ctx_g = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        for fn in self._before:
            waiting = fn(req, ctx_g)
            if waiting is not None:
                answer = await waiting
                if answer is not None:
                    return answer
        return None

    async def _run_after(self, response: Response) -> Response:
        req, ctx_g = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        for fn in self._after:
            out = fn(req, ctx_g, response)
            response = await out if isinstance(out, CoroutineType) else out  # type: ignore[assignment]
        return response


def get_hooks(app: Quart | None = None) -> RequestHooks:
    hooks: RequestHooks = (app or current_app).extensions["hooks"]
    return hooks
