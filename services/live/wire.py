"""What a connection sends: a message's JSON text, encoded once and shared.

The server frames each message itself (and deflates it, per connection, when the client
negotiated permessage-deflate: ``blueprints/ws_server.py``), so the app hands every client of a
channel the same ``str``: a channel's frame is encoded to JSON once per instance, not per client.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any, Protocol

_COMPACT = (",", ":")


class Message(Protocol):
    """What a connection writes: its JSON text (one text frame)."""

    @property
    def text(self) -> str: ...


class Shared:
    """Mixin of a frame shared by every client of a channel: its text, made on first use and kept."""

    def client(self) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def text(self) -> str:
        """The client frame as JSON text (encoded once, shared by every client)."""
        return json.dumps(self.client(), separators=_COMPACT)


class Reply:
    """A frame for one client (``subscribed``, ``snapshot``, ``pong``, ``error``...)."""

    __slots__ = ("text",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.text = json.dumps(body, separators=_COMPACT)
