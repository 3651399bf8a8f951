"""Choosing the server: bare Quart and the service, without patches, under Hypercorn, Uvicorn and
Granian, every figure from one run, printed as one table (docs/performance.md, "Choosing the
server").

    .venv/bin/python -m bench.servers [--quick] [--servers hypercorn,uvicorn,granian]
        [--seconds 4] [--rounds 3] [--connections 32] [--clients 1000] [--window 5]

Every server runs through ``serve.py`` (``bench.common.app_server`` and ``bench.ws_fanout``'s
child): the production settings, uvloop, the gc tuning and the WebSocket heartbeat and frame-size
settings mapped to each server's own options.

- **REST** (``bench/ohlcv_rest.py``'s phases): the three servers run at once, each one process
  serving bare Quart at ``/bare`` (the same 33 KB from memory) and the service; every round runs
  each phase on each server in turn (the order rotates), so a neighbour's load hits them alike.
  A phase's figure is its best round: req/s, and the server's CPU per answer (from /proc: the
  ratio least disturbed by other processes; without ``wrk``, ``bench/loadgen.py`` loads the
  servers, and shares the machine's CPU with them). Cached ``/ohlcv`` (500 x 1m) with
  the limiter off and on (a limit never reached), and a refusal (one client over the default
  limit: every answer a 429).
- **WebSocket** (``bench/ws_fanout.py``'s cases, a fresh server process each): the service with
  1 and N clients on one channel (polls per interval: 1.0 means one poll per channel whatever
  the clients), skew p50/p99 (poll result to the frame written, every sample of the window), CPU
  per broadcast, and KiB per idle connection for clients that offer permessage-deflate (as
  browsers do) and clients that do not; the same for a bare Quart app sending one 150-byte frame
  to each client per interval. ``uvicorn+deflate`` (full runs) is Uvicorn with ``WS_PER_MESSAGE_DEFLATE=true``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import uuid
from contextlib import ExitStack
from typing import Any

from bench import ws_fanout
from bench.common import LoadResult, app_server, drive, free_port, load_tool
from bench.ohlcv_rest import SERVER_PHASES, best, run_phases, warm

SERVERS = ("hypercorn", "uvicorn", "granian")
BASELINE = "hypercorn"  # "x bare on Hypercorn": the design's server


def server_env(name: str) -> tuple[str, dict[str, str]]:
    """``uvicorn+deflate``: Uvicorn accepting permessage-deflate (``WS_PER_MESSAGE_DEFLATE=true``)."""
    if name.endswith("+deflate"):
        return name.removesuffix("+deflate"), {"WS_PER_MESSAGE_DEFLATE": "true"}
    return name, {"WS_PER_MESSAGE_DEFLATE": "false"}


async def rest(servers: list[str], seconds: float, rounds: int, connections: int
               ) -> dict[str, dict[str, LoadResult]]:
    phases: dict[str, dict[str, list[LoadResult]]] = {name: {} for name in servers}
    with ExitStack() as stack:
        running = {name: stack.enter_context(app_server(
            "bench.ohlcv_rest:bench_app", free_port(), name)) for name in servers}
        for server in running.values():
            await warm(server.base)
            await drive(server.base + "/bare", 1, connections)  # warm-up
        for i in range(rounds):
            order = servers[i % len(servers):] + servers[:i % len(servers)]
            for name in order:
                await run_phases(running[name], phases[name], seconds, connections, SERVER_PHASES)
            print(f"REST round {i + 1}/{rounds} done", flush=True)
    for name, by in phases.items():
        for phase, runs in by.items():
            print(f"REST {name:<10} {phase:<34}" + ", ".join(
                f"{run.rps:.0f} req/s {run.cpu_us:.0f} us" for run in runs), flush=True)
    return {name: {phase: best(runs) for phase, runs in by.items()} for name, by in phases.items()}


async def websocket(servers: list[str], clients: int, window: float, interval: float
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    cases = [("service", "plain", 1), ("service", "plain", clients), ("service", "deflate", clients),
             ("bare", "plain", clients), ("bare", "deflate", clients)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in servers:
        server, env = server_env(name)
        for kind, mode, n in cases:
            if name.endswith("+deflate") and mode != "deflate":
                continue
            r = await ws_fanout.run_case(n, mode, window, interval, server, kind, env)
            out.setdefault(name, {})[f"{kind} {mode} {n}"] = r
            print(f"WS {name:<16} {kind:<8} {mode:<8} {n:>5}: p50 {r['p50_ms']:.1f} ms, p99 "
                  f"{r['p99_ms']:.1f} ms, CPU {r['cpu_ms_per_frame']:.1f} ms/broadcast, "
                  f"{r['rss_per_conn_kib']:.1f} KiB/conn, deflated {r['deflated']:.0%}, polls/interval "
                  f"{r['polls_per_interval']:.2f}", flush=True)
    return out


def fmt(value: float, spec: str = ".0f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def table(servers: list[str], ws_servers: list[str], r: dict[str, dict[str, LoadResult]],
          w: dict[str, dict[str, dict[str, Any]]], clients: int) -> list[tuple[str, list[str]]]:
    """The rows of the table: (figure, one cell per server)."""
    rows: list[tuple[str, list[str]]] = []
    names = list(dict.fromkeys([*servers, *ws_servers]))

    def row(label: str, cell: Any) -> None:
        cells = []
        for name in names:
            try:
                cells.append(cell(name))
            except KeyError:  # not measured on that server
                cells.append("")
            except ZeroDivisionError:  # a window too short for /proc's clock ticks
                cells.append("-")
        rows.append((label, cells))

    base = r.get(BASELINE, {}).get("bare")
    on, off, refused = "cached, limiter on (not reached)", "cached, limiter off", "limiter on, default config"
    row("bare Quart, 33 KB: req/s", lambda s: fmt(r[s]["bare"].rps))
    row("bare Quart: server CPU us per answer", lambda s: fmt(r[s]["bare"].cpu_us))
    for label, phase in (("cached /ohlcv, limiter off", off), ("cached /ohlcv, limiter on", on)):
        row(f"{label}: req/s", lambda s, p=phase: fmt(r[s][p].rps))
        row("  x bare, same server (req/s, CPU)", lambda s, p=phase: (
            f"{r[s][p].rps / r[s]['bare'].rps:.2f}, {r[s]['bare'].cpu_us / r[s][p].cpu_us:.2f}"))
        if base is not None:
            row("  x bare on Hypercorn (req/s, CPU)", lambda s, p=phase: (
                f"{r[s][p].rps / base.rps:.2f}, {base.cpu_us / r[s][p].cpu_us:.2f}"))
    row("refusal (429): req/s", lambda s: fmt(r[s][refused].rps))
    row("  CPU per 429 / per cached 200", lambda s: f"{r[s][refused].cpu_us / r[s][on].cpu_us:.2f}")
    plain, deflate = f"service plain {clients}", f"service deflate {clients}"
    bare_plain, bare_deflate = f"bare plain {clients}", f"bare deflate {clients}"
    row(f"WS {clients} clients: skew p50 / p99 ms", lambda s: (
        f"{fmt(w[s][plain]['p50_ms'], '.1f')} / {fmt(w[s][plain]['p99_ms'], '.1f')}"))
    row("  deflate offered: p50 / p99 ms", lambda s: (
        f"{fmt(w[s][deflate]['p50_ms'], '.1f')} / {fmt(w[s][deflate]['p99_ms'], '.1f')}"))
    row("  bare Quart: p50 / p99 ms", lambda s: (
        f"{fmt(w[s][bare_plain]['p50_ms'], '.1f')} / {fmt(w[s][bare_plain]['p99_ms'], '.1f')}"))
    def cpu(s: str) -> str:
        ours, bare = w[s][plain]["cpu_ms_per_frame"], w[s][bare_plain]["cpu_ms_per_frame"]
        return f"{ours:.1f} ({ours / bare:.2f})"

    row("  CPU ms per broadcast (x bare's)", cpu)
    row("  KiB per idle connection, plain", lambda s: fmt(w[s][plain]["rss_per_conn_kib"], ".1f"))
    row("  KiB per idle connection, deflate offered", lambda s: (
        f"{fmt(w[s][deflate]['rss_per_conn_kib'], '.1f')} ({w[s][deflate]['deflated']:.0%} deflated)"))
    row("  bare Quart KiB, plain / deflate offered", lambda s: (
        f"{fmt(w[s][bare_plain]['rss_per_conn_kib'], '.1f')} / {fmt(w[s][bare_deflate]['rss_per_conn_kib'], '.1f')}"))
    row(f"polls per interval, 1 vs {clients} clients", lambda s: (
        f"{w[s]['service plain 1']['polls_per_interval']:.2f} vs {w[s][plain]['polls_per_interval']:.2f}"))
    return rows


def render(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(n), *(len(c[i]) for _, c in rows)) + 2 for i, n in enumerate(names)]
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for label, cells in rows:
        lines.append(f"| {label:<{width - 2}} | " + " | ".join(
            f"{c:>{w - 2}}" for c, w in zip(cells, cols, strict=True)) + " |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    servers = args.servers.split(",")
    deflate = not args.quick and "uvicorn" in servers and "ws" in args.parts
    ws_servers = servers + (["uvicorn+deflate"] if deflate else [])
    tag = uuid.uuid4().hex[:8]
    os.environ.setdefault("BENCH_SCHEMA", f"bench_ws_{tag}")
    os.environ.setdefault("BENCH_PREFIX", f"bench:ws:{tag}")
    tool = load_tool()
    print(f"REST: {tool} -c{args.connections}, {args.rounds} rounds x {args.seconds:g} s per phase; "
          f"WebSocket: {args.clients} clients, {args.window:g} s window, a frame every {args.interval:g} s",
          flush=True)
    parts = args.parts.split(",")
    r = await rest(servers, args.seconds, args.rounds, args.connections) if "rest" in parts else {}
    w: dict[str, dict[str, dict[str, Any]]] = {}
    if "ws" in parts:
        try:
            w = await websocket(ws_servers, args.clients, args.window, args.interval)
        finally:
            await ws_fanout.drop_schema(os.environ["BENCH_SCHEMA"], os.environ["BENCH_PREFIX"])
    names = list(dict.fromkeys([*servers, *ws_servers]))
    print()
    print(render(names, table(servers, ws_servers, r, w, args.clients)))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds x 2 s, a 3 s WebSocket window, no uvicorn+deflate (~6 min)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--parts", default="rest,ws", help="rest, ws or both (the default)")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--window", type=float)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    quick = {"seconds": 2.0, "rounds": 2, "window": 3.0}
    full = {"seconds": 4.0, "rounds": 3, "window": 5.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


if __name__ == "__main__":
    asyncio.run(main(arguments()))
