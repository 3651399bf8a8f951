"""prometheus-client multiprocess mode: Hypercorn with two worker processes, one aggregated /metrics."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live_server import hypercorn_server

BATCH = 20


@pytest.fixture
def server(tmp_path: Path, db_schema: str, redis_prefix: str) -> Iterator[tuple[str, Path]]:
    """``hypercorn --workers 2`` serving the app with PROMETHEUS_MULTIPROC_DIR set."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {"DATABASE_SCHEMA": db_schema, "REDIS_PREFIX": redis_prefix,
           "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "RATE_LIMIT_ENABLED": "false"}
    with hypercorn_server(env, workers=2) as base:
        yield base, mp_dir


def markets_count(text: str) -> float:
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "http_requests_total" and s.labels.get("route") == "/api/v1/markets"
        and s.labels.get("status") == "200"
    )


def per_process_counts(mp_dir: Path, scratch: Path) -> list[float]:
    """The /markets count each worker process wrote to its own counter file."""
    counts = []
    scratch.mkdir()
    for i, path in enumerate(sorted(mp_dir.glob("counter_*.db"))):
        one = scratch / f"p{i}"
        one.mkdir()
        shutil.copy(path, one / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))
        counts.append(sum(
            s.value for m in registry.collect() for s in m.samples
            if s.name == "http_requests_total" and s.labels.get("route") == "/api/v1/markets"
        ))
    return counts


async def test_two_workers_one_aggregated_metrics(server: tuple[str, Path], tmp_path: Path) -> None:
    base, mp_dir = server
    # A new connection per request, so the kernel spreads them over both workers' accept loops.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:
        sem = asyncio.Semaphore(16)

        async def one() -> int:
            async with sem, session.get(base + "/api/v1/markets") as r:
                await r.read()
                return r.status

        # The kernel decides which worker accepts; send batches until both have served some.
        sent = 0
        for _ in range(30):
            statuses = await asyncio.gather(*(one() for _ in range(BATCH)))
            assert statuses == [200] * BATCH
            sent += BATCH
            if len([c for c in per_process_counts(mp_dir, tmp_path / str(sent)) if c]) == 2:
                break
        scrapes: list[Any] = []
        for _ in range(4):  # whichever worker answers the scrape, the total is the same
            async with session.get(base + "/metrics") as r:
                assert r.status == 200
                scrapes.append(markets_count(await r.text()))
    assert scrapes == [sent] * 4
    counts = [c for c in per_process_counts(mp_dir, tmp_path / "final") if c]
    assert sum(counts) == sent
    assert len(counts) == 2, f"expected both workers to serve requests, got {counts}"
