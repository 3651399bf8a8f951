"""Frames of the live stream: typed in process, encoded once at the boundary.

A frame is made once by the channel's poller and shared by every client of the channel: its
client text (``text``, see ``wire``) is made on first use and cached, so fan-out to N clients
costs one JSON encoding per instance. Between
instances a frame travels as ``wire()`` text: the client frame plus the two times the receivers
need (when its poll started and when its result arrived).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.timeframes import Bar
from services.live.wire import Shared

_COMPACT = (",", ":")


@dataclass(frozen=True)
class BarFrame(Shared):
    """``{"type": "bar", "channel", "bar", "closed", "seq"[, "revised": true]}``."""

    channel: str
    bar: Bar
    closed: bool
    seq: int
    revised: bool = False
    #: Wall time (s) the poll that fetched the bar started: a client is never sent a frame
    #: fetched before the snapshot it was sent.
    fetched_at: float = 0.0
    #: Wall time (s) the poll's result arrived (fan-out latency is measured from it).
    polled_at: float = 0.0

    @property
    def ts(self) -> int:
        return int(self.bar[0])

    def client(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "bar", "channel": self.channel, "bar": self.bar,
                                 "closed": self.closed, "seq": self.seq}
        if self.revised:
            frame["revised"] = True
        return frame

    def wire(self) -> str:
        return json.dumps({"frame": self.client(), "fetched_at": self.fetched_at,
                           "polled_at": self.polled_at}, separators=_COMPACT)


@dataclass(frozen=True)
class StatusFrame(Shared):
    """``{"type": "status", "channel", "state": "live|stale", "reason"}``."""

    channel: str
    state: str
    reason: str
    polled_at: float = 0.0

    @property
    def stale(self) -> bool:
        return self.state == "stale"

    def client(self) -> dict[str, Any]:
        return {"type": "status", "channel": self.channel, "state": self.state,
                "reason": self.reason}

    def wire(self) -> str:
        return json.dumps({"frame": self.client(), "polled_at": self.polled_at},
                          separators=_COMPACT)


Frame = BarFrame | StatusFrame


def decode(payload: str | bytes) -> Frame:
    """A frame from its ``wire()`` text; raises ``ValueError`` for anything else."""
    try:
        msg = json.loads(payload)
        frame, polled_at = msg["frame"], float(msg["polled_at"])
        if frame["type"] == "bar":
            bar = frame["bar"]
            if not (isinstance(bar, list) and len(bar) == 6):
                raise ValueError("bar must be a list of 6 numbers")
            return BarFrame(str(frame["channel"]), bar, bool(frame["closed"]), int(frame["seq"]),
                            bool(frame.get("revised", False)), float(msg["fetched_at"]), polled_at)
        if frame["type"] == "status":
            return StatusFrame(str(frame["channel"]), str(frame["state"]), str(frame["reason"]),
                               polled_at)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a frame: {exc}") from exc
    raise ValueError("not a frame: unknown type")
