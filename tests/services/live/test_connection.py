"""Connection: per channel, what a client is sent of the broadcast frames; a peer behind, a full
queue, a stalled send."""

from __future__ import annotations

import asyncio
import itertools
import json

from services.live.connection import Connection
from services.live.frames import BarFrame
from tests.support.ws import wait_for

CH = "sim:sim:SIM/USD:1m"
X = 1_700_000_040_000
SEQ = itertools.count(1)


def frame(ts: int, close: float, closed: bool) -> BarFrame:
    return BarFrame(CH, [ts, 1.0, 2.0, 0.5, close, 3.0], closed, next(SEQ))


class Recorder:
    """An outlet (an ASGI send) that takes every message at once, in order."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, text: str) -> None:
        self.texts.append(text)

    @classmethod
    def of(cls, texts: list[str]) -> Recorder:
        recorder = cls()
        recorder.texts = texts
        return recorder


def sent(outlet: Recorder) -> list[tuple[int, float, bool]]:
    out = []
    for text in outlet.texts:
        f = json.loads(text)
        out.append((f["bar"][0], f["bar"][4], f["closed"]))
    return out


async def test_a_bucket_is_sent_closed_once_even_when_a_second_worker_sends_it_again() -> None:
    outlet = Recorder()
    conn = Connection(outlet, max_queue=100, send_timeout=5.0)
    conn.hold(CH)
    conn.ready(CH, [], 0.0)
    conn.deliver(frame(X, 1.0, False))
    conn.deliver(frame(X, 1.1, True))
    # a hand-over or split brain: another worker sends X's final bar again (fetched later), and
    # its forming bar again
    conn.deliver(frame(X, 1.2, True))
    conn.deliver(frame(X, 1.3, False))
    conn.deliver(frame(X + 60_000, 2.0, False))
    assert conn.queued == 3
    await wait_for(lambda: conn.queued == 0 and conn.sending_since is None)
    assert sent(outlet) == [(X, 1.0, False), (X, 1.1, True), (X + 60_000, 2.0, False)]


class Gate(Recorder):
    """An outlet whose sends wait until ``open`` (a peer that does not read)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def __call__(self, text: str) -> None:
        await self.opened.wait()
        self.texts.append(text)


def live(conn: Connection) -> Connection:
    conn.hold(CH)
    conn.ready(CH, [], 0.0)
    return conn


async def test_a_peer_behind_gets_its_frames_in_order_once_it_reads_and_no_task_is_left() -> None:
    outlet = Gate()
    conn = live(Connection(outlet, max_queue=10, send_timeout=5.0))
    conn.send_frame({"type": "pong", "id": 1})
    for i in range(5):
        conn.deliver(frame(X + i * 60_000, 1.0, False))
    assert conn.queued == 6 and outlet.texts == []
    await wait_for(lambda: conn.sending_since is not None)  # the first send waits on the peer
    assert conn.queued == 5 and outlet.texts == []
    outlet.opened.set()
    await wait_for(lambda: len(outlet.texts) == 6)
    assert json.loads(outlet.texts[0]) == {"type": "pong", "id": 1}
    assert [t for t, _c, _x in sent(Recorder.of(outlet.texts[1:]))] == [X + i * 60_000 for i in range(5)]
    await wait_for(lambda: conn._drainer is None)  # nothing waits: no task is left
    conn.deliver(frame(X + 5 * 60_000, 1.0, False))
    await wait_for(lambda: len(outlet.texts) == 7)
    await wait_for(lambda: conn._drainer is None)
    assert conn.sending_since is None


async def test_a_full_queue_drops_the_client_as_slow_or_as_a_flood_of_its_own_replies() -> None:
    slow = live(Connection(Gate(), max_queue=3, send_timeout=5.0))
    for i in range(5):
        slow.deliver(frame(X + i * 60_000, 1.0, False))
    assert slow.drop_reason == "slow" and slow.close_code == 1013 and slow.queued == 0
    flood = live(Connection(Gate(), max_queue=3, send_timeout=5.0))
    for i in range(5):
        flood.send_frame({"type": "error", "id": i})
    assert flood.drop_reason == "flood"
    await slow.close()
    await flood.close()


async def test_a_send_not_taken_in_send_timeout_drops_the_client() -> None:
    conn = live(Connection(Gate(), max_queue=10, send_timeout=0.2))
    conn.deliver(frame(X, 1.0, False))
    await wait_for(lambda: conn.sending_since is not None)
    now = asyncio.get_running_loop().time()
    assert not conn.stalled(now) and conn.drop_reason is None  # not yet
    async with conn.until_dropped():
        assert conn.stalled(now + 0.2)  # the drop interrupts the block
        await asyncio.sleep(5)
    assert conn.drop_reason == "send_timeout" and conn.close_code == 1013
    await wait_for(lambda: conn._drainer is None)  # the waiting send was cancelled
