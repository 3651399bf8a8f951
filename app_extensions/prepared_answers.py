"""The in-process HTTP answer cache: the bytes of closed-range answers, prepared once and kept in
process memory.

A closed range never changes except through a revision, so its answer is prepared once, at the
first request: the body, its ETag and its compressed variants (``br``, ``gzip``). A later identical
request is served from these bytes with no Redis look-up, no hashing and no compression.

``PreparedAnswers`` is the store of ``PreparedAnswer`` entries, keyed by the request's raw query
string, least recently used first out once their bytes pass ``max_bytes``, dropped when a
revision touches their series and range (``revise``) or when their time is up (``ttl``). A
per-series generation counter keeps an answer built before a revision from being stored after it.

Also here: the content-coding helpers every JSON answer uses (``accepted_encoding``, ``compress``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import brotli

from services.export.formats import DYNAMIC_LEVEL

#: Answers at most this long are sent as they are (compression would not pay for itself).
MIN_COMPRESS_BYTES = 1024
#: Encodings we produce, in order of preference.
ENCODINGS = ("br", "gzip")
#: Prepared answers are compressed once, so hard (per-request compression, ``DYNAMIC_LEVEL``,
#: favours speed).
PREPARED_LEVEL = {"br": 11, "gzip": 9}
#: Bookkeeping per entry (key, dicts, headers) counted against the memory bound.
ENTRY_OVERHEAD = 1024
_ACCEPT_CACHE_MAX = 256
_accept_cache: dict[str, str | None] = {}


def accepted_encoding(header: str) -> str | None:
    """The encoding to answer with for an ``Accept-Encoding`` header (RFC 9110 12.5.3): the one of
    ``ENCODINGS`` with the highest ``q`` (``*`` stands for those not named; ``q=0`` excludes), our
    order of preference (``br`` first) between equal ones; None (identity) when none is accepted
    or the client ranks ``identity`` itself above them."""
    if not header:
        return None
    hit = _accept_cache.get(header, "?")
    if hit != "?":
        return hit
    weights: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also nan: not a qvalue
                    q = 0.0
        weights[name.strip().lower()] = q
    star = weights.get("*", 0.0)
    best_q, _, best = max((weights.get(e, star), -i, e) for i, e in enumerate(ENCODINGS))
    chosen = best if best_q > 0 and weights.get("identity", 0.0) <= best_q else None
    if len(_accept_cache) >= _ACCEPT_CACHE_MAX:
        _accept_cache.clear()
    _accept_cache[header] = chosen
    return chosen


def compress(body: bytes, encoding: str, level: int | None = None) -> bytes:
    """``body`` in ``encoding`` (``br`` or ``gzip``); ``level`` defaults to the per-request one."""
    if encoding == "br":
        return bytes(brotli.compress(body, quality=level or DYNAMIC_LEVEL["br"], mode=brotli.MODE_TEXT))
    return gzip.compress(body, compresslevel=level or DYNAMIC_LEVEL["gzip"], mtime=0)


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    """One answer's bytes: ``variants`` maps an encoding (``""`` for identity) to its body and
    headers (``Content-Type``, ``ETag``, ``Vary``, ``Content-Encoding``, ``X-Data-Source``);
    ``sent`` maps it to the same headers as sent, in order, ``Content-Length`` last."""

    series: str
    start: int
    end: int
    etag: str
    variants: dict[str, tuple[bytes, dict[str, str]]]
    expires: float
    size: int = 0
    #: What the caller wants back on a hit (the query the answer is for).
    meta: Any = None
    sent: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def encoding(self, accept_encoding: str) -> str:
        """The variant (its key in ``variants``) for a client's ``Accept-Encoding``."""
        return (accepted_encoding(accept_encoding) or "") if len(self.variants) > 1 else ""


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def prepare_sync(series: str, start: int, end: int, body: bytes, source: str,
                 ttl: float, meta: Any = None) -> PreparedAnswer:
    """Build an entry (CPU-bound: call it in a thread). Each compressed variant has its own ETag
    (``"<hash>-br"``), since a strong ETag names one representation."""
    etag = etag_of(body)
    base = {"Content-Type": "application/json", "X-Data-Source": source}
    variants: dict[str, tuple[bytes, dict[str, str]]] = {"": (body, {**base, "ETag": etag})}
    if len(body) > MIN_COMPRESS_BYTES:
        variants[""][1]["Vary"] = "Accept-Encoding"
        for enc in ENCODINGS:
            data = compress(body, enc, PREPARED_LEVEL[enc])
            tag = f'{etag[:-1]}-{enc}"'
            variants[enc] = (data, {**base, "ETag": tag, "Vary": "Accept-Encoding", "Content-Encoding": enc})
    size = ENTRY_OVERHEAD + sum(len(data) for data, _ in variants.values())
    sent = {enc: (*headers.items(), ("Content-Length", str(len(data))))
            for enc, (data, headers) in variants.items()}
    return PreparedAnswer(series, start, end, etag, variants, time.monotonic() + ttl, size, meta, sent)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` by the weak comparison (RFC 9110 13.1.2): ``W/"x"`` matches ``"x"``,
    ``*`` matches anything, and a tag of any encoding of the same body (``"x-br"``) matches."""
    base = etag[:-1]
    for tag in if_none_match.split(","):
        tag = tag.strip()
        tag = tag[2:] if tag.startswith("W/") else tag
        if tag == "*" or tag == etag or (tag.startswith(base) and tag[len(base):-1] in ("-br", "-gzip")):
            return True
    return False


@dataclass
class PreparedAnswers:
    """The store: LRU by bytes, invalidated by revisions. Not thread-safe: use it on one loop."""

    max_bytes: int
    ttl: float = 3600.0
    bytes_used: int = 0
    _entries: OrderedDict[bytes, PreparedAnswer] = field(default_factory=OrderedDict)
    _by_series: dict[str, set[bytes]] = field(default_factory=dict)
    _generation: dict[str, int] = field(default_factory=dict)
    _epoch: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> PreparedAnswer | None:
        """The entry for ``key`` (a raw query string), or None; a hit becomes the most recent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def generation(self, series: str) -> tuple[int, int]:
        """Read before building an answer of ``series``; hand it to ``put``."""
        return self._epoch, self._generation.get(series, 0)

    async def prepare(self, key: bytes, series: str, start: int, end: int, body: bytes,
                      source: str, generation: tuple[int, int], meta: Any = None) -> PreparedAnswer:
        """Prepare ``body`` (compressed in a thread) and keep it unless a revision of ``series``
        came in since ``generation`` was read, or it alone is larger than the bound."""
        entry = await asyncio.to_thread(prepare_sync, series, start, end, body, source, self.ttl, meta)
        self.put(key, entry, generation)
        return entry

    def put(self, key: bytes, entry: PreparedAnswer, generation: tuple[int, int]) -> bool:
        if self.generation(entry.series) != generation or entry.size > self.max_bytes:
            return False
        self._drop(key)
        self._entries[key] = entry
        self._by_series.setdefault(entry.series, set()).add(key)
        self.bytes_used += entry.size
        while self.bytes_used > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def revise(self, series: str, ts: int | None = None) -> int:
        """Drop the entries of ``series`` whose range holds ``ts`` (all of them when None);
        returns how many. Answers of ``series`` being built now will not be stored."""
        self._generation[series] = self._generation.get(series, 0) + 1
        keys = [k for k in self._by_series.get(series, ())
                if ts is None or self._entries[k].start <= ts < self._entries[k].end]
        for key in keys:
            self._drop(key)
        return len(keys)

    def clear(self) -> None:
        """Drop everything (revisions may have been missed); builds in flight are not stored."""
        self._epoch += 1
        self._entries.clear()
        self._by_series.clear()
        self.bytes_used = 0

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes_used -= entry.size
        keys = self._by_series.get(entry.series)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_series[entry.series]
