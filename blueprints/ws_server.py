"""Hypercorn settings for the WebSocket endpoint, and our one patch of Hypercorn (0.18 only).

``install_hypercorn_patch`` (called by ``create_app``, idempotent) changes five things of
Hypercorn's asyncio worker when the installed Hypercorn is 0.18 (else nothing, with a
warning: every connection then goes through plain ASGI sends, slower but correct), and installs
``http_early`` (plain GETs the app answers before any HTTP stream exists: known refusals):

- **permessage-deflate without context takeover**: the server answers a client's offer with
  ``server_no_context_takeover; client_no_context_takeover``, so every message is deflated on its
  own: a channel's frame is deflated once for all its clients (``services/hub/wire.py``), and no
  connection keeps a compressor or decompressor window (256 KiB and 40 KiB of zlib state) between
  messages. Hypercorn 0.18 accepts every offer with wsproto's defaults (context takeover).
- **the stream in the scope**: after the accept, ``scope["extensions"]["hypercorn.ws_stream"]``
  holds a weak reference to the connection's ``WSStream``, from which ``ws_outlet`` reaches the
  socket's transport to write pre-framed messages.
- **one ping loop per process** instead of one task per connection: Hypercorn 0.18's ping task
  also slept a whole interval before it looked whether its stream had closed, and a connection's
  socket is released only when all of its tasks have ended (every closed connection kept its
  socket, in CLOSE-WAIT once the peer had gone, for up to one interval). The shared loop pings
  every open stream each ``websocket_ping_interval`` and forgets closed ones; a connection holds
  no ping task at all.
- **a lean app queue for a WebSocket** (``AppQueue`` in ``TaskGroup.spawn_app``): the bounded queue
  between Hypercorn and the app, without ``asyncio.Queue``'s per-instance waiters and deques.
- **socket reads under ``asyncio.timeout``** (``TCPServer._read_data``) instead of ``wait_for``,
  which on Python 3.11 made a task per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from importlib.metadata import version
from ssl import SSLError
from typing import Any

from hypercorn.asyncio.task_group import TaskGroup, _handle
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ws_stream
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.events import Ping
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError

log = logging.getLogger(__name__)
SUPPORTED = "0.18."
#: Key of the stream's weak reference in the ASGI scope's ``extensions``.
STREAM_KEY = "hypercorn.ws_stream"
_ORIGINAL_ACCEPT = WSStream._accept
_ORIGINAL_SPAWN_APP = TaskGroup.spawn_app


class IndependentDeflate(PerMessageDeflate):
    """permessage-deflate answered with no context takeover in either direction."""

    def __init__(self, client_no_context_takeover: bool = True,
                 client_max_window_bits: int | None = None,
                 server_no_context_takeover: bool = True,
                 server_max_window_bits: int | None = None) -> None:
        super().__init__(client_no_context_takeover, client_max_window_bits,
                         server_no_context_takeover, server_max_window_bits)


async def _accept(self: WSStream, message: Any) -> None:
    await _ORIGINAL_ACCEPT(self, message)
    extensions: dict[str, Any] = self.scope.setdefault("extensions", {})  # type: ignore[assignment]
    extensions[STREAM_KEY] = weakref.ref(self)


async def _send_pings(self: WSStream) -> None:
    """Replaces the per-connection ping task: hands the stream to the process's ping loop."""
    Pinger.of(float(self.config.websocket_ping_interval or 0)).add(self)


class Pinger:
    """Pings every open stream of this event loop each ``interval`` seconds, from one task."""

    _running: dict[tuple[asyncio.AbstractEventLoop, float], Pinger] = {}

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: weakref.WeakSet[WSStream] = weakref.WeakSet()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, interval: float) -> Pinger:
        key = (asyncio.get_running_loop(), interval)
        pinger = cls._running.get(key)
        if pinger is None:
            pinger = cls._running[key] = Pinger(interval)
        return pinger

    def add(self, stream: WSStream) -> None:
        ping(stream)
        self.streams.add(stream)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="ws-pings")

    async def _run(self) -> None:
        try:
            while self.streams:
                await asyncio.sleep(self.interval)
                for stream in list(self.streams):
                    if stream.closed or stream.state is not ASGIWebsocketState.CONNECTED:
                        self.streams.discard(stream)
                    else:
                        ping(stream)
        finally:
            self.task = None
            Pinger._running.pop((asyncio.get_running_loop(), self.interval), None)


