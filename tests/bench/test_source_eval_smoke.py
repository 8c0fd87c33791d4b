"""bench.source_eval on 3 real figures of the small index: altered copies (crops, panels,
screenshots, shrunk, rotated) are found by source verification with the tiny random image
model, whose dense ranking alone finds almost none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # an interpreter start with torch and ~50 image queries (~20 s)
def test_source_eval_runs_and_verification_finds_the_sources(
        small_index_data_dir, tiny_model_dir, tmp_path):
    env = {**os.environ, "FIGSEARCH_BENCH_RESULTS": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "FIGSEARCH_DATA_DIR": str(small_index_data_dir), "FIGSEARCH_MODEL": str(tiny_model_dir),
           "FIGSEARCH_DEVICE": "cpu", "FIGSEARCH_DEDUP_THRESHOLD": "0.99999",
           # every candidate verified even on a busy test machine: the bench's numbers, not
           # the budget, are under test here
           "FIGSEARCH_IMAGE_QUERY_BUDGET_MS": "20000"}
    shared = Path(os.environ.get("FIGSEARCH_SHARED", REPO.parent / "shared")) / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.source_eval", "--shared", str(shared), "--split", "all",
         "--limit", "3", "--cold", "2", "--tune", "--name", "smoke"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| alteration |" in proc.stdout
    result = json.loads((tmp_path / "smoke.json").read_text())
    figures = result["figures"]
    assert result["params"]["command"].startswith("FIGSEARCH_DATA_DIR=")
    assert figures["figures"] == 3 and figures["queries"] >= 24
    goal = "goal (crops, panels, screenshots)"
    assert figures["verified"]["crop70"]["hit@1"] == 1.0
    assert figures["verified"][goal]["hit@1"] >= 0.6
    assert figures["verified"][goal]["hit@1"] > figures["dense"][goal]["hit@1"] + 0.3
    assert figures["verified"]["shrunk"]["in_pool"] == 1.0  # 39 figures: all are candidates
    assert set(figures["threshold_sweep"]) == {"6", "8", "10", "12", "14", "16", "18", "20",
                                               "25", "30"}
    assert figures["latency_verified"]["n"] == figures["queries"]
