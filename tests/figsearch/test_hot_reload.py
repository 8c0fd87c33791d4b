"""Hot reload under load: a real uvicorn server keeps answering while `current` is swapped."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from figsearch.core.config import Settings
from figsearch.encoders import load_model
from figsearch.index import current_version_dir
from indexer.build import switch_current
from tests.figsearch.api_fixtures import build_index, loaded_app, serve_in_thread


@pytest.fixture()
def data_dir(small_index_data_dir, tmp_path) -> Path:
    """A private, mutable copy of the small data dir."""
    target = tmp_path / "data"
    shutil.copytree(small_index_data_dir, target, symlinks=True)
    return target


def _fire(base_url: str, stop: threading.Event) -> tuple[list[str], list[str]]:
    """Query until stopped; returns (index versions seen, failures)."""
    seen, failures = [], []
    queries = [("/v1/search", {"q": "signaling pathway", "k": 5}),
               ("/v1/search", {"q": "kinase", "k": 3, "mode": "dense"}),
               ("/v1/figures/2/similar", {"k": 4})]
    with httpx.Client(base_url=base_url, timeout=30) as http:
        i = 0
        while not stop.is_set():
            path, params = queries[i % len(queries)]
            i += 1
            try:
                r = http.get(path, params=params)
            except httpx.HTTPError as exc:
                failures.append(f"{path}: {exc!r}")
                continue
            if r.status_code != 200 or len(r.json()["results"]) == 0:
                failures.append(f"{path}: {r.status_code} {r.text[:200]}")
            else:
                seen.append(r.json()["index_version"])
    return seen, failures


@pytest.mark.slow
def test_swap_under_load_loses_no_request(data_dir, tiny_model_dir):
    settings = Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, reload_interval_s=0.1, dedup_threshold=0.99999)
    old_version = current_version_dir(settings.indexes_dir).name
    encoder = load_model(str(tiny_model_dir), device="cpu")
    stop = threading.Event()
    with serve_in_thread(loaded_app(settings, start_poller=True)) as url:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_fire, url, stop) for _ in range(4)]
            time.sleep(0.5)
            new_dirs = []
            for n in range(2):  # two swaps while queries are in flight
                time.sleep(0.1)  # version names have second resolution plus a random tag
                new_dirs.append(build_index(data_dir, encoder, str(tiny_model_dir),
                                            perturb=0.01 * (n + 1)))
                deadline = time.monotonic() + 20
                while httpx.get(f"{url}/v1/stats").json()["index_version"] != new_dirs[-1].name:
                    assert time.monotonic() < deadline, "new version never served"
                    time.sleep(0.05)
                time.sleep(0.5)
            stop.set()
            results = [f.result() for f in futures]
    seen = [v for s, _ in results for v in s]
    failures = [f for _, fs in results for f in fs]
    assert failures == []
    assert len(seen) > 20
    assert {old_version, new_dirs[0].name, new_dirs[1].name} <= set(seen)
    assert seen[-1] == new_dirs[1].name


def test_broken_new_version_keeps_the_old_one_serving(data_dir, tiny_model_dir):
    settings = Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, reload_interval_s=0.1, admin_token="tok")
    good = current_version_dir(settings.indexes_dir)
    broken = settings.indexes_dir / "29990101T000000Z-broken"
    shutil.copytree(good, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["version"] = broken.name
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "index.faiss").write_bytes(b"truncated")
    app = loaded_app(settings, start_poller=True)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as http:
        switch_current(settings.indexes_dir, broken)
        deadline = time.monotonic() + 10
        while http.get("/v1/stats").json()["last_reload_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stats = http.get("/v1/stats").json()
        assert stats["index_version"] == good.name and "index.faiss" in stats["last_reload_error"]
        assert http.get("/readyz").status_code == 200
        r = http.get("/v1/search", params={"q": "pathway"})
        assert r.status_code == 200 and r.json()["index_version"] == good.name
        forced = http.post("/v1/admin/reload", headers={"Authorization": "Bearer tok"})
        assert forced.status_code == 409 and "still serving" in forced.json()["detail"]
        switch_current(settings.indexes_dir, good)  # operator rolls back
        ok = http.post("/v1/admin/reload", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200 and ok.json()["index_version"] == good.name
        assert http.get("/v1/stats").json()["last_reload_error"] is None
