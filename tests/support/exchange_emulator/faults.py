"""Fault injection and the request log of the exchange emulator.

A fault matches a request path (exact, or an ``fnmatch`` pattern such as ``/v2/stocks/*/bars``)
and fires for its next ``times`` matching requests (``None``: until cleared). Kinds:

- ``status``: answer that HTTP status with the venue's error body (``Retry-After`` when given);
- ``delay``: sleep ``delay`` seconds, then answer normally (beyond the client's timeout it is a
  timeout for the client);
- ``drop``: close the connection without an answer;
- ``malformed``: answer 200 with ``"json"`` (valid JSON that is not the documented body),
  ``"invalid"`` (a truncated JSON document) or ``"html"`` (a gateway's HTML page).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MALFORMED_KINDS = ("json", "invalid", "html")


@dataclass
class Fault:
    path: str
    status: int | None = None
    times: int | None = 1
    retry_after: float | None = None
    delay: float | None = None
    drop: bool = False
    malformed: str | None = None

    def matches(self, path: str) -> bool:
        return self.path == path or fnmatch.fnmatchcase(path, self.path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    fault: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """Pending faults, consumed in the order they were injected."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        if fault.malformed is not None and fault.malformed not in MALFORMED_KINDS:
            raise ValueError(f"malformed must be one of {MALFORMED_KINDS}")
        if fault.status is None and fault.delay is None and not fault.drop and not fault.malformed:
            raise ValueError("a fault needs status, delay, drop or malformed")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be >= 1 (or None for until cleared)")
        self.faults.append(fault)
        return fault

    def take(self, path: str) -> Fault | None:
        """The first fault matching ``path``; its remaining count is decremented."""
        for fault in self.faults:
            if fault.matches(path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def clear(self, path: str | None = None) -> None:
        self.faults = [f for f in self.faults if path is not None and f.path != path]


class RequestLog:
    """Every request the emulator served, control API calls excluded."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> RequestRecord:
        self.records.append(record)
        return record

    def select(self, path: str | None = None) -> list[RequestRecord]:
        if path is None:
            return list(self.records)
        return [r for r in self.records if r.path == path or fnmatch.fnmatchcase(r.path, path)]

    def clear(self) -> None:
        self.records.clear()
