"""bench.delta_scale at a few thousand figures: a night of changes applied to a vector index of
the 15 M family and to a sharded keyword index with the product's own functions; the next
version holds exactly the night's figures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.bench.test_bench_smoke import PYTHON, REPO, run_bench


def test_delta_scale_smoke_applies_the_night_to_both_indexes(tmp_path: Path) -> None:
    results, kw, vec = (tmp_path / name for name in ("results", "kw", "vec"))
    run_bench("keyword_scale", ["--n", "3000", "--queries", "5", "--rounds", "1", "--index",
                                str(kw), "--shards", "2", "--name", "keyword_scale"], results)
    subprocess.run([PYTHON, "-m", "bench.vector_scale", "build", "--dir", str(vec), "--n", "3000",
                    "--dim", "32", "--factory", "OPQ8,IVF16_HNSW32,PQ8"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    _, result = run_bench("delta_scale", [
        "--vector-dir", str(vec), "--keyword-dir", str(kw), "--tmp", str(tmp_path),
        "--new", "50", "--changed", "20", "--removed", "10", "--name", "delta_scale"], results)
    f = result["figures"]
    assert f["vector_count"] == 3000 + 50 - 10
    assert f["vector_removed"] == 30 and f["vector_added"] == 70  # changed: out and back in
    assert f["vector_new_found_first"] >= 0.9 and f["vector_removed_returned"] == 0
    assert f["keyword_after"] == f["keyword_expected_after"] == f["keyword_before"] - 10
    assert f["keyword_new_caption_found"] is True and f["keyword_removed_held"] == 0
    assert f["night_s"] > 0
    assert not list(tmp_path.glob("delta-scale-*"))  # the scratch versions are gone
