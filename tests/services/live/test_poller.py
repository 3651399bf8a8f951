"""Poller.poll_once with in-memory collaborators and a fixed clock: what it publishes and writes,
poll by poll."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.errors import NetworkPluginError
from core.types import Channel
from plugins.base import Capabilities
from services.bus.backends import MemoryBackend
from services.bus.broadcast import Broadcast
from services.live.commits import Commit
from services.live.frames import Frame
from services.live.poller import Poller
from services.live.settings import PollSettings
from services.live.state import StateStore
from services.upstream.calls import ProviderCalls

X = 1_700_000_040_000  # a minute boundary
M = 60_000


class FakePlugin:
    capabilities = Capabilities(max_bars_per_call=1000, timeframes=("1m",), min_poll_interval=0.0)
    testnet = False

    def __init__(self) -> None:
        self.answer: list[list[float]] | Exception = []

    def call_weight(self, method: str) -> int:
        return 1

    def used_weight(self) -> int | None:
        return None

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int,
                          until: int | None = None) -> list[list[float]]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return [b for b in self.answer if b[0] >= since]


class FakeBudget:
    @asynccontextmanager
    async def guard(self, provider: str, weight: int = 1) -> AsyncIterator[None]:
        yield


class FakeMarkets:
    def __init__(self, plugin: FakePlugin) -> None:
        self.plugin, self.budget = plugin, FakeBudget()
        self.calls = ProviderCalls(self.budget)  # type: ignore[arg-type]

    async def get_plugin(self, market: str, provider: str) -> FakePlugin:
        return self.plugin


class FakeDb:
    def __init__(self) -> None:
        self.written: list[int] = []

    async def write(self, series: Any, bars: Sequence[Sequence[float]], complete: Any) -> int:
        self.written += [int(b[0]) for b in bars]
        return len(bars)


def bar(ts: int, close: float) -> list[float]:
    return [ts, 1.0, 2.0, 0.5, close, 10.0]


class Out:
    """The hub's side of a poller: frames (as clients get them) and sequence numbers."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.seq = 0

    async def publish(self, frame: Frame) -> None:
        self.frames.append(frame.client())

    async def commit(self, item: Commit) -> None:
        self.seq = max(self.seq, item.state.seq)
        for frame in item.frames:
            self.seq += 1
            self.frames.append(dataclasses.replace(frame, seq=self.seq).client())
        item.state.seq = self.seq


def store(backend: Any = None) -> StateStore:
    broadcast = Broadcast(None, retry_after=1.0)
    broadcast.backend = backend or broadcast.fallback
    return StateStore(broadcast)


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[Poller, FakePlugin, FakeDb, list[Any], Any]:
    plugin, db, out = FakePlugin(), FakeDb(), Out()
    clock = {"now": X + 30_000}
    monkeypatch.setattr("services.live.poller.now_ms", lambda: clock["now"])
    worker = Poller(
        Channel("sim", "sim", "SIM/USD", "1m"), markets=FakeMarkets(plugin),  # type: ignore[arg-type]
        out=out, store=store(), db=db,
        settings=PollSettings(intervals={}, default_interval=1.0, close_delay=0.5, revision_seconds=120.0),
    )
    return worker, plugin, db, out.frames, clock


def bars_of(frames: list[dict[str, Any]]) -> list[tuple[int, float, bool]]:
    return [(f["bar"][0], f["bar"][4], f["closed"]) for f in frames if f["type"] == "bar"]


async def test_changes_only_then_the_final_bar_written_even_inside_the_close_delay(setup: Any) -> None:
    worker, plugin, db, frames, clock = setup
    plugin.answer = [bar(X, 1.1)]
    await worker.poll_once()
    await worker.poll_once()  # unchanged: nothing new
    plugin.answer = [bar(X, 1.2)]
    await worker.poll_once()
    assert bars_of(frames) == [(X, 1.1, False), (X, 1.2, False)]
    clock["now"] = X + M + 100  # the next minute has a bar already; X's close delay not over yet
    plugin.answer = [bar(X, 1.3), bar(X + M, 1.4)]
    await worker.poll_once()
    assert bars_of(frames)[2:] == [(X, 1.3, True), (X + M, 1.4, False)]
    assert db.written == [X]
    plugin.answer = [bar(X, 1.3), bar(X + M, 1.4)]  # an older bucket again: never backwards
    await worker.poll_once()
    assert len(bars_of(frames)) == 4 and db.written == [X]
    # X again with other values, within POLL_REVISION_SECONDS of its end: a revision (issue 11),
    # published once with revised: true and written again
    plugin.answer = [bar(X, 9.9), bar(X + M, 1.4)]
    await worker.poll_once()
    await worker.poll_once()
    assert bars_of(frames)[4:] == [(X, 9.9, True)] and frames[-1]["revised"] is True
    assert db.written == [X, X]
    assert [f["seq"] for f in frames] == list(range(1, 6))


