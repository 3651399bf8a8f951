"""The export formats: column batches in, bytes out, as each batch is added.

- ``csv``: a header ``ts,open,high,low,close,volume``, then one line per bar, ``ts`` in integer ms;
- ``jsonl``: one ``[ts, o, h, l, c, v]`` per line;
- ``parquet``: one row group per batch, zstd inside; the footer comes with ``finish``;
- ``arrow``: an Arrow IPC stream, one record batch per batch.

Numbers in CSV and JSON lines are written by Arrow's CSV writer: the shortest text that reads back
as the same float64 (``37000`` for 37000.0, ``0.30000000000000004``). Parquet and Arrow have a
``ts`` column ``timestamp[ms, tz=UTC]`` and float64 prices and volume, and the series in the
schema's metadata. CSV and JSON lines can be compressed on the fly (``StreamCompressor``);
Parquet is compressed inside and Arrow is sent as it is.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

import brotli
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from services.export.rows import COLUMNS, Batch

#: Compression levels of answers compressed as they are sent (streamed exports, and any answer
#: compressed per request): favour speed.
DYNAMIC_LEVEL = {"br": 4, "gzip": 6}
#: Parquet's compression codec (inside the file; the answer is not compressed again).
PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class Format:
    """One export format: its name in ``format=``, content type, file extension, and whether the
    answer is compressed on the wire when the client accepts it."""

    name: str
    media_type: str
    extension: str
    compressible: bool


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("csv", "text/csv; charset=utf-8", "csv", True),
    Format("jsonl", "application/x-ndjson", "jsonl", True),
    Format("parquet", "application/vnd.apache.parquet", "parquet", False),
    Format("arrow", "application/vnd.apache.arrow.stream", "arrow", False),
)}


def arrow_schema(metadata: dict[str, str]) -> pa.Schema:
    """``ts`` (timestamp, ms, UTC) and float64 prices and volume; ``metadata``: the series."""
    fields = [pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False)]
    fields += [pa.field(name, pa.float64(), nullable=False) for name in COLUMNS[1:]]
    return pa.schema(fields, metadata=metadata)


def record_batch(batch: Batch, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(batch.ts, pa.timestamp("ms", tz="UTC")), *(pa.array(getattr(batch, name))
                                                          for name in COLUMNS[1:])],
        schema=schema)


class _Sink:
    """A write-only file object Arrow writes into; ``take`` hands over what was written since."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class Encoder:
    """Writes batches in one format; ``add`` and ``finish`` answer the bytes produced so far."""

    def __init__(self, fmt: Format, metadata: dict[str, str]) -> None:
        self.format = fmt
        self.schema = arrow_schema(metadata)
        self._sink = _Sink()
        self._writer: Any = None
        self._started = False
        if fmt.name == "parquet":
            # Dictionaries of float columns cost 7x the time of zstd alone and save nothing.
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression=PARQUET_COMPRESSION,
                                            use_dictionary=False)
        elif fmt.name == "arrow":
            self._writer = ipc.new_stream(self._sink, self.schema)

    def start(self) -> bytes:
        """The bytes that open the answer (CSV's header, Arrow's schema)."""
        self._started = True
        if self.format.name == "csv":
            return (",".join(COLUMNS) + "\n").encode()
        return self._sink.take()

    def add(self, batch: Batch) -> bytes:
        if not len(batch):
            return b""
        if self._writer is not None:
            self._writer.write_batch(record_batch(batch, self.schema))
            return self._sink.take()
        table = pa.Table.from_arrays([pa.array(batch.ts), *(pa.array(getattr(batch, name))
                                                             for name in COLUMNS[1:])], names=list(COLUMNS))
        out = io.BytesIO()
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, batch_size=len(batch)))
        lines = out.getvalue()
        if self.format.name == "jsonl":  # a CSV line of numbers, bracketed, is a JSON array
            return b"[" + lines[:-1].replace(b"\n", b"]\n[") + b"]\n"
        return lines

    def finish(self) -> bytes:
        """The closing bytes (Parquet's footer, Arrow's end of stream)."""
        if self._writer is not None:
            self._writer.close()
        return self._sink.take()


class StreamCompressor:
    """Incremental ``br`` or ``gzip`` at the per-request levels ``/ohlcv`` uses."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._br: Any = None
        self._gz: Any = None
        if encoding == "br":
            self._br = brotli.Compressor(mode=brotli.MODE_TEXT, quality=DYNAMIC_LEVEL["br"])
        elif encoding == "gzip":
            self._gz = zlib.compressobj(DYNAMIC_LEVEL["gzip"], zlib.DEFLATED, 31)
        else:
            raise ValueError(f"unknown content coding {encoding!r}")

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        return bytes(self._br.process(data)) if self._br is not None else self._gz.compress(data)

    def finish(self) -> bytes:
        return bytes(self._br.finish()) if self._br is not None else self._gz.flush()


def encode(fmt: Format, metadata: dict[str, str], encoding: str | None) -> Pipeline:
    """A pipeline writing ``fmt``, compressed with ``encoding`` (None: identity)."""
    return Pipeline(Encoder(fmt, metadata), StreamCompressor(encoding) if encoding else None)


@dataclass
class Pipeline:
    """Encoder then compressor: what goes on the wire for each step."""

    encoder: Encoder
    compressor: StreamCompressor | None

    def _out(self, data: bytes) -> bytes:
        return self.compressor.compress(data) if self.compressor is not None else data

    def start(self) -> bytes:
        return self._out(self.encoder.start())

    def add(self, batch: Batch) -> bytes:
        return self._out(self.encoder.add(batch))

    def finish(self) -> bytes:
        tail = self._out(self.encoder.finish())
        return tail + self.compressor.finish() if self.compressor is not None else tail
