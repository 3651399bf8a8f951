"""Prepared answers in process memory, dropped on revision, and compression of JSON answers.

``ResponseCache`` owns a ``PreparedAnswers`` store (``app_extensions/prepared_answers.py``): closed-range
``/ohlcv`` answers prepared once (body, ETag, ``br`` and ``gzip`` variants) under the memory bound
``ANSWER_BYTES_MAX``. A task it owns listens on the Redis pub/sub channel
``<REDIS_PREFIX>:revisions`` for revision events ``{"series": "market:provider:symbol", "ts": <1m
bar ms>, "bar": [...]}`` and drops the entries of that series whose range holds ``ts``. The store
is used only while that subscription is up: an instance that cannot hear revisions serves from the
answer cache in Redis instead, and everything held is dropped when the subscription (re)starts,
since revisions may have been missed in between.

Every JSON answer over 1 KiB is compressed here (after_request) for clients that accept it:
``br``, else ``gzip``, with ``Vary: Accept-Encoding``; identity otherwise. Prepared answers carry
their compressed bytes already and pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

from quart import Quart, Request, Response, current_app
from quart.wrappers.response import DataBody
from redis.exceptions import RedisError
from werkzeug.datastructures import Headers

from app_extensions.hooks import get_hooks
from app_extensions.prepared_answers import (
    MIN_COMPRESS_BYTES,
    PreparedAnswer,
    PreparedAnswers,
    accepted_encoding,
    compress,
)
from app_extensions.redis_client import RedisClient, get_redis
from app_extensions.request_context import scope_header
from core.errors import DataSourceError
from core.metrics import ANSWER_BYTES_REVISIONS, ANSWER_BYTES_USED

log = logging.getLogger(__name__)
REDIS_ERRORS = (RedisError, OSError, TimeoutError, DataSourceError)
#: Bodies larger than this are compressed in a thread rather than on the event loop.
THREAD_COMPRESS_BYTES = 64 * 1024


class PreparedResponse(Response):
    """An answer whose encoding is settled (a prepared variant): compression leaves it alone."""

    @classmethod
    def sent_as(cls, body: bytes, headers: Iterable[tuple[str, str]], status: int = 200) -> PreparedResponse:
        """The response for ``body`` with ``headers`` (``Content-Type`` and ``Content-Length``
        among them) in the order given."""
        return cls(body, status, Headers(headers))


class ResponseCache:
    """Owner of the prepared answers and their revision listener. Reach it with
    ``get_response_cache(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.store = PreparedAnswers(0)
        self.enabled = False
        #: True while the revision subscription is up (only then is the store used).
        self.live = False
        self.redis: RedisClient | None = None
        self.retry_after = 2.0
        self._task: asyncio.Task[None] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        cfg = app.config
        ttl = float(cfg["CACHE_TTL_CLOSED"])
        self.store = PreparedAnswers(int(cfg["ANSWER_BYTES_MAX"]), ttl=ttl)
        self.enabled = self.store.max_bytes > 0 and ttl > 0
        self.redis = get_redis(app)
        self.retry_after = float(cfg["DEPENDENCY_RETRY_AFTER"])
        app.extensions["response_cache"] = self
        get_hooks(app).after(self._compress)
        app.before_serving(self.start)

    @property
    def channel(self) -> str:
        assert self.redis is not None
        return self.redis.key("revisions")

    def lookup(self, key: bytes) -> PreparedAnswer | None:
        """The prepared answer for a raw query string, or None."""
        return self.store.get(key) if self.live else None

    async def keep(self, key: bytes, series: str, start: int, end: int, body: bytes, source: str,
                   generation: tuple[int, int], meta: Any = None) -> PreparedAnswer | None:
        """Prepare ``body`` (an answer of ``series`` over ``[start, end)``) and keep it; None while
        revisions cannot be heard. ``generation``: ``store.generation(series)`` read before the
        answer was built."""
        if not (self.enabled and self.live):
            return None
        entry = await self.store.prepare(key, series, start, end, body, source, generation, meta)
        ANSWER_BYTES_USED.set(self.store.bytes_used)
        return entry

    def apply_revision(self, payload: bytes | str) -> int:
        """Drop what a revision event makes stale; returns how many entries. A message that is not
        a revision event is logged and ignored."""
        try:
            event = json.loads(payload)
            series, ts = str(event["series"]), int(event["ts"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("revisions: not a revision event, ignored: %r (%s)", payload[:200], exc)
            return 0
        dropped = self.store.revise(series, ts)
        ANSWER_BYTES_REVISIONS.inc()
        ANSWER_BYTES_USED.set(self.store.bytes_used)
        return dropped

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="prepared-answers-revisions")

    async def close(self) -> None:
        """Stop the listener; the store is dropped."""
        task, self._task = self._task, None
        self.live = False
        while task is not None and not task.done():
            task.cancel()  # again if redis-py swallowed the first cancellation (it can, mid-read)
            await asyncio.wait([task], timeout=0.1)
        self.store.clear()

    async def _listen(self) -> None:
        while True:
            try:
                await self._subscribed()
            except REDIS_ERRORS as exc:
                if self.live:
                    log.warning("revisions: subscription lost, prepared answers off: %s", exc)
            except Exception as exc:  # a bug must not end the listener: log, back off, go on
                log.error("revisions: listener failed", exc_info=exc)
            finally:
                self.live = False
                self.store.clear()
                ANSWER_BYTES_USED.set(0)
            await asyncio.sleep(self.retry_after)

    async def _subscribed(self) -> None:
        assert self.redis is not None
        client = self.redis.client
        if client is None or not self.redis.available:
            raise DataSourceError("redis unavailable")
        pubsub: Any = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:  # Redis confirms the subscription: from here on no revision is missed
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg.get("type") == "subscribe":
                    break
            self.store.clear()  # anything built before may have missed a revision
            self.live = True
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    self.apply_revision(msg["data"])
        finally:
            self.live = False
            await _close_quietly(pubsub)

    def _compress(self, req: Request, ctx_g: Any, response: Response) -> Response | Awaitable[Response]:
        if isinstance(response, PreparedResponse):
            return response
        if (response.status_code in (204, 304) or not isinstance(response.response, DataBody)
                or (response.content_length or 0) <= MIN_COMPRESS_BYTES  # (a DataBody's is set)
                or "Content-Encoding" in response.headers or response.mimetype != "application/json"):
            return response
        return self._compressed(req, response)

    async def _compressed(self, req: Request, response: Response) -> Response:
        body = await response.get_data(as_text=False)
        if len(body) <= MIN_COMPRESS_BYTES:
            return response
        response.vary.add("Accept-Encoding")
        encoding = accepted_encoding(scope_header(req.scope, b"accept-encoding") or "")
        if encoding is None:
            return response
        if len(body) > THREAD_COMPRESS_BYTES:
            data = await asyncio.to_thread(compress, body, encoding)
        else:
            data = compress(body, encoding)
        response.set_data(data)
        response.headers["Content-Encoding"] = encoding
        etag = response.headers.get("ETag")
        if etag and etag.endswith('"'):  # a strong ETag names one representation
            response.headers["ETag"] = f'{etag[:-1]}-{encoding}"'
        return response


async def _close_quietly(pubsub: Any) -> None:
    try:
        await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
    except REDIS_ERRORS as exc:
        log.debug("closing the revisions subscription: %s", exc)


def get_response_cache(app: Quart | None = None) -> ResponseCache:
    cache: ResponseCache = (app or current_app).extensions["response_cache"]
    return cache
