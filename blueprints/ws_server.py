"""The WebSocket endpoint's server settings, as plain values of the server's own configuration.

Nothing here changes a server: ``hypercorn_options`` and ``uvicorn_options`` only return the
values the serving entry point sets on Hypercorn's ``Config`` or passes to Uvicorn.

- **Heartbeat**: the server pings every ``WS_HEARTBEAT_SECONDS`` (browsers and WebSocket
  libraries answer by themselves). Under Hypercorn a peer that sends nothing, not even the pong,
  for three intervals is disconnected (``read_timeout``); Uvicorn closes a peer whose pong has
  not come ``ws_ping_timeout`` after a ping. An ASGI app cannot send pings itself.
  Hypercorn 0.18 runs one ping task per connection that sleeps a whole interval before it looks
  whether its stream has closed, and a connection's socket is closed only when all its tasks have
  ended: after a close the socket may stay open (CLOSE-WAIT once the peer has gone) for up to one
  interval. No upstream issue for this was found; we accept it rather than patch Hypercorn.
- **Frame size**: a frame far over ``WS_MAX_MESSAGE_BYTES`` (16x, at least 64 KiB) is refused by
  the server with close code 1009 before it is buffered; smaller oversized frames get an
  ``invalid_message`` error from the app (``blueprints/websocket.py``).
- **permessage-deflate** is negotiated by the server, not by the app. Hypercorn 0.18 accepts every
  client's offer with wsproto's defaults, context takeover included, and has no setting to
  decline it or to ask for ``server_no_context_takeover`` (pgjones/hypercorn#307 asks for
  Uvicorn's setting; the Hypercorn fork anycorn added it in davidbrochart/anycorn#29). What that
  costs: each deflating connection keeps its own compressor (zlib's ~256 KiB window state once its
  first message is sent) and every message is deflated once per client instead of once per
  channel. Uvicorn declines the extension with ``ws_per_message_deflate=False``
  (``WS_PER_MESSAGE_DEFLATE`` off); our frames are about 150 bytes, and Binance's own streams do
  not compress either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _largest_frame(config: Mapping[str, Any]) -> int:
    return max(65536, 16 * int(config["WS_MAX_MESSAGE_BYTES"]))


def hypercorn_options(config: Mapping[str, Any]) -> dict[str, float]:
    """Hypercorn ``Config`` values for the WebSocket endpoint (see the module docstring)."""
    beat = float(config["WS_HEARTBEAT_SECONDS"])
    return {"websocket_ping_interval": beat, "read_timeout": 3 * beat,
            "websocket_max_message_size": _largest_frame(config)}


def uvicorn_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Uvicorn ``Config`` keyword arguments for the WebSocket endpoint: the same heartbeat (a ping
    every ``WS_HEARTBEAT_SECONDS``, a peer whose pong is two intervals late is closed), the same
    frame limit, and permessage-deflate as ``WS_PER_MESSAGE_DEFLATE`` says."""
    beat = float(config["WS_HEARTBEAT_SECONDS"])
    return {"ws_ping_interval": beat, "ws_ping_timeout": 2 * beat,
            "ws_max_size": _largest_frame(config),
            "ws_per_message_deflate": bool(config["WS_PER_MESSAGE_DEFLATE"])}
