"""The service's request hooks: plain functions, run by Quart's dispatch (one Quart hook per run of
functions added in a row) in Quart's order."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from quart import Quart, Request, Response, jsonify

from app_extensions.hooks import HookedRequest, RequestHooks, get_hooks
from app_extensions.request_context import new_request_id


def hooked_app() -> tuple[Quart, list[str]]:
    """A bare Quart app with hooks recording the order they ran in."""
    app = Quart(__name__)
    hooks = RequestHooks(app)
    ran: list[str] = []

    def before(name: str) -> Any:
        def fn(req: Request, g: Any) -> None:
            ran.append(f"before {name}")
            g.seen = [*g.get("seen", []), name]
        return fn

    def after(name: str) -> Any:
        def fn(req: Request, g: Any, response: Response) -> Response:
            ran.append(f"after {name}")
            response.headers[f"X-{name}"] = ",".join(g.seen)
            return response
        return fn

    async def waits(req: Request, g: Any) -> None:
        await asyncio.sleep(0)
        ran.append("before waits")

    async def answers_early() -> Response:
        return jsonify({"early": True})

    def maybe_answers(req: Request, g: Any) -> Any:
        if req.args.get("now"):
            return Response(b'{"now":true}', 200, {"Content-Type": "application/json"})
        return answers_early() if req.args.get("early") else None

    async def rewrites(response: Response) -> Response:
        await asyncio.sleep(0)
        response.headers["X-Rewritten"] = "yes"
        return response

    hooks.before(before("a"))

    @app.before_request
    async def quarts_own() -> None:  # a hook registered with Quart directly keeps its place
        ran.append("before quart")

    hooks.before(waits)
    hooks.before(maybe_answers)
    hooks.before(before("b"))
    hooks.after(after("a"))
    hooks.after(lambda req, g, response: rewrites(response))
    hooks.after(after("b"))

    @app.get("/x")
    async def x() -> Response:
        ran.append("view")
        return jsonify({"ok": True})

    return app, ran


async def test_functions_run_in_quarts_order_with_awaitables_awaited() -> None:
    app, ran = hooked_app()
    # one Quart hook per run of functions added in a row: [a], Quart's own, [waits, maybe, b]; [after x3]
    assert len(app.before_request_funcs[None]) == 3 and len(app.after_request_funcs[None]) == 1
    r = await app.test_client().get("/x")
    assert r.status_code == 200 and await r.get_json() == {"ok": True}
    # before: in the order added; after: the last added first (as Quart runs after_request hooks)
    assert ran == ["before a", "before quart", "before waits", "before b", "view", "after b", "after a"]
    assert r.headers["X-a"] == r.headers["X-b"] == "a,b" and r.headers["X-Rewritten"] == "yes"


async def test_a_before_coroutine_may_answer_the_request() -> None:
    app, ran = hooked_app()
    r = await app.test_client().get("/x?early=1")
    assert await r.get_json() == {"early": True}
    # no view, no later before; the after functions see the answer
    assert ran == ["before a", "before quart", "before waits", "after b", "after a"]
    assert r.headers["X-a"] == "a" and r.headers["X-Rewritten"] == "yes"


async def test_a_before_function_may_answer_without_waiting() -> None:
    app, ran = hooked_app()
    r = await app.test_client().get("/x?now=1")
    assert await r.get_json() == {"now": True}
    assert ran == ["before a", "before quart", "before waits", "after b", "after a"]


async def test_the_service_registers_app_level_hooks_only(app: Quart) -> None:
    assert app.request_class is HookedRequest and get_hooks(app) is app.extensions["hooks"]
    assert app.before_request_funcs[None] and app.after_request_funcs[None]
    assert all(not funcs for name, funcs in app.before_request_funcs.items() if name is not None)
    assert all(not funcs for name, funcs in app.after_request_funcs.items() if name is not None)


async def test_hooked_requests_know_their_blueprints_as_quarts_do(app: Quart) -> None:
    for path in ("/api/v1/markets", "/health", "/nowhere"):
        async with app.test_request_context(path):
            from quart import request
            assert request.blueprints == Request.blueprints.fget(request)  # type: ignore[attr-defined]
            assert request.blueprints is request.blueprints  # found once per endpoint


def test_new_request_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
