"""Hypercorn settings for the WebSocket endpoint, and a fix to Hypercorn's ping loop.

Hypercorn 0.18's ping task (``websocket_ping_interval``) sleeps a whole interval before it looks
whether its stream has closed, and a connection's socket is released only when all of its tasks
have ended: every connection closed by either side kept its socket (in CLOSE-WAIT once the peer
had gone) for up to one interval. ``hypercorn_options`` therefore installs a ping loop that
wakes every ``PING_CHECK_SECONDS`` to see whether the stream closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypercorn.protocol.ws_stream import WSStream
from wsproto.events import Ping

#: How often a ping loop checks that its stream is still open.
PING_CHECK_SECONDS = 0.2


async def _send_pings(self: Any) -> None:
    """Hypercorn's ``WSStream._send_pings``, ending within ``PING_CHECK_SECONDS`` of the close."""
    interval = float(self.config.websocket_ping_interval)
    while not self.closed:
        await self._send_wsproto_event(Ping())
        waited = 0.0
        while not self.closed and waited < interval:
            step = min(PING_CHECK_SECONDS, interval - waited)
            await self.context.sleep(step)
            waited += step


def install_prompt_pings() -> None:
    """Replace Hypercorn's ping loop (idempotent); see the module docstring."""
    WSStream._send_pings = _send_pings  # type: ignore[method-assign]


def hypercorn_options(config: Mapping[str, Any]) -> dict[str, float]:
    """Hypercorn settings for WebSockets: a ping every ``WS_HEARTBEAT_SECONDS``, a peer that sends
    nothing (not even the pong) for three of them is disconnected; frames far over
    ``WS_MAX_MESSAGE_BYTES`` (16x, at least 64 KiB) are refused with 1009 before being buffered.
    Installs the prompt ping loop these pings need."""
    install_prompt_pings()
    beat = float(config["WS_HEARTBEAT_SECONDS"])
    largest = max(65536, 16 * int(config["WS_MAX_MESSAGE_BYTES"]))
    return {"websocket_ping_interval": beat, "read_timeout": 3 * beat,
            "websocket_max_message_size": largest}
