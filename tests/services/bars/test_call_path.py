"""The path of a cold ``GET /api/v1/ohlcv`` miss reads top-down (issue 22): followed call by call
from the handler, it enters each module of the handler and the service layer at most twice.

The miss is real (the sim market, PostgreSQL and Redis): the handler, ``OhlcvService``, the
orchestrator, its sources, the provider-call path and the plugin all run. ``sys.setprofile``
records every Python-level call made for the request (in the tasks that carry the test's
``TRACED`` context, which the request and the tasks it starts copy; a coroutine resumed after an
await is no call). A call enters a module when the nearest project frame below it (its caller;
for a task or a callback the event loop's: none) lies in another module, so a module is entered
again each time it is called into after it was left; returning into a module is no entry.
"""

from __future__ import annotations

import dis
import sys
from collections import Counter
from contextvars import ContextVar
from pathlib import Path
from types import FrameType
from typing import Any

from quart import Quart

ROOT = Path(__file__).resolve().parents[3]
RESUME = dis.opmap["RESUME"]
PAST = 1_700_006_400_000  # 2023-11-15 00:00 UTC
HANDLER = ("blueprints/market.py", "ohlcv")
TRACED: ContextVar[bool] = ContextVar("traced", default=False)


def project_module(filename: str) -> str | None:
    """``filename`` relative to the repository for the project's own code, else None (tests,
    the standard library, site-packages, generated code)."""
    path = Path(filename)
    if not path.is_absolute():
        return None
    try:
        rel = path.relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if rel.startswith(("tests/", ".venv/")) or "site-packages" in rel:
        return None
    return rel


def followed(module: str) -> bool:
    """The path's own modules: the handler's and the service layer's. The rest are leaves: the
    bottom layer (``core``: errors, timeframes, metrics, used as the standard library is), the
    resource owners handed to services (``app_extensions``: the pool, the Redis client, the HTTP
    response cache), request validation and the plugins at the end of the path. Their entries
    are listed, not counted, and the calls they make are not followed."""
    return module == HANDLER[0] or module.startswith("services/")


class Entries:
    """The module entries of the calls made in a context where ``TRACED`` is set, from the first
    call of ``handler`` (a function of the handler's module) on."""

    def __init__(self, handler: tuple[str, str]) -> None:
        self.handler = handler
        self.started = False
        self.entries: list[tuple[str | None, str, str]] = []
        self._modules: dict[str, str | None] = {}

    def _module(self, frame: FrameType) -> str | None:
        filename = frame.f_code.co_filename
        if filename not in self._modules:
            self._modules[filename] = project_module(filename)
        return self._modules[filename]

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not TRACED.get():
            return
        code = frame.f_code
        # A coroutine or generator resumed after an await or a yield is not a call.
        if code.co_code[frame.f_lasti] == RESUME and code.co_code[frame.f_lasti + 1] != 0:
            return
        module = self._module(frame)
        if module is None:
            return
        if not self.started:
            if (module, code.co_name) != self.handler:
                return
            self.started = True
        caller = frame.f_back
        while caller is not None and self._module(caller) is None:
            caller = caller.f_back
        came_from = self._module(caller) if caller is not None else None
        if came_from is not None and not followed(came_from):
            return  # inside a leaf (core, a resource owner, a plugin): not followed
        if came_from != module:
            self.entries.append((came_from, module, code.co_qualname))

    def counts(self) -> Counter[str]:
        return Counter(module for _, module, _ in self.entries if followed(module))

    def sequence(self) -> str:
        return "\n".join(f"{i:3} {src or '(event loop)'} -> {dst}:{fn}"
                         for i, (src, dst, fn) in enumerate(self.entries, 1))


async def test_a_cold_ohlcv_miss_enters_each_module_at_most_twice(app: Quart) -> None:
    client = app.test_client()
    # The plugin instance is made once per process: a request of another symbol makes it first.
    r = await client.get(f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIMA/USD&timeframe=1h"
                         f"&start={PAST}&limit=2")
    # 12 closed hours: one page of 720 1m bars (each further page passes the gate once more).
    assert r.status_code == 200
    entries = Entries(HANDLER)
    token = TRACED.set(True)
    sys.setprofile(entries.profile)
    try:
        r = await client.get(f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h"
                             f"&start={PAST}&limit=12")
    finally:
        sys.setprofile(None)
        TRACED.reset(token)
    assert r.status_code == 200
    assert r.headers["X-Data-Source"] in ("provider", "database,provider", "aggregate,provider")
    counts = entries.counts()
    over = {module: n for module, n in counts.items() if n > 2}
    assert not over, (f"entered more than twice: {over}\nall entries: {dict(counts.most_common())}"
                      f"\n{entries.sequence()}")
