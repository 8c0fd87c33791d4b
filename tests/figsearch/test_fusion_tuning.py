"""Score normalisation of the hybrid fusion and the dev-split tuning procedure (plain functions on
hand-made signal lists and metric matrices; the end-to-end ``figsearch eval --tune`` runs in
test_relevance.py on the real fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from figsearch.evaluation import METRICS, cross_validate, near_best, plateau_centre
from figsearch.fusion import NORM_TOP, FusionConfig, SignalResult, fuse, normalised


def _linear(n: int) -> SignalResult:
    """Ids 1..n with cosine-like scores 1.00, 0.99, ... (best first)."""
    return SignalResult(list(range(1, n + 1)), [1.0 - 0.01 * i for i in range(n)])


def test_vector_scores_are_normalised_over_the_head_of_the_list():
    got = normalised(_linear(100))
    assert got[1] == 1.0
    assert got[NORM_TOP] == pytest.approx(0.0)
    assert got[NORM_TOP // 2] == pytest.approx(1 - (NORM_TOP // 2 - 1) / (NORM_TOP - 1))
    assert all(got[i] == 0.0 for i in range(NORM_TOP, 101))
    # the scale does not depend on how many candidates were fetched (FIGSEARCH_FUSION_DEPTH)
    shallow = normalised(_linear(30))
    assert all(shallow[i] == pytest.approx(got[i]) for i in range(1, 31))


def test_a_floor_keeps_weak_keyword_matches_weak():
    bm25 = SignalResult([7, 8, 9], [10.0, 9.0, 1.0], floor=0.0)
    assert normalised(bm25) == {7: 1.0, 8: pytest.approx(0.9), 9: pytest.approx(0.1)}


def test_norm_top_changes_the_fused_order():
    """Doc 30 is the keyword favourite but outside the caption signal's first page: normalised
    over the head (20) it gets no caption credit, over the whole list (100) it does."""
    results = {"caption": _linear(100),
               "keyword": SignalResult([30, 2], [1.0, 0.5], floor=0.0)}
    weights = {"caption": 0.5, "keyword": 0.5}
    head = [d for d, _ in fuse(results, FusionConfig(weights, norm_top=20))]
    whole = [d for d, _ in fuse(results, FusionConfig(weights, norm_top=100))]
    assert head.index(2) < head.index(30)
    assert whole.index(30) < whole.index(2)


def _metrics(per_query_objective: list[np.ndarray]) -> np.ndarray:
    """[config, query, metric] with every metric equal to the given per-query value."""
    return np.repeat(np.stack(per_query_objective)[:, :, None], len(METRICS), axis=2)


def test_tuning_takes_the_centre_of_the_near_best_plateau():
    """Configs caption=w, keyword=1-w for w = 0, 0.1, ..., 0.6 on 40 queries: w = 0.1 is best
    (misses 4 queries); w = 0.2..0.5 trade 2 misses for 1 hit, within one standard error of
    it; w = 0 and 0.6 miss 10 more. The choice is the plateau's centre, w = 0.3."""
    best = np.ones(40)
    best[:4] = 0
    rows = []
    for k in range(7):
        row = best.copy()
        if k in (0, 6):
            row[20:30] = 0
        elif k > 1:
            row[[10 + 2 * k, 11 + 2 * k]] = 0
            row[k - 2] = 1
        rows.append(row)
    configs = [FusionConfig({"caption": k / 10, "keyword": 1 - k / 10}) for k in range(7)]
    per_query = _metrics(rows)
    assert near_best(configs, per_query, se=1.0) == [1, 2, 3, 4, 5]
    assert plateau_centre(configs, per_query, se=1.0) == 3  # w = 0.3, not the spike at 0.1
    assert plateau_centre(configs, per_query, se=0.0) == 1  # no tolerance: the best grid point


def test_the_plateau_keeps_to_the_best_method():
    first = np.ones(40)
    first[0] = 0.5
    second = np.ones(40)
    second[1] = 0.0  # within one standard error of the first
    per_query = _metrics([first, second, np.zeros(40)])
    mixed = [FusionConfig({"keyword": 1.0}, "score"), FusionConfig({"keyword": 1.0}, "rrf"),
             FusionConfig({"caption": 1.0}, "rrf")]
    assert near_best(mixed, per_query) == [0]
    same = [FusionConfig({"keyword": 1.0}, "score"), FusionConfig({"caption": 1.0}, "score"),
            FusionConfig({"dense": 1.0}, "score")]
    assert near_best(same, per_query) == [0, 1]


def test_cross_validation_inside_dev_measures_the_gap_to_the_best_single_signal():
    rng = np.random.default_rng(3)
    singles = rng.integers(0, 2, size=(2, 40, len(METRICS))).astype(float)
    better = np.maximum(singles[0], singles[1])  # a fusion that always gets the better answer
    per_config = np.stack([singles[0], better])
    configs = [FusionConfig({"keyword": 1.0}), FusionConfig({"caption": 0.5, "keyword": 0.5})]
    cv = cross_validate(configs, per_config, singles, se=0.0, folds=4, repeats=2)
    assert cv["share_of_folds_at_least_best_single"] == {m: 1.0 for m in METRICS}
    assert min(cv["mean_gap_vs_best_single"].values()) >= 0
    assert cross_validate(configs, per_config[:, :5], singles[:, :5], folds=5) == {}
