"""bench/gpu_check.sh --smoke: every line of the GPU check runs once on the CPU at tiny size."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import PYTHON, REPO


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part(tmp_path: Path) -> None:
    env = {**os.environ, "FIGSEARCH_BENCH_RESULTS": str(tmp_path), "PYTHON": PYTHON,
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    tail = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, tail
    assert "FAILED" not in proc.stdout and "MISSING" not in proc.stdout, tail
    results = {name: json.loads((tmp_path / f"gpu_check_{name}.json").read_text())
               for name in ("embed", "index", "train")}
    embed = results["embed"]["figures"]
    assert embed["end_to_end_jpeg_b2_img_s"] > 0 and embed["model_bf16_b2_img_s"] > 0
    index = results["index"]["figures"]
    assert index["training"] == "torch k-means on cpu"  # the GPU function, on CPU torch
    assert index["recall_at_10_rerank"] >= 0.95 and index["recall_at_10_no_rerank"] > 0
    assert index["bytes_per_vector"] > 0 and index["train_s"] > 0
    train = results["train"]["figures"]
    assert train["steps"] == 2 and train["loss_finite"] and train["samples_per_s"] > 0
    assert "recall@10 with re-ranking" in proc.stdout and "DDP steps" in proc.stdout
