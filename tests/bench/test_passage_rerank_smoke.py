"""bench.passage_rerank at 5,000 figures: its exact MaxP ranking is a brute force's, and a
shallower passage re-ranking reads fewer rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.passage_rerank import PassageData, exact_maxp
from figsearch.caption_index import PASSAGE_SLOTS
from tests.bench.test_bench_smoke import run_bench


def test_exact_maxp_is_every_figure_scored_by_its_best_vector() -> None:
    data = PassageData(3000, 64, 16, 12)
    truth = exact_maxp(data, 50)
    owner = np.searchsorted(data.ids, data.keys // PASSAGE_SLOTS)
    assert np.array_equal(data.ids[owner], data.keys // PASSAGE_SLOTS)  # keys name figures
    for q, got in zip(data.queries, truth, strict=True):
        best = data.whole @ q
        np.maximum.at(best, owner, data.parts @ q)
        assert got.tolist() == data.ids[np.lexsort((data.ids, -best))[:50]].tolist()


def test_passage_rerank_smoke_reads_fewer_rows_when_shallower(tmp_path: Path) -> None:
    _, result = run_bench("passage_rerank", ["--n", "5000", "--queries", "40", "--shares",
                                             "1,0.5,0.1", "--tmp", str(tmp_path)],
                          tmp_path / "results")
    figures = result["figures"]
    assert figures["share_1_part_rerank_factor"] == 10
    assert figures["share_0.5_part_rerank_factor"] == 5
    assert figures["share_0.1_part_rerank_factor"] == 1  # no re-ranking at all
    rows = [figures[f"share_{s}_rows_per_query"] for s in ("1", "0.5", "0.1")]
    assert rows[0] > rows[1] > rows[2]
    assert figures["share_1_recall_at_20"] >= 0.95
