"""bench/peer.py's smoke mode: the figsearch side through the peer harness's own load client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_peer_bench_smoke_answers_every_query_correctly(tmp_path: Path) -> None:
    env = {**os.environ, "FIGSEARCH_BENCH_RESULTS": str(tmp_path / "results"),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bench.peer", "--smoke", "--n", "1500", "--work",
           str(tmp_path / "work"), "--duration", "2", "--max-requests", "12",
           "--text-conc", "1,4", "--image-conc", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| side | phase |" in proc.stdout
    result = json.loads((tmp_path / "results" / "peer.json").read_text())
    figures = result["figures"]
    assert result["params"]["smoke"] is True and result["params"]["n"] == 1500
    for side in ("figsearch", "figsearch_onnx"):  # torch, and the torch-free encoder backend
        for phase in ("text_c1", "text_c4", "image_c1"):
            assert figures[f"{side}_{phase}_requests"] > 0, figures
            assert figures[f"{side}_{phase}_errors"] == 0, figures
            assert 0 < figures[f"{side}_{phase}_p50_ms"] <= figures[f"{side}_{phase}_p99_ms"]
        # Raw-vector queries near stored vectors find the exact top-10 (1,500 vectors: Flat).
        assert figures[f"{side}_recall_at_10"] >= 0.99
        assert figures[f"{side}_rss_mb"] > 0
    # the exported model was written into the data dir the onnx side served
    assert list((tmp_path / "work").rglob("figsearch_onnx.json"))
    # no torch in the onnx side's server: its memory is the smaller by far
    assert figures["figsearch_onnx_rss_mb"] < figures["figsearch_rss_mb"] - 300
    assert not any(k.startswith("peer_") for k in figures)  # the peer is not installed here
