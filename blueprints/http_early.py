"""Answers given as soon as Hypercorn has parsed a request, before any HTTP stream exists (0.18).

An ASGI answer costs Hypercorn about half of a cached 200 before the app runs: a stream, a scope,
a task and a queue for the app, two ASGI messages, h11's validation of the response headers. A
client the rate limiter already refuses gets the same fixed 429 again and again; the patch lets
the app answer such a request from pre-built bytes right where Hypercorn's HTTP/1.1 protocol
(``H11Protocol._create_stream``) would create the stream.

The app offers this by ``app.extensions[EARLY_ANSWER]``: a callable taking the method, the path
(percent-decoded, as the ASGI scope has it), the request headers (lower-case names) and the
client address, returning ``(status, headers, body)`` or None (then the request goes on to the
stream and the app as usual). ``ratelimit_early.EarlyRefusals.answer`` is the one the service
registers.

Only the plain case is answered here, where h11's bookkeeping is simple and the bytes are what
Hypercorn would have sent: a ``GET`` over HTTP/1.1 without a body, on a connection that stays open
(the client did not ask to close it, and it is not at ``keep_alive_max_requests``), with neither
an access log nor ``server_names`` configured. The status line and headers are written as h11
writes them, with Hypercorn's own ``date`` and ``server`` headers; h11's state machine is moved on
as its ``send`` would move it, and the connection is recycled for the next request as Hypercorn
does after a response. Everything else takes Hypercorn's path.
"""

from __future__ import annotations

from importlib.metadata import version
from urllib.parse import unquote

import h11
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol

from app_extensions.hooks import EARLY_ANSWER, EarlyAnswer, Header

SUPPORTED_H11 = ("0.14.", "0.15.", "0.16.")
_ORIGINAL_CREATE_STREAM = H11Protocol._create_stream
#: Request headers that take a request off the plain path (a body, an upgrade).
_NOT_PLAIN = (b"content-length", b"transfer-encoding", b"upgrade")


def answerer_of(protocol: H11Protocol) -> EarlyAnswer | None:
    """The early answerer of the app served by ``protocol`` (None when it offers none)."""
    extensions = getattr(getattr(protocol.app, "app", None), "extensions", None)
    return extensions.get(EARLY_ANSWER) if isinstance(extensions, dict) else None


def encode(status: int, headers: list[Header], body: bytes) -> bytes:
    """A whole HTTP/1.1 response, byte for byte as h11 writes it for Hypercorn."""
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"HTTP/1.1 %d \r\n%s\r\n%s" % (status, head, body)


async def _create_stream(self: H11Protocol, request: h11.Request) -> None:
    answered = await _answer_early(self, request)
    if not answered:
        await _ORIGINAL_CREATE_STREAM(self, request)


async def _answer_early(self: H11Protocol, request: h11.Request) -> bool:
    """Answer ``request`` here if the app has an answer and the case is plain; True if done."""
    answerer = answerer_of(self)
    conn = self.connection
    if (answerer is None or request.method != b"GET" or request.http_version != b"1.1"
            or not isinstance(conn, h11.Connection)):
        return False
    config = self.config
    headers = list(request.headers)
    if (any(name in _NOT_PLAIN for name, _ in headers) or config.server_names
            or config.log.access_logger is not None
            or self.keep_alive_requests + 1 >= config.keep_alive_max_requests
            or conn.our_state is not h11.SEND_RESPONSE or not conn._cstate.keep_alive):
        return False
    path = request.target.partition(b"?")[0].decode("ascii")
    answer = answerer("GET", unquote(path) if "%" in path else path, headers, self.client)
    if answer is None:
        return False
    end = conn.next_event()  # a GET without a body: its end comes with it
    if type(end) is not h11.EndOfMessage:
        raise h11.LocalProtocolError(f"a bodiless GET went on with {end!r}")
    status, head, body = answer
    await self.send(RawData(data=encode(status, head + config.response_headers("h11"), body)))
    state = conn._cstate  # what h11's send of a Response and its EndOfMessage would do
    state.process_event(h11.SERVER, h11.Response)
    state.process_event(h11.SERVER, h11.EndOfMessage)
    self.keep_alive_requests += 1
    await self.context.mark_request()
    await self._maybe_recycle()  # Hypercorn's own end of a response: next cycle, or close
    return True


def install() -> bool:
    """Patch Hypercorn's HTTP/1.1 protocol (idempotent); False when h11 is not a version whose
    state machine this was written against (then nothing is answered early)."""
    if not version("h11").startswith(SUPPORTED_H11):
        return False
    H11Protocol._create_stream = _create_stream  # type: ignore[method-assign]
    return True
