"""wire.frame: server text messages, plain or deflated without context, inflated as a client does."""

from __future__ import annotations

import random
import string
import struct
import zlib

import pytest

from services.hub.frames import BarFrame
from services.hub.wire import DEFLATE_MIN_BYTES, Reply, frame


def parse(message: bytes, wbits: int) -> tuple[bool, str]:
    """(deflated, text) of one server message, inflated with a fresh ``2**wbits`` window as a
    client does for a server without context takeover (RFC 7692 7.2.2)."""
    first, size = message[0], message[1]
    assert first & 0x8F == 0x81 and not size & 0x80  # FIN, text, unmasked
    offset = 2
    if size == 126:
        size, offset = struct.unpack("!H", message[2:4])[0], 4
    elif size == 127:
        size, offset = struct.unpack("!Q", message[2:10])[0], 10
    payload = message[offset:]
    assert len(payload) == size
    if first & 0x40:
        payload = zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")
    return bool(first & 0x40), payload.decode()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("wbits", [0, 9, 15])
def test_a_message_of_any_length_reads_back(length: int, wbits: int) -> None:
    rng = random.Random(length)
    block = "".join(rng.choice(string.ascii_letters) for _ in range(min(length, 3000)))
    text = (block * (length // max(1, len(block)) + 1))[:length]  # repeats far apart
    deflated, back = parse(frame(text, wbits), wbits or 15)
    assert back == text and deflated == bool(wbits)


def test_a_shared_frame_is_encoded_once_per_window() -> None:
    bar = BarFrame("sim:sim:SIM/USD:1m", [1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 3.0], False, 7)
    assert bar.encoded(15) is bar.encoded(15)
    assert parse(bar.encoded(0), 15) == (False, bar.text)
    assert parse(bar.encoded(15), 15) == (True, bar.text)
    assert parse(bar.encoded(9), 9) == (True, bar.text)


def test_a_short_reply_goes_uncompressed_a_long_one_deflated() -> None:
    pong = Reply({"type": "pong", "id": 1})
    snapshot = Reply({"type": "snapshot", "bars": [[i, 1.0, 2.0, 0.5, 1.5, 3.0] for i in range(100)]})
    assert len(snapshot.text) >= DEFLATE_MIN_BYTES
    assert parse(pong.encoded(15), 15) == (False, pong.text)
    assert parse(snapshot.encoded(15), 15) == (True, snapshot.text)
