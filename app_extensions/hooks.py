"""The service's request hooks, each one registered with Quart as its own hook.

The service's per-request functions (request id and access metrics, API keys, rate limits, CORS,
compression, pool gauges) are plain functions handed the request and its ``g`` (Quart's
``request`` and ``g``): a ``before`` function ``fn(req, g)`` returns None, a ``Response`` that
answers the request, or an awaitable when it has to wait (Redis, the database) whose result,
when not None, answers it; an ``after`` function ``fn(req, g, response)`` returns the response,
or an awaitable of it. So the common case costs a function call, and only a function that
waits pays for a coroutine of its own.

``RequestHooks.before`` and ``after`` hand the functions to Quart's ``before_request`` and
``after_request``: functions added in a row share one Quart hook, which reads the request and
``g`` once (Quart's ``request_ctx.request`` and ``app_ctx.g``: the objects, not the proxies) and
runs them; a hook registered with Quart directly in between keeps its place. The order is
Quart's (``before`` functions in the order they were added, the first that answers ends them;
``after`` functions the last added first, each with the response the previous one returned).
A cached hit so pays for one before and one after hook instead of one per function.

Its requests are ``HookedRequest``s (Quart's ``request_class`` setting), which find their
blueprint names once per endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Request, Response, current_app
from quart.globals import app_ctx, request_ctx
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
        self._before_fns: list[BeforeFn] = []
        self._after_fns: list[AfterFn] = []
        self._before_hook: Any = None
        self._after_hook: Any = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        self.app = app
        app.extensions["hooks"] = self
        app.request_class = HookedRequest

    def before(self, fn: BeforeFn) -> BeforeFn:
        """Run ``fn`` before each request, after the ones added earlier."""
        assert self.app is not None
        funcs = self.app.before_request_funcs[None]
        if not (funcs and funcs[-1] is self._before_hook):  # a hook of Quart's own came between
            self._before_fns = []
            self._before_hook = self._before_dispatch(self._before_fns)
            self.app.before_request(self._before_hook)
        self._before_fns.append(fn)
        return fn

    def after(self, fn: AfterFn) -> AfterFn:
        """Run ``fn`` on each response, before the ones added earlier."""
        assert self.app is not None
        funcs = self.app.after_request_funcs[None]
        if not (funcs and funcs[-1] is self._after_hook):
            self._after_fns = []
            self._after_hook = self._after_dispatch(self._after_fns)
            self.app.after_request(self._after_hook)
        self._after_fns.insert(0, fn)  # the last added runs first, as Quart runs its own
        return fn

    @staticmethod
    def _before_dispatch(fns: list[BeforeFn]) -> Callable[[], Awaitable[ResponseReturnValue | None]]:
        async def before_request() -> ResponseReturnValue | None:
            req, ctx_g = request_ctx.request, app_ctx.g  # the objects, not proxies
            for fn in fns:
                answer = fn(req, ctx_g)
                if answer is None:
                    continue
                if isinstance(answer, Response):
                    return answer
                result = await answer
                if result is not None:
                    return result
            return None

        return before_request

    @staticmethod
    def _after_dispatch(fns: list[AfterFn]) -> Callable[[Response], Awaitable[Response]]:
        async def after_request(response: Response) -> Response:
            req, ctx_g = request_ctx.request, app_ctx.g  # the objects, not proxies
            for fn in fns:
                out = fn(req, ctx_g, response)
                response = out if isinstance(out, Response) else await out
            return response

        return after_request


def get_hooks(app: Quart | None = None) -> RequestHooks:
    hooks: RequestHooks = (app or current_app).extensions["hooks"]
    return hooks
