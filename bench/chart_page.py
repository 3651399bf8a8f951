"""Chart page bench: load time to the first candles, bytes downloaded, and live frames per second.

Usage: ``.venv/bin/python -m bench.chart_page [--loads 5] [--rates 100,1000,3000,10000] [--seconds 3]``

A fresh server (the app under Hypercorn, sim market, real PostgreSQL and Redis, its own schema and
Redis prefix) serves the page to Debian's Chromium driven by Playwright (headless). It prints:
- load: time from navigation start to the first candles drawn (``performance.now()`` when the
  first REST page is on the chart), and the bytes the page downloaded by then (response headers and
  bodies as sent on the wire), for a cold browser cache (first load also on a cold server) and a
  warm one (a reload: the library revalidated or cached);
- stream: bar frames pushed at a fixed rate over a real WebSocket for a few seconds (the page is
  served through a small front server in this process that passes HTTP to the app and answers the
  WebSocket itself, so the app's 1 s poll is not the limit); the page keeps up
  when every frame is applied (none lost, none skipped as a gap) and the backlog drains within
  0.25 s of the last frame;
- capacity: frames handled per second when fed back to back to the page's stream handler (parse,
  apply, chart update; the chart paints once per animation frame).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_bench_data, free_port, hypercorn  # noqa: E402
from config import from_environ  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
PAGE = "/?market=sim&provider=sim&symbol=SIM%2FUSD&timeframe=1m"
CHANNEL = "sim:sim:SIM/USD:1m"
DATABASE_URL = from_environ("DATABASE_URL")
REDIS_URL = from_environ("REDIS_URL")


def measure_load(page: Page, base: str) -> tuple[float, int, int]:
    """(ms to first candles, bytes by then, requests by then) of one navigation."""
    sizes: list[int] = []

    def finished(request: Any) -> None:
        got = request.sizes()
        sizes.append(got["responseBodySize"] + got["responseHeadersSize"])

    page.on("requestfinished", finished)
    page.goto(base + PAGE)
    page.wait_for_function("window.chartPage && window.chartPage.firstCandlesMs !== null", timeout=60_000)
    ms = float(page.evaluate("window.chartPage.firstCandlesMs"))
    page.remove_listener("requestfinished", finished)
    return ms, sum(sizes), len(sizes)


class FrontServer:
    """In front of the app: every HTTP request is passed through to it, but the page's WebSocket
    lands here, where bar frames are pushed at a chosen rate over a real socket (the app's own
    stream is paced by its 1 s poll). Runs its own event loop on a thread."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.socket: web.WebSocketResponse | None = None
        self.subscribed = threading.Event()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/ws", self._ws)
        app.router.add_route("GET", "/{tail:.*}", self._proxy)
        self.session = aiohttp.ClientSession(auto_decompress=False)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _proxy(self, request: web.Request) -> web.Response:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}
        async with self.session.get(self.backend + request.path_qs, headers=headers) as answer:
            body = await answer.read()
            passed = {k: v for k, v in answer.headers.items()
                      if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            return web.Response(body=body, status=answer.status, headers=passed)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.socket = ws
        async for message in ws:
            data = json.loads(message.data)
            if data.get("op") == "subscribe":
                await ws.send_str(json.dumps({"type": "subscribed", "channel": CHANNEL, "id": data.get("id")}))
                await ws.send_str(json.dumps({"type": "snapshot", "channel": CHANNEL, "bars": [], "seq": 0}))
                self.subscribed.set()
        return ws

    async def _push(self, texts: list[str], rate: int) -> float:
        assert self.socket is not None
        started = time.perf_counter()
        for i, text in enumerate(texts):
            wait = started + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.socket.send_str(text)
        return time.perf_counter() - started

    def push(self, texts: list[str], rate: int) -> float:
        """Send ``texts`` at ``rate`` per second; returns the seconds it took."""
        return asyncio.run_coroutine_threadsafe(self._push(texts, rate), self.loop).result()

    def close(self) -> None:
        async def stop() -> None:
            if self.socket is not None:
                await self.socket.close()
            if self.runner is not None:
                await self.runner.cleanup()
            if self.session is not None:
                await self.session.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def frames(first_ts: int, seq0: int, count: int) -> list[str]:
    """Bar frames: the forming bar changing, a new bucket every 60 frames."""
    out = []
    price = 100.0
    for i in range(count):
        ts = first_ts + (i // 60) * 60_000
        price += 0.01 if i % 3 else -0.02
        bar = [ts, 100.0, max(100.0, price) + 0.1, min(100.0, price) - 0.1, round(price, 6), 1.0 + i % 60]
        out.append(json.dumps({"type": "bar", "channel": CHANNEL, "bar": bar, "closed": False,
                               "seq": seq0 + i + 1}, separators=(",", ":")))
    return out


def measure_rate(page: Page, front: FrontServer, rate: int, seconds: float, seq0: int) -> dict[str, float]:
    """Push ``rate`` frames/s for ``seconds``; how many the page applied and how long it lagged."""
    last = int(page.evaluate("window.chartPage.store.last.time")) * 1000
    before = int(page.evaluate("window.chartPage.frames"))
    gaps = int(page.evaluate("window.chartPage.gaps"))
    batch = frames(last + 60_000, seq0, int(rate * seconds))
    started = time.perf_counter()
    sent_in = front.push(batch, rate)
    target = before + len(batch)
    page.wait_for_function(f"window.chartPage.frames >= {target}", timeout=60_000, polling=5)
    lag = time.perf_counter() - started - sent_in
    applied = int(page.evaluate("window.chartPage.frames")) - before
    return {"rate": rate, "sent_per_s": len(batch) / sent_in, "applied": applied, "sent": len(batch),
            "lag_ms": lag * 1000, "gaps": int(page.evaluate("window.chartPage.gaps")) - gaps,
            "handled_per_s": applied / (sent_in + lag)}


def measure_capacity(page: Page, count: int = 20_000) -> float:
    """Frames per second through the page's own handler, fed back to back."""
    last = int(page.evaluate("window.chartPage.store.last.time")) * 1000
    seq = int(page.evaluate("window.chartPage.lastSeq"))
    return float(page.evaluate("""([texts]) => {
        const stream = window.chartPage.stream;
        const started = performance.now();
        for (const text of texts) stream.receive(text);
        return texts.length / ((performance.now() - started) / 1000);
    }""", [frames(last + 60_000, seq, count)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--rates", default="100,1000,3000,10000")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:10]
    schema, prefix = f"bench_page_{uid}", f"bench:page:{uid}"
    env = {"APP_ENV": "development", "DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix,
           "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "ENABLED_MARKETS": "sim"}
    try:
        with hypercorn("app:create_app()", free_port(), env) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            cold = []
            for _ in range(args.loads):
                context = browser.new_context()  # an empty browser cache each time
                cold.append(measure_load(context.new_page(), base))
                context.close()
            context = browser.new_context()
            page = context.new_page()
            measure_load(page, base)
            warm = measure_load(page, base)  # a reload: the library from the browser's cache
            context.close()
            print(f"load, cold server:  first candles {cold[0][0]:.0f} ms, {cold[0][1] / 1024:.0f} KiB "
                  f"in {cold[0][2]} requests")
            rest = cold[1:] or cold
            print(f"load, cold browser: first candles median {statistics.median(r[0] for r in rest):.0f} ms "
                  f"(min {min(r[0] for r in rest):.0f}, max {max(r[0] for r in rest):.0f}) over {len(rest)} "
                  f"loads, {statistics.median(r[1] for r in rest) / 1024:.0f} KiB in {rest[0][2]} requests")
            print(f"load, warm browser: first candles {warm[0]:.0f} ms, {warm[1] / 1024:.0f} KiB "
                  f"in {warm[2]} requests")

            front = FrontServer(base)
            page = browser.new_page()
            page.goto(front.url + PAGE)
            page.wait_for_function("window.chartPage.state === 'live'", timeout=60_000)
            seq, best, lossless = 0, 0, True
            for rate in (int(r) for r in args.rates.split(",")):
                got = measure_rate(page, front, rate, args.seconds, seq)
                seq += int(got["sent"])
                lossless = lossless and got["applied"] == got["sent"] and got["gaps"] == 0
                if got["lag_ms"] < 250:
                    best = max(best, rate)
                print(f"stream {rate:>5}/s: sent {got['sent_per_s']:.0f}/s, applied {got['applied']:.0f} of "
                      f"{got['sent']:.0f}, seq gaps {got['gaps']:.0f}, backlog drained {got['lag_ms']:.0f} ms "
                      f"after the last frame, handled {got['handled_per_s']:.0f}/s")
            print(f"stream: {'no frame lost at any rate' if lossless else 'FRAMES LOST'}; "
                  f"keeps up (backlog < 250 ms) up to {best}/s")
            print(f"capacity: {measure_capacity(page):.0f} frames/s through the page's handler")
            browser.close()
            front.close()
    finally:
        asyncio.run(drop_bench_data(DATABASE_URL, schema, REDIS_URL, prefix))


if __name__ == "__main__":
    main()
