"""bench.vector_scale at 3,000 vectors: a version directory of the 15 M factory family (OPQ +
IVF/HNSW + PQ, coarse centroids drawn from the data) built chunk by chunk, opened by
``SearchIndex`` and measured: results near exact search, filters never leak."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.bench.test_bench_smoke import PYTHON, REPO, run_bench


def test_vector_scale_smoke_builds_the_huge_family_and_measures_it(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "vec"
    build = ["build", "--dir", str(out), "--n", "3000", "--dim", "32",
             "--factory", "OPQ8,IVF16_HNSW32,PQ8"]
    subprocess.run([PYTHON, "-m", "bench.vector_scale", *build], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    _, result = run_bench("vector_scale", ["measure", "--dir", str(out), "--queries", "40",
                                           "--recall-queries", "20", "--k", "20",
                                           "--nprobe", "8"], results)
    figures = result["figures"]
    assert figures["factory"] == "OPQ8,IVF16_HNSW32,PQ8" and figures["vectors"] == 3000
    assert figures["nlist"] == 16 and figures["build_add_s"] >= 0
    assert figures["recall_at_10"] >= 0.8  # PQ8 codes, re-ranked from the stored vectors
    assert figures["top20_p50_ms"] > 0 and figures["loaded_rss_mb"] > 0
    for share in ("0.4", "0.05", "0.001"):
        assert figures[f"filtered_{share}_outside_filter"] == 0
        assert figures[f"filtered_{share}_plan"] == "exact"  # at most 20,000 rows pass
    assert 1000 < figures["filtered_0.4_allowed"] < 1600  # 40 % of 3,250 figure ids


def test_float16_quantizer_copy_holds_the_same_centroids_and_finds_the_same_rows(
        tmp_path: Path) -> None:
    import faiss
    import numpy as np

    from figsearch.index import SearchIndex

    src, out = tmp_path / "vec", tmp_path / "fp16q"
    subprocess.run([PYTHON, "-m", "bench.vector_scale", "build", "--dir", str(src), "--n", "3000",
                    "--dim", "32", "--factory", "OPQ8,IVF16_HNSW32,PQ8"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    subprocess.run([PYTHON, "-m", "bench.vector_scale", "float16-quantizer", "--dir", str(src),
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=300)
    before, after = SearchIndex.load(src, nprobe=4), SearchIndex.load(out, nprobe=4)
    assert after.factory == "OPQ8,IVF16(HNSW32_SQfp16),PQ8" and after.ntotal == 3000
    old, new = (faiss.downcast_index(faiss.extract_index_ivf(i.index).quantizer)
                for i in (before, after))
    assert isinstance(new, faiss.IndexHNSWSQ) and new.ntotal == old.ntotal == 16
    centroids = old.storage.reconstruct_n(0, 16)
    assert np.allclose(new.storage.reconstruct_n(0, 16), centroids, atol=1e-3)
    queries = np.asarray(before.vectors[np.arange(0, 3000, 30)], np.float32)
    hits_before, hits_after = before.search(queries, 10)[1], after.search(queries, 10)[1]
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits_before, hits_after, strict=True)])
    assert agree >= 0.95, agree