async def test_outage_publishes_stale_once_then_live_and_the_missed_bars(setup: Any) -> None:
    worker, plugin, db, frames, clock = setup
    plugin.answer = [bar(X, 1.0)]
    await worker.poll_once()
    plugin.answer = NetworkPluginError("down", retry_after=3.0)
    for _ in range(3):
        with pytest.raises(NetworkPluginError) as err:
            await worker.poll_once()
        assert await worker._failed(err.value.code, err.value.message, err.value.retry_after) >= 3.0
    clock["now"] = X + 3 * M + 1000
    plugin.answer = [bar(X, 1.1), bar(X + M, 1.2), bar(X + 2 * M, 1.3), bar(X + 3 * M, 1.4)]
    await worker.poll_once()
    statuses = [(f["state"], f["reason"]) for f in frames if f["type"] == "status"]
    assert statuses == [("stale", "provider_unavailable"), ("live", "recovered")]
    assert bars_of(frames)[1:] == [(X, 1.1, True), (X + M, 1.2, True), (X + 2 * M, 1.3, True),
                                   (X + 3 * M, 1.4, False)]
    assert db.written == [X, X + M, X + 2 * M]


async def test_short_pages_mid_history_do_not_close_a_resampled_bucket_early(
        setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page shorter than max_bars_per_call is not the end of the data (an exchange may cap its
    pages lower, or answer a time window): a 5m bucket resampled from 1m must not be published
    closed from the minutes of the first page only."""
    worker, plugin, db, frames, clock = setup
    worker.channel = Channel("sim", "sim", "SIM/USD", "5m")
    worker.size = 5 * M
    B = X - X % (5 * M)  # a 5m boundary
    calls = []
    real = plugin.fetch_ohlcv

    async def three_per_page(symbol: str, timeframe: str, since: int, limit: int,
                             until: int | None = None) -> list[list[float]]:
        calls.append(since)
        return (await real(symbol, timeframe, since, limit))[:3]

    monkeypatch.setattr(plugin, "fetch_ohlcv", three_per_page)
    clock["now"] = B + 30_000
    plugin.answer = [bar(B, 1.0)]
    await worker.poll_once()
    assert bars_of(frames) == [(B, 1.0, False)] and len(calls) == 1  # steady state: one call
    clock["now"] = B + 5 * M + 2 * M + 30_000  # an outage: the bucket B closed meanwhile
    plugin.answer = [bar(B + i * M, 1.0 + i) for i in range(8)]
    await worker.poll_once()
    # B closes with the close of its fifth minute, not of its third (the first page's last)
    assert bars_of(frames)[1:] == [(B, 5.0, True), (B + 5 * M, 8.0, False)]
    assert db.written == [B + i * M for i in range(7)]


class ForeignBackend(MemoryBackend):
    """A backend whose shared value of every key is ``raw`` (a foreign or truncated value)."""

    def __init__(self, raw: str) -> None:
        super().__init__()
        self.raw = raw

    async def load(self, key: str) -> str | None:
        return self.raw


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"last_ts": "x"}', '{"last_bar": 5}'])
async def test_a_foreign_state_in_redis_does_not_stop_the_poller(setup: Any, raw: str) -> None:
    worker, plugin, _db, frames, _clock = setup
    worker.store = store(ForeignBackend(raw))
    assert await worker.store.load(worker.channel.name) is None
    await worker._restore()
    plugin.answer = [bar(X, 1.1)]
    await worker.poll_once()
    assert bars_of(frames) == [(X, 1.1, False)]


async def test_an_infinite_retry_after_backs_off_a_bounded_time(setup: Any) -> None:
    from services.upstream.budget import MAX_PAUSE_SECONDS

    worker = setup[0]
    delay = await worker._failed("provider_unavailable", "rate limited", float("inf"))
    assert delay == MAX_PAUSE_SECONDS
