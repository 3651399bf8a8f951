"""app_extensions/prepared_answers.py: content codings, and the prepared-answer store (LRU by bytes,
revisions, generations)."""

from __future__ import annotations

import gzip

import brotli
import pytest

from app_extensions.prepared_answers import (
    ENTRY_OVERHEAD,
    PreparedAnswer,
    PreparedAnswers,
    accepted_encoding,
    etag_matches,
    prepare_sync,
)

BODY = b'{"bars": [' + b",".join(b"[%d,1.5,2.5,0.5,2.0,10.0]" % i for i in range(200)) + b"]}"


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip, deflate, br, zstd", "br"), ("gzip", "gzip"), ("br;q=0, gzip", "gzip"),
    ("identity", None), ("", None), ("*", "br"), ("*;q=0", None),
    ("gzip;q=0, *", "br"), ("deflate", None), ("GZIP", "gzip"), ("br;q=bad", None),
    # q-values rank (24.17): the client's preference first, ours (br) between equals.
    ("br;q=0.5, gzip;q=1.0", "gzip"), ("br;q=0.5, gzip;q=1", "gzip"), ("gzip;q=0.8, br;q=0.9", "br"),
    ("gzip;q=0.5, br;q=0.5", "br"), ("gzip, br;q=0.1", "gzip"), ("*;q=0.3, gzip;q=0.2", "br"),
    ("br;q=0, gzip;q=0", None), ("gzip;q=0.5, identity;q=1", None), ("gzip, identity;q=0.5", "gzip"),
    ("br;q=2, gzip", "gzip"), ("br;q=nan, gzip;q=0.1", "gzip"), ("br; q=0.5 , gzip ; q=0.6", "gzip"),
])
def test_accepted_encoding(header: str, expected: str | None) -> None:
    assert accepted_encoding(header) == expected


def pick(entry: PreparedAnswer, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers served to a client's ``Accept-Encoding``."""
    return entry.variants[entry.encoding(accept_encoding)]


def test_prepared_variants_decode_to_the_body_and_name_their_representation() -> None:
    entry = prepare_sync("sim:sim:SIM/USD", 0, 60_000, BODY, "cache", ttl=60)
    identity, headers = pick(entry, "")
    assert identity == BODY and headers["ETag"] == entry.etag and "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"
    br, br_headers = pick(entry, "gzip, br")
    gz, gz_headers = pick(entry, "gzip")
    assert brotli.decompress(br) == BODY and gzip.decompress(gz) == BODY
    assert len(br) < len(BODY) / 2 and len(gz) < len(BODY) / 2
    assert (br_headers["Content-Encoding"], gz_headers["Content-Encoding"]) == ("br", "gzip")
    tags = {headers["ETag"], br_headers["ETag"], gz_headers["ETag"]}
    assert len(tags) == 3  # a strong ETag per representation
    for tag in tags:  # ... and If-None-Match with any of them matches the answer
        assert etag_matches(tag, entry.etag) and etag_matches(f"W/{tag}", entry.etag)
    assert not etag_matches('"other"', entry.etag) and etag_matches("*", entry.etag)


def test_small_answers_have_no_compressed_variant() -> None:
    entry = prepare_sync("s", 0, 1, b'{"bars": []}', "cache", ttl=60)
    assert set(entry.variants) == {""}
    assert pick(entry, "br")[0] == b'{"bars": []}' and "Vary" not in pick(entry, "br")[1]


def entry(series: str, start: int, end: int, size: int) -> PreparedAnswer:
    body = (b"x" * (size - ENTRY_OVERHEAD))
    return PreparedAnswer(series, start, end, '"e"', {"": (body, {})}, expires=float("inf"), size=size)


def test_lru_by_bytes() -> None:
    store = PreparedAnswers(max_bytes=10_000)
    gen = store.generation("a")
    for i in range(3):
        assert store.put(b"k%d" % i, entry("a", 0, 10, 3_000), gen)
    assert store.get(b"k0") is not None  # k0 is now the most recent
    assert store.put(b"k3", entry("a", 0, 10, 3_000), gen)
    assert store.get(b"k1") is None and store.get(b"k0") is not None  # k1 was least recent
    assert store.bytes_used == 9_000 and len(store) == 3
    assert not store.put(b"big", entry("a", 0, 10, 20_000), gen)  # larger than the bound alone


def test_a_revision_drops_only_the_ranges_holding_its_bar() -> None:
    store = PreparedAnswers(max_bytes=1_000_000)
    for key, series, start, end in [(b"a1", "a", 0, 100), (b"a2", "a", 100, 200), (b"b1", "b", 0, 100)]:
        store.put(key, entry(series, start, end, 2_000), store.generation(series))
    assert store.revise("a", 100) == 1
    assert store.get(b"a1") is not None and store.get(b"a2") is None and store.get(b"b1") is not None
    assert store.revise("a", 99) == 1 and store.get(b"a1") is None
    assert store.bytes_used == 2_000


def test_an_answer_built_before_a_revision_or_a_clear_is_not_kept() -> None:
    store = PreparedAnswers(max_bytes=1_000_000)
    before = store.generation("a")
    store.revise("a", 5)
    assert not store.put(b"k", entry("a", 0, 10, 2_000), before)
    before = store.generation("never-seen")
    store.clear()  # (re)subscribing: revisions may have been missed, whatever the series
    assert not store.put(b"k", entry("never-seen", 0, 10, 2_000), before)
    assert store.put(b"k", entry("a", 0, 10, 2_000), store.generation("a"))


def test_entries_expire() -> None:
    store = PreparedAnswers(max_bytes=1_000_000)
    old = PreparedAnswer("a", 0, 1, '"e"', {"": (b"x", {})}, expires=0.0, size=2_000)
    store.put(b"k", old, store.generation("a"))
    assert store.get(b"k") is None and store.bytes_used == 0


def test_a_prepared_answer_follows_the_clients_q_values() -> None:
    entry = prepare_sync("sim:sim:SIM/USD", 0, 60_000, BODY, "cache", ttl=60)
    body, headers = pick(entry, "br;q=0.5, gzip;q=1.0")
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == BODY
    body, headers = pick(entry, "gzip;q=0.5, br")
    assert headers["Content-Encoding"] == "br" and brotli.decompress(body) == BODY
