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
    """A private, mutable copy of the small data dir, without the filters other tests' API
    workers shared through it (figsearch.shared_filters): these tests count what is prepared."""
    from figsearch.shared_filters import FILE

    target = tmp_path / "data"
    shutil.copytree(small_index_data_dir, target, symlinks=True)
    (target / FILE).unlink(missing_ok=True)
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


def test_a_swap_prepares_the_filters_the_old_version_answered(data_dir, tiny_model_dir):
    """The filters users were applying are made on the new version before it is swapped in
    (allowed set and each vector index's plan), and answer exactly as on a version opened
    without that preparation."""
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from figsearch.api.main import create_app
    from figsearch.api.state import AppState
    from figsearch.caption_index import whole_index
    from figsearch.search import ONE_CLICK_FILTERS, RECENT_FILTERS
    from figsearch.serving import VersionLoader
    from figsearch.store import FigureFilter

    settings = Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, dedup_threshold=0.99999)
    state = AppState(settings)
    state.reload()
    with TestClient(create_app(settings, state=state, start_poller=False)) as client:
        old = state.current
        one_click = list(ONE_CLICK_FILTERS)  # the UI's toggles: prepared by every load
        assert old is not None and old.service.recent_filters() == one_click
        assert client.get("/v1/stats").json()["filters_prepared"] == len(one_click)
        with old.service.store.engine.connect() as conn:
            years = sorted(r[0] for r in conn.execute(text(
                "SELECT DISTINCT year FROM articles WHERE year IS NOT NULL")))
        licenses = old.service.store.distinct_values("license_class")
        filters = [FigureFilter(license_class=licenses[0]),
                   FigureFilter(year_from=years[len(years) // 2]),
                   FigureFilter(figure_type="diagram/pathway", year_to=years[-1])]
        for flt in filters:
            old.service.search_text("signaling pathway", k=5, flt=flt)
        old.service.search_text("signaling pathway", k=5)  # no filter: nothing to carry
        old.service.search_text("signaling pathway", k=5, flt=one_click[0])  # used again
        assert old.service.recent_filters() == [one_click[1], *filters, one_click[0]]

        encoder = load_model(str(tiny_model_dir), device="cpu")
        new_dir = build_index(data_dir, encoder, str(tiny_model_dir), perturb=0.01)
        assert state.reload()
        new = state.current
        assert new is not None and new.version == new_dir.name
        assert client.get("/v1/stats").json()["filters_prepared"] == len(filters) + 2
        assert new.service.recent_filters() == [one_click[1], *filters, one_click[0]]
        captions = new.service.captions  # (this data dir has no caption index)
        indexes = [new.service.index, *([whole_index(captions.index)] if captions else [])]
        for flt in [*filters, *one_click]:  # made on this version's own columns and indexes
            allowed = new.service.columns.cached(flt)
            assert allowed is not None and allowed.count > 0, flt
            assert allowed is not old.service.columns.cached(flt)
            assert all(index.has_plan(allowed) for index in indexes), flt

        cold = VersionLoader(settings, warm_up=False).load(new_dir, state.store)
        assert cold.prepared_filters == 0 and cold.service.columns.cached(filters[0]) is None
        for flt in filters:
            for mode in ("hybrid", "dense", "keyword"):
                got = new.service.search_text("signaling pathway", k=8, mode=mode, flt=flt)
                want = cold.service.search_text("signaling pathway", k=8, mode=mode, flt=flt)
                ids = [h.id for h in got.hits]
                assert ids and ids == [h.id for h in want.hits], (flt, mode)
                assert cold.service.columns.allowed(flt).contains(ids).all(), (flt, mode)

        # no more than an index keeps plans for: the newest of a longer list
        many = [FigureFilter(year_from=year) for year in range(1900, 1900 + RECENT_FILTERS + 2)]
        assert new.service.prepare_filters(many) == RECENT_FILTERS
        assert [new.service.columns.cached(flt) is not None for flt in many] == \
            [False, False] + [True] * RECENT_FILTERS


@pytest.mark.slow
def test_workers_share_the_filters_users_applied_and_a_restart_prepares_them(
        data_dir, tiny_model_dir):
    """Two API workers on one data dir (each its own AppState, as uvicorn's workers are): a
    filter answered by one is prepared by the other at its next poll, and by a restarted
    worker before it serves; both answer it exactly as a worker that never prepared it."""
    from sqlalchemy import text

    from figsearch.api.state import AppState
    from figsearch.search import ONE_CLICK_FILTERS
    from figsearch.serving import VersionLoader
    from figsearch.shared_filters import FILE, read_filters
    from figsearch.store import FigureFilter

    settings = Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0)
    states = [AppState(settings), AppState(settings)]
    try:
        for state in states:
            state.reload()
        one, two = (state.current for state in states)
        assert one is not None and two is not None
        with one.service.store.engine.connect() as conn:
            years = sorted(r[0] for r in conn.execute(text(
                "SELECT DISTINCT year FROM articles WHERE year IS NOT NULL")))
        licenses = one.service.store.distinct_values("license_class")
        filters = [FigureFilter(year_from=years[len(years) // 2]),
                   FigureFilter(license_class=licenses[0])]
        for flt in filters:
            one.service.search_text("signaling pathway", k=5, flt=flt)
        assert not any(two.service.filter_prepared(flt) for flt in filters)  # never asked

        states[0].poll_once()  # worker one shares what it answered
        assert read_filters(data_dir / FILE) == [*ONE_CLICK_FILTERS, *filters]
        assert states[1].share_filters() == len(filters)  # worker two prepares them
        assert all(two.service.filter_prepared(flt) for flt in filters)
        assert states[1].share_filters() == 0  # nothing new since

        restarted = AppState(settings)
        states.append(restarted)
        restarted.reload()  # its first load, before it serves
        fresh = restarted.current
        assert fresh is not None and fresh.prepared_filters == len(ONE_CLICK_FILTERS) + 2
        cold = VersionLoader(settings, warm_up=False).load(fresh.version_dir, restarted.store)
        for flt in filters:
            assert fresh.service.filter_prepared(flt)
            got = [h.id for h in fresh.service.search_text("signaling pathway", k=8,
                                                           flt=flt).hits]
            want = [h.id for h in cold.service.search_text("signaling pathway", k=8,
                                                           flt=flt).hits]
            assert got and got == want, flt

        (data_dir / FILE).write_text("{damaged")  # a damaged list costs only the first uses
        damaged = AppState(settings)
        states.append(damaged)
        damaged.reload()
        assert damaged.current is not None
        assert damaged.current.prepared_filters == len(ONE_CLICK_FILTERS)
    finally:
        for state in states:
            state.close()
