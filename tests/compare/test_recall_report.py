"""The recall report on hand-made records: verdicts, disagreements stated, separation claims."""

from __future__ import annotations

import itertools

from longseq.compare import recall_report

SPEC = {"length": 64, "distances": [[1, 4], [5, 8], [9, 63]]}


def record(m: str, seed: int, acc: float, rows: list[list[int]]) -> dict:
    return {"mechanism": m, "seed": seed, "status": "ok", "test": acc, "test_by_distance": rows}


def test_bins_cover_the_ranges() -> None:
    edges = recall_report.bins(SPEC)
    assert edges[0][0] == 1 and edges[-1][1] == 63
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(edges))
    assert (9, 17) in edges  # the far range in doublings


def test_separation_claims_only_beyond_the_noise() -> None:
    rows = [[1, 900, 1000]]
    groups = {
        "a": [record("a", 0, 0.90, rows), record("a", 1, 0.92, rows)],
        "b": [record("b", 0, 0.895, rows), record("b", 1, 0.905, rows)],
        "c": [record("c", 0, 0.30, rows), record("c", 1, 0.32, rows)],
    }
    text = "\n".join(recall_report.separation(groups))
    assert "a and b: not distinguished" in text
    assert "b > c" in text
    assert "spreads over 60.0 points" in text


def test_counts_in_a_range() -> None:
    rows = [[1, 1, 2], [4, 2, 2], [5, 0, 3], [63, 1, 1]]
    assert recall_report.counts_in(rows, 1, 4) == (3, 4)
    assert recall_report.counts_in(rows, 5, 63) == (1, 4)
