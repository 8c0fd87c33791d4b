"""bench.scale's sizing inputs (issue #14): version row files, FTS copy, filter caches, the goal rows."""

from __future__ import annotations

import pytest

from bench.scale import (
    GOAL_BYTES,
    _filter_rows,
    _goal_rows,
    index_ram_bytes,
    measure_version_row_files,
    result_source,
)


def test_version_row_files_hold_hash_type_and_score_per_figure():
    inp = measure_version_row_files(rows=2000)
    # 32 B sha256 + 2 B int16 type + 2 B float16 score per figure, plus three .npy headers
    assert 36 <= inp.value < 36 + 3 * 128 / 2000 + 1e-9 and not inp.assumed
    assert "sha256.npy" in inp.source


def _columns_run(n: int, held_mb: float, first_use_ms: float) -> dict:
    return {"timestamp": "2026-12-03T01:00:00", "params": {"n": n}, "figures": {
        "commercial use count": 0.57 * n, "commercial use first_use_ms": first_use_ms,
        "commercial use held_mb": held_mb, "journal count": 0.002 * n,
        "journal first_use_ms": 1.0, "journal held_mb": 0.1}}


def test_filter_rows_project_the_largest_columns_run_and_the_cache_worst_case():
    from figsearch.columns import ALLOWED_CACHE_SIZE
    from figsearch.index import EXACT_VECTORS_BYTES

    res = {"filter_columns_1000000": _columns_run(1_000_000, 1.0, 5.0),
           "filter_columns_5000000_synthetic": _columns_run(5_000_000, 2.0, 20.0)}
    rows = {r.quantity: r for r in _filter_rows(res, 15_000_000)}
    first = rows["filter first use through the columns, broadest filter"]
    assert first.value == pytest.approx(60.0)  # the 5 M run, x3, its broadest filter
    assert "filter_columns_5000000_synthetic.json (2026-12-03) 'commercial use'" in first.basis
    held = rows["one cached filter (packed column mask + an index's row mask and selector)"]
    assert held.value == pytest.approx(6.0)
    worst = next(r for q, r in rows.items() if q.startswith("filter caches, worst case"))
    assert worst.value == pytest.approx(ALLOWED_CACHE_SIZE * 6.0 + 2 * EXACT_VECTORS_BYTES / 1e6)
    assert not any("SQL" in q for q in rows)  # no filter_ids result: no SQL rows
    assert _filter_rows({}, 15_000_000) == []


def test_every_measured_input_names_its_file_and_date():
    res = {"timestamp": "2026-12-02T01:00:00+00:00"}
    assert result_source(res, "ann_opq") == "bench/results/ann_opq.json (2026-12-02)"


def test_goal_rows_hold_the_measurement_against_the_goal():
    n, factory = 15_000_000, "OPQ64,IVF65536_HNSW32,PQ64"
    total = index_ram_bytes(n, 512, factory)["total"]
    res = {"ann_opq": {"timestamp": "2026-12-02T01:00:00", "params": {
        "n": 200000, "factory": factory, "intrinsic_dim": 32, "nprobe": 32, "train_size": 20000},
        "figures": {"200000 OPQ-IVF-HNSW-PQ recall": 0.6, "200000 OPQ-IVF-HNSW-PQ rerank recall": 0.99,
                    "bytes_per_vector": 90.0, "build_s": 100.0}}}
    rows = {r.quantity: r for r in _goal_rows(res, n, factory, total)}
    per_fig = rows["index RAM / figure at target"].value
    assert per_fig == pytest.approx(total / n) and per_fig > 72  # 64 B codes + 8 B id + centroids
    goal = rows["goal: recall@10 >= 0.98 at <= 80 B RAM / figure"]
    assert goal.value == ("met" if per_fig <= GOAL_BYTES else "NOT met")
    assert "ann_opq.json (2026-12-02)" in rows["15 M family, reduced size: recall@10 with re-ranking (x10)"].basis
    assert _goal_rows({}, n, factory, total)[-1].value == "not measured"


def test_goal_is_judged_on_the_recall_of_the_projected_code_size():
    """The reduced-size family run has 64-byte codes; a 32-byte projection reads the
    32-byte recall of ``ann_pq_sizes`` instead of claiming the 64-byte one."""
    n, factory = 15_000_000, "OPQ32,IVF65536(HNSW32_SQfp16),PQ32"
    total = index_ram_bytes(n, 512, factory)["total"]
    opq = {"timestamp": "2026-12-02T01:00:00", "params": {
        "n": 100000, "factory": "OPQ64,IVF128_HNSW32,PQ64", "intrinsic_dim": 32, "nprobe": 32,
        "train_size": 5000}, "figures": {"100000 OPQ-IVF-HNSW-PQ rerank recall": 0.998}}
    sizes = {"timestamp": "2026-12-04T01:00:00", "params": {"intrinsic_dim": 32}, "figures": {
        "100000 IVF-PQ32 rerank recall": 0.9757, "100000 IVF-PQ64 rerank recall": 0.999}}
    rows = {r.quantity: r for r in _goal_rows({"ann_opq": opq, "ann_pq_sizes": sizes}, n,
                                               factory, total)}
    assert rows["recall@10 with re-ranking (x10) at 32-byte codes"].value == 0.9757
    goal = rows["goal: recall@10 >= 0.98 at <= 80 B RAM / figure"]
    assert goal.value == "NOT met" and "0.976" in goal.basis
    alone = {r.quantity: r for r in _goal_rows({"ann_opq": opq}, n, factory, total)}
    assert alone["recall@10 with re-ranking (x10) at 32-byte codes"].value == "not measured"
    assert "goal: recall@10 >= 0.98 at <= 80 B RAM / figure" not in alone
