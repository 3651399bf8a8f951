"""Bar rows of a binary ``COPY ... TO STDOUT`` as column batches (numpy, no object per row).

The rows are those of ``services.bars.aggregates.bars_query``: ``ts timestamptz`` and five ``float8``
(open, high, low, close, volume), none NULL. In PostgreSQL's binary COPY format each is a fixed
74-byte record (a field count, then a length and 8 bytes per field, big-endian), so a block of
rows is read as one numpy structured array. Volumes are rounded as ``/ohlcv`` rounds them
(``core.timeframes.round_bar``), with the same results to the last bit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.timeframes import BAR_DECIMALS

COLUMNS = ("ts", "open", "high", "low", "close", "volume")
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
#: Signature, flags (int32) and the header extension's length (int32).
_HEADER = len(SIGNATURE) + 8
_TRAILER = struct.pack(">h", -1)
_ROW = np.dtype([("n", ">i2"), ("l0", ">i4"), ("ts", ">i8"),
                 *((f, [("len", ">i4"), ("v", ">f8")]) for f in COLUMNS[1:])])
ROW_BYTES = _ROW.itemsize  # 74
#: Binary timestamptz counts microseconds from 2000-01-01 UTC.
_PG_EPOCH_MS = 946_684_800_000
#: Scaled volumes (``v * 10**8``) below this are exact integers when rounded (2**52): numpy's
#: rounding can be checked against Python's there.
_EXACT_BELOW = 2.0 ** 52

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Batch:
    """Columns of consecutive bars: ``ts`` in integer ms (UTC), the rest float64."""

    ts: npt.NDArray[np.int64]
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64

    def __len__(self) -> int:
        return len(self.ts)


class CopyFormatError(ValueError):
    """The COPY data is not the rows ``bars_query`` selects (a bug, never the client's doing)."""


def round_volumes(volume: F64) -> F64:
    """``round(v, BAR_DECIMALS)`` of each value, exactly as Python rounds (``round_bar``).

    Python rounds the exact binary value of ``v`` to ``k / 10**8`` (half to even) and answers the
    float nearest to it. numpy scales (``v * 10**8``, rounded once), rounds to an integer ``s``
    and divides (``s / 10**8``, correctly rounded: the float nearest to it). The two agree
    whenever ``s == k``, which holds unless the scaled value lies within its own rounding error
    of a half (the product may then have crossed it); those few values, and values too large to
    scale exactly, are rounded by Python."""
    scale = 10.0 ** BAR_DECIMALS
    scaled = volume * scale
    out: F64 = np.rint(scaled) / scale
    with np.errstate(invalid="ignore"):  # inf - inf: caught by the size check below
        near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) <= 2 * np.spacing(np.abs(scaled))
    slow = np.flatnonzero(near_half | ~(np.abs(scaled) < _EXACT_BELOW))
    if len(slow):
        out[slow] = [round(v, BAR_DECIMALS) for v in volume[slow].tolist()]
    return out


def to_batch(block: bytes | bytearray | memoryview) -> Batch:
    """Whole rows of binary COPY data (no header, no trailer) as a ``Batch``."""
    rows = np.frombuffer(block, dtype=_ROW)
    if len(rows) and not ((rows["n"] == len(COLUMNS)).all() and (rows["l0"] == 8).all()
                          and all((rows[f]["len"] == 8).all() for f in COLUMNS[1:])):
        raise CopyFormatError("COPY rows are not (timestamptz, 5 x float8) without NULLs")
    ts = rows["ts"].astype(np.int64) // 1000 + _PG_EPOCH_MS
    o, h, lo, c, v = (rows[f]["v"].astype(np.float64) for f in COLUMNS[1:])
    return Batch(ts, o, h, lo, c, round_volumes(v))


class CopyParser:
    """Cuts a binary COPY stream, arriving in chunks of any size, into blocks of ``batch_rows``
    whole rows (``feed``), then the rest (``finish``). Holds at most one block and a chunk."""

    def __init__(self, batch_rows: int) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        self.block_bytes = batch_rows * ROW_BYTES
        self.rows = 0
        self._buf = bytearray()
        self._header = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Blocks completed by ``chunk``."""
        self._buf += chunk
        if not self._header:
            if len(self._buf) < _HEADER:
                return []
            if not self._buf.startswith(SIGNATURE):
                raise CopyFormatError("not binary COPY data")
            (extension,) = struct.unpack_from(">i", self._buf, len(SIGNATURE) + 4)
            if len(self._buf) < _HEADER + extension:
                return []
            del self._buf[:_HEADER + extension]
            self._header = True
        blocks = []
        while len(self._buf) >= self.block_bytes + len(_TRAILER):  # never cut the trailer off
            blocks.append(bytes(self._buf[:self.block_bytes]))
            del self._buf[:self.block_bytes]
        self.rows += len(blocks) * (self.block_bytes // ROW_BYTES)
        return blocks

    def finish(self) -> bytes:
        """The last rows (possibly none), once the stream has ended."""
        if not self._header or not self._buf.endswith(_TRAILER) or (len(self._buf) - 2) % ROW_BYTES:
            raise CopyFormatError("binary COPY data ended early")
        rest = bytes(self._buf[:-2])
        self._buf.clear()
        self.rows += len(rest) // ROW_BYTES
        return rest
