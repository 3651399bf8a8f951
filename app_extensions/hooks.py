"""The service's request hooks, each one registered with Quart as its own hook.

The service's per-request functions (request id and access metrics, API keys, rate limits, CORS,
compression, pool gauges) are plain functions handed the request and its ``g`` (Quart's
``request`` and ``g``): a ``before`` function ``fn(req, g)`` returns None, a response that answers
the request, or an awaitable of either when it has to wait (Redis, the database); an ``after``
function ``fn(req, g, response)`` returns the response, or an awaitable of it. So the common case
costs a function call, and only a function that waits pays for a coroutine of its own.

``RequestHooks.before`` and ``after`` register each function with Quart's ``before_request`` and
``after_request``: Quart's own dispatch runs them, in its order (``before`` functions in the order
they were added, the first that answers ends them; ``after`` functions the last added first, each
with the response the previous one returned).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any

from quart import Quart, Request, Response, current_app, g, request
from quart.typing import ResponseReturnValue

#: ``fn(req, g)``; ``g`` is the request's ``quart.g`` (typed Any: Quart's class for it is private).
BeforeFn = Callable[[Request, Any], "ResponseReturnValue | Awaitable[ResponseReturnValue | None] | None"]
#: ``fn(req, g, response)``
AfterFn = Callable[[Request, Any, Response], Response | Awaitable[Response]]


class RequestHooks:
    """Registers the service's request functions with Quart. Reach it with ``get_hooks(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.app: Quart | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        self.app = app
        app.extensions["hooks"] = self

    def before(self, fn: BeforeFn) -> BeforeFn:
        """Run ``fn`` before each request, after the ones added earlier."""
        assert self.app is not None

        async def before_request() -> ResponseReturnValue | None:
            answer = fn(request, g)
            return await answer if isawaitable(answer) else answer  # type: ignore[no-any-return]

        self.app.before_request(before_request)
        return fn

    def after(self, fn: AfterFn) -> AfterFn:
        """Run ``fn`` on each response, before the ones added earlier."""
        assert self.app is not None

        async def after_request(response: Response) -> Response:
            out = fn(request, g, response)
            return await out if isawaitable(out) else out

        self.app.after_request(after_request)
        return fn


def get_hooks(app: Quart | None = None) -> RequestHooks:
    hooks: RequestHooks = (app or current_app).extensions["hooks"]
    return hooks
