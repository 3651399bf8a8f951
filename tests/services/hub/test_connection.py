"""Connection.deliver: per channel, what a client is sent of the broadcast frames."""

from __future__ import annotations

import itertools
import json

from services.hub.connection import Connection
from services.hub.frames import BarFrame
from services.hub.wire import Message

CH = "sim:sim:SIM/USD:1m"
X = 1_700_000_040_000
SEQ = itertools.count(1)


def frame(ts: int, close: float, closed: bool) -> BarFrame:
    return BarFrame(CH, [ts, 1.0, 2.0, 0.5, close, 3.0], closed, next(SEQ))


class Recorder:
    """An outlet whose socket always takes more: messages are written at once, in order."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ready(self) -> bool:
        return True

    def write(self, message: Message) -> None:
        self.texts.append(message.text)

    async def send(self, message: Message) -> None:
        self.write(message)


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
    assert sent(outlet) == [(X, 1.0, False), (X, 1.1, True), (X + 60_000, 2.0, False)]