def writer_of(stream: WSStream) -> asyncio.StreamWriter | None:
    """The socket writer of a WebSocket over HTTP/1.1 served by Hypercorn's asyncio worker, the
    only case where a stream's ``send`` ends in ``writer.write`` (None for HTTP/2, trio...)."""
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    return server.writer if isinstance(server, TCPServer) else None


def ping(stream: WSStream) -> None:
    """Send a ping on ``stream`` without waiting: straight into its socket buffer when it has
    one (a ping never waits behind a slow peer), else from a task of the connection."""
    writer = writer_of(stream)
    if writer is None:
        stream.task_group.spawn(stream._send_wsproto_event, Ping())
        return
    transport = writer.transport
    if transport.is_closing():
        return
    with contextlib.suppress(LocalProtocolError):  # the stream is closing
        transport.write(stream.connection.send(Ping()))


class AppQueue:
    """``asyncio.Queue``'s ``put``/``get`` (bounded, FIFO, any number of waiters), lean."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        self._items: list[Any] = []
        self._maxsize = maxsize
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    async def _wait(waiters: list[asyncio.Future[None]]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in waiters:
                waiters.remove(waiter)
            elif not waiter.cancelled():
                AppQueue._wake(waiters)  # woken, then cancelled: pass the turn on
            raise

    async def put(self, item: Any) -> None:
        while 0 < self._maxsize <= len(self._items):
            await self._wait(self._putters)
        self._items.append(item)
        self._wake(self._getters)

    async def get(self) -> Any:
        while not self._items:
            await self._wait(self._getters)
        item = self._items.pop(0)
        self._wake(self._putters)
        return item


async def _spawn_app(self: TaskGroup, app: Any, config: Any, scope: Any,
                     send: Any) -> Callable[[Any], Awaitable[None]]:
    """Hypercorn's ``TaskGroup.spawn_app``, with an ``AppQueue`` for a WebSocket."""
    if scope["type"] != "websocket":
        return await _ORIGINAL_SPAWN_APP(self, app, config, scope, send)
    queue = AppQueue(config.max_app_queue_size)
    loop = self._loop

    def _call_soon(func: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

    self.spawn(_handle, app, config, scope, queue.get, send, partial(loop.run_in_executor, None),
               _call_soon)
    return queue.put


async def _read_data(self: TCPServer) -> None:
    """Hypercorn's ``TCPServer._read_data`` with ``asyncio.timeout`` instead of ``wait_for``."""
    while not self.reader.at_eof():
        try:
            async with asyncio.timeout(self.config.read_timeout):
                data = await self.reader.read(MAX_RECV)
        except (ConnectionError, OSError, TimeoutError, SSLError):
            break
        else:
            await self.protocol.handle(RawData(data))
    await self.protocol.handle(Closed())


def install_hypercorn_patch() -> bool:
    """Install the patch described in the module docstring (idempotent); False (and nothing
    changed) when the installed Hypercorn is not the version it was written for."""
    found = version("hypercorn")
    if not found.startswith(SUPPORTED):
        log.warning("Hypercorn %s is not %sx: WebSocket fan-out goes through plain ASGI sends",
                    found, SUPPORTED)
        return False
    ws_stream.PerMessageDeflate = IndependentDeflate  # type: ignore[misc]  # the handshake's
    WSStream._accept = _accept  # type: ignore[method-assign]
    WSStream._send_pings = _send_pings  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TaskGroup.spawn_app = _spawn_app  # type: ignore[method-assign]
    return True


def hypercorn_options(config: Mapping[str, Any]) -> dict[str, float]:
    """Hypercorn settings for WebSockets: a ping every ``WS_HEARTBEAT_SECONDS``, a peer that sends
    nothing (not even the pong) for three of them is disconnected; frames far over
    ``WS_MAX_MESSAGE_BYTES`` (16x, at least 64 KiB) are refused with 1009 before being buffered.
    Installs the patch (the shared ping loop these pings need)."""
    install_hypercorn_patch()
    beat = float(config["WS_HEARTBEAT_SECONDS"])
    largest = max(65536, 16 * int(config["WS_MAX_MESSAGE_BYTES"]))
    return {"websocket_ping_interval": beat, "read_timeout": 3 * beat,
            "websocket_max_message_size": largest}
