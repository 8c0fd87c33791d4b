"""bench.text_batches on the tiny model: real captions and queries timed, each row its text's."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_bench_smoke import run_bench


def test_text_batches_smoke_times_real_captions_and_keeps_each_rows_vector(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    _, result = run_bench("text_batches", ["--model", str(tiny_model_dir), "--captions", "60",
                                           "--rounds", "1"], tmp_path)
    figures = result["figures"]
    assert figures["captions"] == 60 and figures["queries"] > 100
    assert figures["torch_captions_s"] > 0 and figures["torch_queries_per_s"] > 0
    assert figures["torch_max_abs_diff_alone"] < 1e-5  # each row is its own text's vector
