"""bench.shared_trunk on freshly exported figclip-mini (MiniLM locked) and all-MiniLM-L6-v2:
the shared trunk runs half the tower runs and gives the separate towers' vectors."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_bench_smoke import run_bench


def test_shared_trunk_smoke_halves_the_tower_runs(tmp_path: Path) -> None:
    _, result = run_bench("shared_trunk", ["--queries", "4", "--rounds", "1"],
                          tmp_path / "results")
    figures = result["figures"]
    assert figures["queries"] == 4
    assert figures["encode_tower_runs_shared"] * 2 == figures["encode_tower_runs_separate"]
    assert figures["encode_max_abs_diff"] < 1e-5
    assert figures["encode_separate_p50_ms"] > 0 and figures["encode_shared_p50_ms"] > 0
    assert "default_separate_p50_ms" not in figures  # no data dir given: encodings only
