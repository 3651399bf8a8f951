"""Property tests of the pure backfill range logic: chunk plans and gap reports."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from core.types import merge_ranges
from services.backfill.gaps import gap_report, split_chunks

M = 60_000


def minutes(ranges: list[tuple[int, int]] | list[list[int]]) -> set[int]:
    return {t for a, b in ranges for t in range(a, b, M)}


@st.composite
def ranges(draw: st.DrawFn, lo: int = 0, hi: int = 600) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent minute ranges within [lo, hi) minutes."""
    cuts = sorted(set(draw(st.lists(st.integers(lo, hi), max_size=12))))
    pairs = [(a * M, b * M) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
    return merge_ranges(pairs)


@given(ranges(), st.integers(1, 50), st.integers(0, 700))
def test_chunks_cover_exactly_the_missing_minutes(
    missing: list[tuple[int, int]], per_call: int, safe_min: int
) -> None:
    step, safe_end = per_call * M, safe_min * M
    chunks = split_chunks(missing, step, safe_end)
    spans = [(c.start, c.end) for c in chunks]
    assert spans == sorted(spans)
    assert all(0 < c.end - c.start <= step for c in chunks)
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))
    assert minutes(spans) == minutes(missing)
    assert sum(c.end - c.start for c in chunks) == sum(b - a for a, b in missing)
    # The complete part is the chunk cut at safe_end, never beyond it.
    assert all(c.complete_end == max(c.start, min(c.end, safe_end)) for c in chunks)
    assert minutes([(c.start, c.complete_end) for c in chunks]) == {
        t for t in minutes(missing) if t + M <= safe_end}


@given(ranges(), ranges(), st.integers(0, 300), st.integers(1, 400))
def test_gap_report_partitions_the_range(
    covered: list[tuple[int, int]], islands: list[tuple[int, int]], lo: int, span: int
) -> None:
    start, end = lo * M, (lo + span) * M
    report = gap_report(start, end, covered, islands)
    wanted = minutes([(start, end)])
    missing, empty = minutes(report["missing"]), minutes(report["verified_empty"])
    assert missing == wanted - minutes(covered)
    assert empty == (wanted & minutes(covered)) - minutes(islands)
    assert not missing & empty
    for kind in ("missing", "verified_empty"):
        assert report[kind] == [list(r) for r in merge_ranges([(r[0], r[1]) for r in report[kind]])]
