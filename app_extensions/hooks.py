"""The service's request hooks, each one registered with Quart as its own hook.

The service's per-request functions (request id and access metrics, API keys, rate limits, CORS,
compression, pool gauges) are plain functions handed the request and its ``g`` (Quart's
``request`` and ``g``): a ``before`` function ``fn(req, g)`` returns None, a ``Response`` that
answers the request, or an awaitable when it has to wait (Redis, the database) whose result,
when not None, answers it; an ``after`` function ``fn(req, g, response)`` returns the response,
or an awaitable of it. So the common case costs a function call, and only a function that
waits pays for a coroutine of its own.

``RequestHooks.before`` and ``after`` register each function with Quart's ``before_request`` and
``after_request``: Quart's own dispatch runs them, in its order (``before`` functions in the order
they were added, the first that answers ends them; ``after`` functions the last added first, each
with the response the previous one returned).

Its requests are ``HookedRequest``s (Quart's ``request_class`` setting), which find their
blueprint names once per endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Request, Response, current_app, g, request
from quart.typing import ResponseReturnValue

#: ``fn(req, g)``; ``g`` is the request's ``quart.g`` (typed Any: Quart's class for it is private).
BeforeFn = Callable[[Request, Any], Response | Awaitable[ResponseReturnValue | None] | None]
#: ``fn(req, g, response)``
AfterFn = Callable[[Request, Any, Response], Response | Awaitable[Response]]


class HookedRequest(Request):
    """Quart's request, whose blueprint names (Quart looks for each blueprint's hooks, before and
    after every request, and derives the names from the endpoint each time) are found once per
    endpoint: the names are a function of the endpoint alone."""

    _names: dict[str | None, list[str]] = {}

    @property
    def blueprints(self) -> list[str]:
        endpoint = self.endpoint
        names = self._names.get(endpoint)
        if names is None:
            names = self._names[endpoint] = super().blueprints
        return names


class RequestHooks:
    """Registers the service's request functions with Quart. Reach it with ``get_hooks(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.app: Quart | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        self.app = app
        app.extensions["hooks"] = self
        app.request_class = HookedRequest

    def before(self, fn: BeforeFn) -> BeforeFn:
        """Run ``fn`` before each request, after the ones added earlier."""
        assert self.app is not None

        async def before_request() -> ResponseReturnValue | None:
            answer = fn(request, g)
            if answer is None or isinstance(answer, Response):
                return answer
            return await answer

        self.app.before_request(before_request)
        return fn

    def after(self, fn: AfterFn) -> AfterFn:
        """Run ``fn`` on each response, before the ones added earlier."""
        assert self.app is not None

        async def after_request(response: Response) -> Response:
            out = fn(request, g, response)
            return out if isinstance(out, Response) else await out

        self.app.after_request(after_request)
        return fn


def get_hooks(app: Quart | None = None) -> RequestHooks:
    hooks: RequestHooks = (app or current_app).extensions["hooks"]
    return hooks
