"""bench.first_filter and bench.row_reads at a few thousand figures: the product's search
service over a sharded keyword index, two vector indexes of the 15 M family and the filter
columns written beside them; every filter's first use and later queries keep to the filter."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from figsearch.core.config import Settings
from tests.bench.test_bench_smoke import PYTHON, REPO, run_bench


def test_first_filter_smoke_times_the_service_and_keeps_to_every_filter(tmp_path: Path) -> None:
    results, kw, vec, cols = (tmp_path / name for name in ("results", "kw", "vec", "cols"))
    run_bench("keyword_scale", ["--n", "3000", "--queries", "5", "--rounds", "1", "--index",
                                str(kw), "--shards", "2", "--name", "keyword_scale"], results)
    subprocess.run([PYTHON, "-m", "bench.vector_scale", "build", "--dir", str(vec), "--n", "3000",
                    "--dim", "32", "--factory", "OPQ8,IVF16_HNSW32,PQ8"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    dirs = ["--keyword-dir", str(kw), "--vector-dir", str(vec), "--columns-dir", str(cols)]
    subprocess.run([PYTHON, "-m", "bench.first_filter", "prepare", *dirs], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    ids = np.load(cols / "columns" / "ids.npy")
    assert len(ids) == len(np.union1d(np.load(kw / "ids.npy"), np.load(vec / "ids.npy")))
    same = tmp_path / "cols-same"  # columns over the vector indexes' figures only
    subprocess.run([PYTHON, "-m", "bench.first_filter", "prepare", *dirs[:4], "--columns-dir",
                    str(same), "--every-figure-indexed"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    assert np.array_equal(np.load(same / "columns" / "ids.npy"), np.load(vec / "ids.npy"))
    _, result = run_bench("first_filter", ["measure", *dirs, "--repeat", "1", "--queries", "5",
                                           "--warmup", "2", "--touch-all-lists",
                                           "--name", "first_filter"], results)
    figures = result["figures"]
    for name in ("broad", "mid", "narrow"):
        # the worker's memory after its queries, and again once every list has been probed
        assert figures[f"{name}_rss_anon_mb"] > 0 and figures[f"{name}_rss_file_mb"] > 0
        assert figures[f"{name}_all_lists_rss_file_mb"] >= figures[f"{name}_rss_file_mb"]
        assert figures[f"{name}_signals"] == "keyword,caption,dense"
        assert figures[f"{name}_outside_filter"] == 0, name
        assert figures[f"{name}_first_total_ms"] >= figures[f"{name}_first_start_ms"] > 0
        assert figures[f"{name}_after_p50_ms"] > 0 and figures[f"{name}_unfiltered_p50_ms"] > 0
    assert figures["narrow_plan"] == "exact" and figures["narrow_allowed"] < 100
    assert figures["broad_share"] > figures["mid_share"] > figures["narrow_share"] > 0
    _, ready = run_bench("first_filter", ["measure", *dirs, "--repeat", "1", "--queries", "2",
                                          "--warmup", "1", "--prepared", "--name", "first_filter"],
                         results)
    for name in ("broad", "mid", "narrow"):
        assert ready["figures"][f"{name}_prepare_ms"] > 0
        assert ready["figures"][f"{name}_outside_filter"] == 0
    _, swapped = run_bench("first_filter", ["swap", *dirs, "--rounds", "1", "--warmup", "1",
                                            "--name", "first_filter"], results)
    for name in ("broad", "mid", "narrow"):
        for key in ("first_unprepared", "prepare", "first_prepared", "after"):
            assert swapped["figures"][f"{name}_{key}_ms"] > 0, (name, key)
    _, repeated = run_bench("first_filter", ["repeat", *dirs, "--rounds", "2", "--warmup", "1",
                                             "--name", "first_filter"], results)
    times = repeated["figures"]
    assert repeated["params"]["rounds"] == 2 and times["unfiltered_p50_ms"] > 0
    for name in ("broad", "mid", "narrow"):
        assert times[f"{name}_first_p50_ms"] > 0 and times[f"{name}_after_p50_ms"] > 0, name
    _, both = run_bench("first_filter", ["overlap", *dirs, "--rounds", "2", "--queries", "3",
                                         "--warmup", "1", "--name", "first_filter"], results)
    ways = both["figures"]
    assert ways["top20_differ"] == 0  # overlapped and in turn fuse the same lists
    for name in ("unfiltered", "broad", "mid", "narrow"):
        for way in ("before", "now"):
            assert len(ways[f"{name}_{way}_p50_ms_runs"]) == 2, (name, way)
            assert ways[f"{name}_{way}_p50_ms"] > 0, (name, way)
    passages = tmp_path / "passages"  # the vector index keyed as one passage a figure
    subprocess.run([PYTHON, "-m", "bench.first_filter", "passages", *dirs, "--passages-dir",
                    str(passages)], cwd=REPO, check=True, capture_output=True, timeout=300)
    assert np.array_equal(np.load(passages / "ids.npy"), np.load(vec / "ids.npy") * 16 + 1)
    assert (passages / "vectors.npy").stat().st_ino == (vec / "vectors.npy").stat().st_ino
    default_share = Settings().keyword_common_share
    _, cost = run_bench("first_filter", ["passage-cost", *dirs, "--passages-dir", str(passages),
                                         "--rounds", "1", "--queries", "3", "--warmup", "1",
                                         "--compare-share", "1", "--compare-common-share",
                                         f"{default_share:g}", "--name", "first_filter"],
                          results)
    both = cost["figures"]
    assert both["outside_filter"] == 0  # with passages too, every fused figure keeps to its filter
    # the service's own common-word share: the keyword signal, so the fused list, is the same
    common = f"passages_common_{default_share:g}"
    assert both[f"{common}_top20_kept_min"] == 1.0
    ways = ("whole", "passages", "passages_share_1", common)
    assert all(both[f"{way}_cpu_ms_per_query"] > 0 for way in ways)
    for name in ("unfiltered", "broad", "mid", "narrow"):
        for way in ways:
            assert both[f"{name}_{way}_p50_ms"] > 0, (name, way)


def test_row_reads_smoke_reads_the_same_rows_both_ways(tmp_path: Path) -> None:
    vectors = tmp_path / "v" / "vectors.npy"
    vectors.parent.mkdir()
    np.save(vectors, np.random.default_rng(0).standard_normal((20_000, 16)).astype(np.float16))
    _, result = run_bench("row_reads", ["--vectors", str(vectors), "--rounds", "2"],
                          tmp_path / "results")
    figures = result["figures"]
    assert figures["v/vectors.npy same_rows"] is True
    assert figures["v/vectors.npy 15000_rows_preadv_p50_ms"] > 0
    _, cold = run_bench("row_reads", ["--vectors", str(vectors), "--rounds", "1", "--cold"],
                        tmp_path / "results")
    assert cold["params"]["cold"] is True and cold["figures"]["v/vectors.npy same_rows"] is True
    assert cold["figures"]["v/vectors.npy 1000_rows_preadv_p50_ms"] > 0
