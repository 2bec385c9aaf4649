"""Refusal sentences for IdkPO: shipped as package data, one chosen per item deterministically."""

from __future__ import annotations

from collections import Counter

from geffect.data.refusals import load_refusals, refusal_for


def test_about_a_hundred_distinct_refusals():
    refusals = load_refusals()
    assert 90 <= len(refusals) <= 150
    assert len(set(refusals)) == len(refusals)
    assert all(r == r.strip() and r[-1] in ".?!" for r in refusals)
    refusals.clear()  # callers get a copy, not the cached list
    assert len(load_refusals()) >= 90


def test_refusal_for_is_deterministic_and_varied():
    refusals = set(load_refusals())
    first = [refusal_for(i, seed=0) for i in range(1000)]
    assert first == [refusal_for(i, seed=0) for i in range(1000)]
    assert set(first) <= refusals
    # Hash-based choice: near-uniform spread (1000 draws over ~100 sentences) and a different pairing per seed.
    counts = Counter(first)
    assert len(counts) >= 0.9 * len(refusals) and max(counts.values()) <= 30
    other = [refusal_for(i, seed=1) for i in range(1000)]
    assert sum(a != b for a, b in zip(first, other)) > 900
