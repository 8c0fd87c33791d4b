"""bench.pmc_scale at 2,000 figures: generate, build and measure in one run; the captions are
made of real caption sentences (common English and biomedical words), and the result holds
every metric the issue asks for."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import run_bench

METRICS = [
    *(f"{kind}_{p}_ms" for kind in ("store_keyword_k100", "keyword", "caption", "dense", "hybrid",
                                    "filtered_broad", "filtered_mid", "filtered_narrow")
      for p in ("p50", "p95", "p99")),
    "filtered_broad_first_ms", "filtered_mid_first_ms", "filtered_narrow_first_ms",
    "stage_highlight_p50_ms", "stage_highlight_p99_ms", "stage_keyword_p50_ms", "rss_end_mb",
    "peak_rss_mb",
    "disk_store_mb", "disk_version_mb", "disk_version_captions_mb", "disk_total_mb",
    "build_total_s", "generate_figures_per_s", "filter_broad_share", "filter_mid_share",
    "filter_narrow_share", "mean_caption_words",
]


def test_pmc_scale_smoke(tmp_path: Path) -> None:
    data_dir = tmp_path / "pmc-2k"
    results = tmp_path / "results"
    args = ["all", "--n", "2000", "--data-dir", str(data_dir), "--queries", "6",
            "--journals", "300", "--name", "pmc_scale", "--no-progress"]
    _, result = run_bench("pmc_scale", args, results)
    figures = result["figures"]
    missing = [m for m in METRICS if not isinstance(figures.get(m), (int, float))]
    assert not missing, missing
    assert figures["figures"] == 2000 and figures["images"] > 1500
    assert 60 <= figures["mean_caption_words"] <= 95
    assert 0.4 <= figures["filter_broad_share"] <= 0.75
    assert 0.0 < figures["filter_narrow_share"] <= 0.01
    assert result["params"]["command"].startswith("python -m bench.pmc_scale all --n 2000")

    with sqlite3.connect(data_dir / "figsearch.db") as conn:
        captions = [r[0] for r in conn.execute("SELECT caption FROM figures")]
        ocr = conn.execute("SELECT count(*) FROM figure_ocr").fetchone()[0]
        fts = conn.execute("SELECT count(*) FROM figures_fts WHERE figures_fts MATCH 'cells'"
                           ).fetchone()[0]
    words = Counter(w.strip(".,;:()").lower() for c in captions for w in c.split())
    top = {w for w, _ in words.most_common(30)}
    assert {"the", "of", "and", "in"} <= top, words.most_common(30)
    assert not any(w.startswith("w") and w[1:].isdigit() for w in top)  # no synthetic vocabulary
    assert min(words[w] for w in ("cells", "patients", "expression")) >= 20, words.most_common(80)
    assert 400 <= ocr <= 1000 and fts > 50

    # generating again reuses the complete store; another n is refused without --force
    from bench.pmc_scale import generate

    assert generate(data_dir, 2000, n_journals=300, progress=False)["figures"] == 2000
    with pytest.raises(SystemExit, match="--force"):
        generate(data_dir, 3000, n_journals=300, progress=False)
