"""The drift score's pure parts on constructed distributions: the Jensen-Shannon divergence,
the token and confidence histograms, the score, the state and the event per crossing; the
crossings the replicas share, on SQLite and on PostgreSQL."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from sentiloop.core.db import open_database
from sentiloop.core.vocabulary import EventType
from sentiloop.inference.drift import (
    DRIFTED,
    OK,
    Crossings,
    confidence_histogram,
    drift_event,
    drift_score,
    drift_state,
    js_divergence,
    smoothed_divergence,
    token_counts,
    token_histogram,
    top_tokens,
)


def test_js_divergence_is_zero_for_equal_one_for_disjoint_and_symmetric() -> None:
    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))


def test_js_divergence_matches_its_definition_in_bits() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    m = (p + q) / 2
    kl = lambda a: float(sum(x * math.log2(x / y) for x, y in zip(a, m, strict=True)))  # noqa: E731
    assert js_divergence(p, q) == pytest.approx((kl(p) + kl(q)) / 2)
    # ... and grows as the distributions move apart.
    assert js_divergence(p, [0.6, 0.4]) < js_divergence(p, [0.8, 0.2]) < js_divergence(p, q)


def test_js_divergence_refuses_what_is_not_a_pair_of_histograms() -> None:
    for p, q in (([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([-1, 2], [1, 1]), ([], [])):
        with pytest.raises(ValueError):
            js_divergence(p, q)


def test_token_histogram_counts_the_top_tokens_and_one_bucket_for_the_rest() -> None:
    counts = token_counts([[5, 5, 7], [7, 5, 9], [11]])
    assert counts == Counter({5: 3, 7: 2, 9: 1, 11: 1})
    vocabulary = top_tokens(counts, size=2)
    assert vocabulary == (5, 7)
    # Ties are broken by id: the same counts always give the same buckets.
    assert top_tokens(counts, size=3) == (5, 7, 9)
    assert token_histogram(Counter({7: 4, 42: 3, 5: 1}), vocabulary).tolist() == [1, 4, 3]


def test_confidence_histogram_has_ten_equal_bins_of_the_unit_interval() -> None:
    histogram = confidence_histogram([0.0, 0.05, 0.34, 0.35, 0.999, 1.0])
    assert len(histogram) == 10 and histogram.sum() == 6
    assert histogram[0] == 2 and histogram[3] == 2 and histogram[9] == 2


def test_smoothing_keeps_buckets_a_small_window_missed_from_counting_as_drift() -> None:
    reference = np.array([300.0, 200.0, 100.0, 50.0, 50.0])
    # Six texts' worth of tokens from the same distribution: the rare buckets stay empty
    # by chance, which the raw divergence takes for a difference.
    window = np.array([3.0, 2.0, 1.0, 0.0, 0.0])
    assert smoothed_divergence(window, reference) < js_divergence(window, reference) / 2
    assert smoothed_divergence(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_a_window_from_another_vocabulary_scores_far_higher_than_a_sample_of_the_same() -> None:
    rng = np.random.default_rng(13)
    # A reference over 300 "words" (Zipf-like), an in-domain window sampled from it, and a
    # window where a third of the tokens are words the reference never used.
    weights = 1 / np.arange(1, 301)
    weights /= weights.sum()
    reference = Counter(rng.choice(300, size=40_000, p=weights).tolist())
    in_domain = Counter(rng.choice(300, size=1_500, p=weights).tolist())
    shifted = Counter(rng.choice(300, size=1_000, p=weights[::-1]).tolist())
    shifted.update(rng.integers(1000, 3000, size=500).tolist())
    vocabulary = top_tokens(reference)
    base = token_histogram(reference, vocabulary)
    calm = smoothed_divergence(token_histogram(in_domain, vocabulary), base)
    drifted = smoothed_divergence(token_histogram(shifted, vocabulary), base)
    assert calm < 0.05 < 0.2 < drifted


def test_the_confidence_shift_sees_a_model_turning_unsure() -> None:
    sure = confidence_histogram(np.linspace(0.85, 1.0, 500))
    also_sure = confidence_histogram(np.linspace(0.86, 0.99, 120))
    unsure = confidence_histogram(np.linspace(0.34, 0.7, 120))
    assert smoothed_divergence(also_sure, sure) < 0.05
    assert smoothed_divergence(unsure, sure) > 0.5


def test_the_score_is_the_token_divergence_and_the_state_its_threshold() -> None:
    assert drift_score(0.12, 0.9) == 0.12
    assert drift_score(0.02, 0.0) == 0.02
    assert drift_state(0.07, 0.07) == DRIFTED
    assert drift_state(0.0699, 0.07) == OK


def test_drift_is_announced_once_per_crossing_and_per_version() -> None:
    # Under the threshold with nothing announced: nothing to say.
    assert drift_event(OK, "v1", None) is None
    # Crossing it: detected, once; the next computations over it say nothing new.
    assert drift_event(DRIFTED, "v1", None) == EventType.MODEL_DRIFT_DETECTED
    assert drift_event(DRIFTED, "v1", "v1") is None
    # Too little traffic (a new version, say) is not a verdict either way.
    assert drift_event("not_enough_traffic", "v2", "v1") is None
    # A new version that is drifted too is announced for itself.
    assert drift_event(DRIFTED, "v2", "v1") == EventType.MODEL_DRIFT_DETECTED
    # Falling back under the threshold clears it, once.
    assert drift_event(OK, "v2", "v2") == EventType.MODEL_DRIFT_CLEARED


def test_replicas_share_the_crossings_so_each_is_announced_once(
    database_url: str, tmp_path: Path
) -> None:
    def replica() -> Crossings:
        """A replica's own connection (SQLite) or pool (PostgreSQL) on the database."""
        return Crossings(open_database(database_url, tmp_path / "unused.db", schema="inference"))

    first, second = replica(), replica()
    try:
        assert first.drifted_version() is None
        # Both replicas see the same crossing; the first to move it announces it.
        assert first.move(None, "v1") is True
        assert second.move(None, "v1") is False
        assert second.drifted_version() == "v1"
        # A restart finds it (and announces nothing again while drift lasts).
        restarted = replica()
        assert restarted.drifted_version() == "v1"
        restarted.close()
        # Handing a crossing back (its event could not be published) lets it be tried again.
        assert second.move("v1", None) is True
        assert first.drifted_version() is None
    finally:
        first.close()
        second.close()


def test_replicas_moving_one_crossing_at_once_announce_it_once(
    database_url: str, tmp_path: Path
) -> None:
    replicas = [
        Crossings(open_database(database_url, tmp_path / "unused.db", schema="inference"))
        for _ in range(4)
    ]
    start = threading.Barrier(len(replicas))

    def move(crossings: Crossings) -> bool:
        start.wait()
        return crossings.move(None, "v2")

    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            assert sorted(pool.map(move, replicas)) == [False, False, False, True]
        assert [c.drifted_version() for c in replicas] == ["v2"] * len(replicas)
    finally:
        for crossings in replicas:
            crossings.close()


def test_a_crossings_file_made_before_the_migrations_keeps_its_value(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "drift.db")) as db, db:
        db.execute(
            "CREATE TABLE announced (id INTEGER PRIMARY KEY CHECK (id = 1), drifted_version TEXT)"
        )
        db.execute("INSERT INTO announced VALUES (1, 'v3')")
    crossings = Crossings(tmp_path / "drift.db")
    try:
        assert crossings.drifted_version() == "v3"
        assert crossings.move("v3", None) and crossings.drifted_version() is None
    finally:
        crossings.close()
