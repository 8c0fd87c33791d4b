"""bench.scale's sizing inputs (issue #14): version row files, FTS copy, id sets, the goal rows."""

from __future__ import annotations

import pytest

from bench.scale import (
    GOAL_BYTES,
    _goal_rows,
    index_ram_bytes,
    measure_id_set,
    measure_version_row_files,
    result_source,
)


def test_version_row_files_hold_hash_type_and_score_per_figure():
    inp = measure_version_row_files(rows=2000)
    # 32 B sha256 + 2 B int16 type + 2 B float16 score per figure, plus three .npy headers
    assert 36 <= inp.value < 36 + 3 * 128 / 2000 + 1e-9 and not inp.assumed
    assert "sha256.npy" in inp.source


def test_id_set_memory_is_measured_per_id():
    ids = measure_id_set(200_000)
    assert ids["n_ids"] == 200_000 and ids["arrays_bytes_per_id"] == 16.0
    assert 0 <= ids["selector_bytes_per_id"] < 200  # a hash set + bloom filter of int64 ids


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
