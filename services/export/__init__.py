"""Bulk history (``GET /api/v1/export``): every closed bar of a range in one streamed answer.

- ``service``: the plan of one export (its buckets, the bar bound), the storage check (missing
  minutes, a fingerprint for the ETag) and the rows, read with the query ``/ohlcv`` runs
  (``services.bars.aggregates.bars_query``) through a binary ``COPY``;
- ``rows``: binary ``COPY`` data parsed into column batches (numpy), volumes rounded as
  ``/ohlcv`` rounds them;
- ``formats``: the batches as CSV, JSON lines, Parquet or an Arrow IPC stream, written out as
  they fill, and CSV / JSON lines compressed on the fly (``br`` or ``gzip``).
"""

from services.export.formats import FORMATS, Format, StreamCompressor, encode
from services.export.service import Exporter, ExportPlan, ExportSettings, RangeNotStored

__all__ = ["FORMATS", "ExportPlan", "ExportSettings", "Exporter", "Format", "RangeNotStored",
           "StreamCompressor", "encode"]
