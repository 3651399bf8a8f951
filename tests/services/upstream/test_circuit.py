"""services/upstream/circuit.py: the one in-memory breaker state machine (providers' fallback, and the
PostgreSQL and Redis owners' skip-then-retry)."""

from __future__ import annotations

import time

from services.upstream.circuit import ALLOWED, PROBE, REFUSED, Circuit


def test_opens_refuses_then_one_probe_closes_it() -> None:
    c = Circuit(threshold=2, open_seconds=0.1, probe_seconds=0.1)
    assert c.acquire()[0] == ALLOWED and not c.record(False, "fail")
    assert c.state == "closed"
    assert c.record(False, "fail") and c.state == "open"
    code, wait = c.acquire()
    assert code == REFUSED and 0 < wait <= 0.1
    time.sleep(0.11)
    assert c.state == "half_open"
    assert c.acquire()[0] == PROBE
    assert c.acquire()[0] == REFUSED  # one probe at a time
    assert c.record(True, "ok") and c.state == "closed" and c.acquire()[0] == ALLOWED


def test_a_failed_probe_opens_again_and_a_neutral_one_gives_its_turn_back() -> None:
    c = Circuit(threshold=1, open_seconds=0.05, probe_seconds=5.0)
    c.record(False, "fail")
    time.sleep(0.06)
    assert c.acquire()[0] == PROBE
    assert not c.record(True, "neutral") and c.acquire()[0] == PROBE  # cancelled: next may probe
    assert c.record(True, "fail") and c.state == "open"


def test_success_resets_the_count_and_reset_closes() -> None:
    c = Circuit(threshold=2, open_seconds=10.0)
    c.record(False, "fail")
    c.record(False, "ok")
    c.record(False, "fail")
    assert c.state == "closed"
    c.record(False, "fail")
    assert c.state == "open"
    c.reset()
    assert c.state == "closed" and c.acquire()[0] == ALLOWED
