"""`figsearch serve` and `figsearch search` as a user runs them, and the API bench smoke run."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from figsearch.netutil import free_port, wait_for_http
from tests.conftest import REPO


@pytest.mark.slow
def test_figsearch_serve_answers_searches(small_index_data_dir, tiny_model_dir):
    port = free_port()
    env = {**os.environ, "FIGSEARCH_MODEL": str(tiny_model_dir), "FIGSEARCH_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(small_index_data_dir),
         "--port", str(port), "--log-level", "warning"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=120, interval=0.3)
        r = httpx.get(f"{base}/v1/search", params={"q": "TREM2", "mode": "keyword"})
        assert r.status_code == 200 and "TREM2" in r.json()["results"][0]["caption"]
        assert httpx.get(f"{base}/v1/search", params={"q": ""}).status_code == 400
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output


@pytest.mark.slow
def test_figsearch_search_cli(small_index_data_dir, tiny_model_dir):
    env = {**os.environ, "FIGSEARCH_MODEL": str(tiny_model_dir), "FIGSEARCH_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "figsearch.cli", "search", "--data-dir",
           str(small_index_data_dir)]
    ok = subprocess.run([*cmd, "TREM2 signaling", "--k", "3", "--mode", "keyword", "--no-dedup"], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("keyword search for 'TREM2 signaling'")
    assert len(lines) == 4 and lines[1].split()[0] == "1" and "TREM2" in lines[1]
    bad = subprocess.run([*cmd, "   "], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "query is empty" in bad.stderr


@pytest.mark.slow
def test_an_app_loads_and_warms_its_index_before_it_accepts_requests(small_index_settings):
    """Startup loads the index and model (uvicorn accepts connections after startup), so a
    worker never answers while it is still loading: the very first request finds it ready."""
    from fastapi.testclient import TestClient

    from figsearch.api.main import create_app

    app = create_app(small_index_settings.model_copy(update={"reload_interval_s": 3600}))
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.get("/v1/search", params={"q": "pathway", "mode": "dense"}).status_code == 200


def test_a_version_loader_runs_numpys_blas_on_one_thread(tmp_path):
    """What serves queries multiplies small matrices only; OpenBLAS would split each product
    over every core and leave its threads spinning, so the loader limits it to one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from figsearch.core.config import Settings
    from figsearch.serving import VersionLoader

    def blas_threads() -> set[int]:
        return {int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}

    limits = threadpool_limits(limits=2, user_api="blas")  # as a fresh process on 2 cores
    try:
        assert blas_threads() == {2}
        VersionLoader(Settings(data_dir=tmp_path), load_models=False)
        assert blas_threads() == {1}
    finally:
        limits.restore_original_limits()
