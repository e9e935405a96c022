"""The percentile-rank metric against a plain per-pair reference."""

from __future__ import annotations

import numpy as np
import pytest

from dermground.eval.retrieval_metrics import box_stats, percentile_ranks


def _reference(query: float, hit: float, train: np.ndarray) -> float:
    d_hit = (hit - query) ** 2
    d_all = (train - query) ** 2
    return 100.0 * (np.sum(d_all < d_hit) + 0.5 * np.sum(d_all == d_hit)) / train.size


def test_matches_the_per_pair_definition() -> None:
    rng = np.random.default_rng(0)
    train = np.round(rng.normal(5, 2, size=301), 1)  # rounding makes ties happen
    queries = np.round(rng.normal(5, 2, size=37), 1)
    hits = rng.choice(train, size=(37, 5))
    got = percentile_ranks(queries, hits, train)
    want = np.array([[_reference(q, h, train) for h in row] for q, row in zip(queries, hits)])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_perfect_and_worst_hits() -> None:
    train = np.arange(100, dtype=float)
    ranks = percentile_ranks(np.array([50.0]), np.array([[50.0, 99.0, 0.0]]), train)
    assert ranks[0, 0] == pytest.approx(0.5)  # only itself ties: half a rank
    assert ranks[0, 1] == pytest.approx(98.0)  # 97 closer, 2 tie (1 and 99)
    assert ranks[0, 2] == pytest.approx(99.5)


def test_random_hits_score_about_fifty() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=2000)
    queries = rng.normal(size=400)
    hits = rng.choice(train, size=(400, 5))
    assert abs(box_stats(percentile_ranks(queries, hits, train)).median - 50) < 5


def test_blocking_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import dermground.eval.retrieval_metrics as metrics

    rng = np.random.default_rng(2)
    train, queries = rng.normal(size=500), rng.normal(size=40)
    hits = rng.choice(train, size=(40, 5))
    whole = percentile_ranks(queries, hits, train)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 3000)  # forces blocks of one query
    np.testing.assert_allclose(metrics.percentile_ranks(queries, hits, train), whole)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="queries, k"):
        percentile_ranks(np.zeros(3), np.zeros(3), np.zeros(10))
    with pytest.raises(ValueError, match="no train images"):
        percentile_ranks(np.zeros(1), np.zeros((1, 2)), np.zeros(0))
