"""bench.kmeans_levels at 20,000 vectors: one-level, two-level and drawn coarse centroids
trained by the product's training function, each measured by the lists it fills."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_bench_smoke import run_bench


def test_kmeans_levels_smoke_measures_every_method(tmp_path: Path) -> None:
    _, result = run_bench("kmeans_levels", ["--n", "20000", "--lists", "64", "--dim", "64",
                                            "--queries", "50", "--nprobe", "2,8"], tmp_path)
    figures = result["figures"]
    assert figures["training_points"] == 3200  # training_size: 50 per list
    for method in ("one_level", "two_levels", "drawn"):
        assert figures[f"{method}_train_s"] >= 0 and figures[f"{method}_imbalance"] >= 1
        assert 0 < figures[f"{method}_recall_at_10_nprobe2"] \
            <= figures[f"{method}_recall_at_10_nprobe8"] <= 1
    assert figures["two_levels_recall_at_10_nprobe8"] >= 0.9  # lists that find neighbours
