"""Faults: processes killed, indexes swapped under load, concurrent ingest, a full disk.

Every test runs real processes over real SQLite files and FAISS indexes, and checks afterwards
that nothing was lost or left half-written.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.soak import query_images, run_soak
from figsearch.index import current_version_dir

from .servers import REPO, copy_data_dir, server_env, start_api_process, stop_api_process


def _integrity(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = con.execute("SELECT count(*) FROM figures WHERE article_id NOT IN "
                              "(SELECT id FROM articles)").fetchone()[0]
        assert orphans == 0, f"{orphans} figures without their article"
    finally:
        con.close()


def _hammer(url: str, stop: threading.Event, log: list[tuple[float, str]]) -> None:
    """Search in a loop until stopped, logging (time, outcome) per request."""
    with httpx.Client(base_url=url, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = http.get("/v1/search", params={"q": f"kinase pathway {i % 5}", "k": 5})
                log.append((time.monotonic(), str(r.status_code)))
            except httpx.HTTPError as exc:
                log.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.05)


def _ranking(url: str) -> list[list[int]]:
    out = []
    for q in ("MAPK signalling", "interferon", "apoptosis caspase"):
        r = httpx.get(f"{url}/v1/search", params={"q": q, "k": 10}, timeout=30)
        assert r.status_code == 200
        out.append([h["id"] for h in r.json()["results"]])
    return out


def _wait_until(condition, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds (the assertions after it say what was missing)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.slow
def test_api_sigkill_under_load_then_restart_serves_current_index(
        small_index_data_dir, tiny_model_dir, tmp_path):
    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    api = start_api_process(data, tiny_model_dir, tmp_path / "api.log")
    port = int(api.url.rsplit(":", 1)[1])
    version = current_version_dir(data / "indexes").name
    before = _ranking(api.url)
    stop, log = threading.Event(), []
    clients = [threading.Thread(target=_hammer, args=(api.url, stop, log)) for _ in range(6)]
    for c in clients:
        c.start()
    try:
        # Under load, not after a fixed time: a busy machine answers fewer requests per second.
        _wait_until(lambda: len(log) > 10)
        served_before_kill = len(log)
        api.process.send_signal(signal.SIGKILL)
        api.process.wait(10)
        killed_at = time.monotonic()
        time.sleep(0.5)
        api = start_api_process(data, tiny_model_dir, tmp_path / "api.log", port=port)
        ready_at = time.monotonic()
        _wait_until(lambda: sum(1 for t, o in list(log) if t > ready_at and o == "200") > 10)
    finally:
        stop.set()
        for c in clients:
            c.join(30)
        after = _ranking(api.url) if api.process.poll() is None else None
        ready = httpx.get(f"{api.url}/readyz").json()
        stop_api_process(api)
    ok_after = [o for t, o in log if t > ready_at and o == "200"]
    bad_after = [o for t, o in log if t > ready_at + 0.5 and o != "200"]
    print(f"\nAPI SIGKILL: {served_before_kill} answers before the kill, "
          f"restart ready in {ready_at - killed_at:.1f} s, {len(ok_after)} answers after")
    assert served_before_kill > 10 and len(ok_after) > 10
    assert bad_after == [], bad_after[:5]
    assert ready["index_version"] == version
    assert after == before, "rankings changed across the crash"
    _integrity(data / "figsearch.db")


@pytest.mark.slow
def test_index_swapped_under_soak_load_zero_failures(small_index_data_dir, tiny_model_dir, tmp_path):
    """Three new versions built and switched while 16 clients run the soak mix."""
    from figsearch.encoders import load_model
    from tests.figsearch.api_fixtures import build_index

    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    encoder = load_model(str(tiny_model_dir), device="cpu")
    built: list[str] = []
    stop = threading.Event()

    def swapper(url: str) -> None:
        for n in range(3):
            time.sleep(1.5)
            built.append(build_index(data, encoder, str(tiny_model_dir), perturb=0.01 * (n + 1)).name)
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/v1/stats").json()["index_version"] != built[-1]:
                assert time.monotonic() < deadline and not stop.is_set()
                time.sleep(0.05)

    api = start_api_process(data, tiny_model_dir, tmp_path / "api.log", reload_interval_s=0.1)
    try:
        thread = threading.Thread(target=swapper, args=(api.url,))
        thread.start()
        figures, errors = asyncio.run(run_soak(api.url, api.pid, 16, 8.0, query_images(), warmup=0.5))
        stop.set()
        thread.join(60)
        served = httpx.get(f"{api.url}/v1/stats").json()["index_version"]
    finally:
        stop_api_process(api)
    print(f"\nswap under load: {len(built)} swaps, {figures['requests']} requests, "
          f"{figures['errors']} errors, p99 {figures['p99_ms']} ms")
    assert len(built) == 3 and served == built[-1]
    assert errors == [], errors[:5]


def _ingest_cmd(data: Path, *paths: Path) -> list[str]:
    return [sys.executable, "-m", "figsearch.cli", "ingest", "--data-dir", str(data),
            "--workers", "1", *map(str, paths)]


@pytest.mark.slow
def test_ingest_while_searching_never_reports_locked(small_index_data_dir, tiny_model_dir,
                                                     shared_data, tmp_path):
    """A real `figsearch ingest` writes into the store the API is reading: no 5xx, no
    'database is locked' in any answer or in the server log."""
    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    api = start_api_process(data, tiny_model_dir, tmp_path / "api.log")
    stop, log = threading.Event(), []
    bodies: list[str] = []

    def reader() -> None:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                for path, params in (("/v1/search", {"q": "signalling pathway", "mode": "keyword"}),
                                     ("/v1/stats", {}), ("/v1/facets", {}),
                                     ("/v1/search", {"q": "virus", "license": "commercial"}),
                                     (f"/v1/figures/{1 + i % 30}", {})):
                    r = http.get(path, params=params)
                    log.append(r.status_code)
                    if r.status_code >= 500 or "locked" in r.text:
                        bodies.append(f"{path}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # 80 real figures; the manifest reaches them through a symlinked images folder
        (tmp_path / "manifest").mkdir()
        manifest = tmp_path / "manifest" / "figures.jsonl"
        (tmp_path / "manifest" / "images").symlink_to(shared_data / "pmc-figures" / "images")
        rows = (shared_data / "pmc-figures" / "figures.jsonl").read_text().splitlines()[40:120]
        manifest.write_text("".join(line + "\n" for line in rows))
        inputs = [manifest, shared_data / "jats" / "pmc-nxml", shared_data / "jats" / "packages"]
        proc = subprocess.run(_ingest_cmd(data, *inputs), cwd=REPO, capture_output=True,
                              text=True, timeout=600, env=server_env(tiny_model_dir))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        stop_api_process(api)
    print(f"\ningest while searching: {len(log)} answers during ingest; {proc.stdout.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "locked" not in proc.stderr
    assert bodies == [], bodies[:5]
    assert len(log) > 20 and set(log) <= {200, 404}, set(log)
    assert "locked" not in api.log()
    _integrity(data / "figsearch.db")


# -- full disk -----------------------------------------------------------------------------------
# A full disk without privileges: instead of mounting a small tmpfs (root only), the process
# under test runs with RLIMIT_FSIZE, so every write past the limit fails in the kernel with
# EFBIG ("File too large") - the same failed write, reported by the same code paths, as
# ENOSPC. SIGXFSZ is ignored so that the write fails instead of killing the process.
def file_size_limit(limit_bytes: int):
    """``preexec_fn`` for a subprocess whose files cannot grow past ``limit_bytes``."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def _vectors(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v, np.arange(1, n + 1, dtype=np.int64)


BIG_BUILD = """
import sys
from pathlib import Path
import numpy as np
from indexer.build import build_version
v = np.random.default_rng(1).normal(size=(30_000, 32)).astype(np.float32)
try:
    build_version(Path(sys.argv[1]), v, np.arange(1, 30_001), model_spec="m", model_key="k",
                  factory="Flat", use_gpu=False)
except (OSError, RuntimeError) as exc:  # faiss reports a failed write as RuntimeError
    print(f"build failed: {exc}")
    sys.exit(3)
"""


def test_full_disk_during_index_build_keeps_current(tmp_path):
    """The index files cannot be written in full mid-build (a 1 MiB file-size limit; ~2 MiB of
    vectors and ~4 MiB of flat index): a clear error naming the failed write, `current`
    untouched and still loadable, and a rerun with space completes."""
    from figsearch.index import SearchIndex
    from indexer.build import build_version

    indexes = tmp_path / "indexes"
    small = _vectors(500, 32)
    first = build_version(indexes, *small, model_spec="m", model_key="k", factory="Flat",
                          use_gpu=False)
    run = subprocess.run([sys.executable, "-c", BIG_BUILD, str(indexes)], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=file_size_limit(1 << 20))
    assert run.returncode == 3, run.stdout + run.stderr[-2000:]
    assert "file too large" in run.stdout.lower(), run.stdout
    assert current_version_dir(indexes) == first.resolve()
    index = SearchIndex.load(current_version_dir(indexes))
    assert index.ntotal == 500
    scores, ids = index.search(small[0][:3] / np.linalg.norm(small[0][:3], axis=1, keepdims=True), 1)
    assert ids[:, 0].tolist() == [1, 2, 3]
    rerun = build_version(indexes, *_vectors(800, 32, seed=2), model_spec="m", model_key="k",
                          factory="Flat", use_gpu=False)
    assert current_version_dir(indexes) == rerun.resolve()
    assert not [p for p in indexes.iterdir() if p.name.startswith(".building-")]
    print(f"\nfull disk (RLIMIT_FSIZE 1 MiB): {run.stdout.strip()[:160]}; current kept")


def test_full_disk_during_ingest_loses_nothing(tmp_path, shared_data):
    """The store cannot grow past 1 MiB while `figsearch ingest` writes real figures: the run
    stops with a message saying what happened and how to resume; the store stays intact (every
    article with all its figures); with room again a rerun completes."""
    from figsearch.core.config import Settings
    from indexer.ingest import ingest_paths

    settings = Settings(data_dir=tmp_path / "data")
    manifest = shared_data / "pmc-figures" / "figures.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "figsearch.cli", "ingest", str(manifest), "--data-dir",
         str(settings.data_dir), "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(1 << 20))
    assert run.returncode == 1, run.stderr[-2000:]
    assert "figsearch ingest: stopped:" in run.stderr, run.stderr[-2000:]
    assert "Articles stored so far are complete" in run.stderr
    _integrity(settings.db_path)
    con = sqlite3.connect(settings.db_path)
    partial, partial_articles = con.execute(
        "SELECT count(*), count(DISTINCT article_id) FROM figures").fetchone()
    con.close()
    assert 0 < partial < 189
    summary = ingest_paths([manifest], settings, workers=1)
    _integrity(settings.db_path)
    con = sqlite3.connect(settings.db_path)
    total, with_images = con.execute(
        "SELECT count(*), sum(has_image) FROM figures").fetchone()
    con.close()
    print(f"\nfull disk during ingest (RLIMIT_FSIZE 1 MiB): {partial} figures of "
          f"{partial_articles} articles stored before the store filled; rerun: {summary.line()}")
    assert total == with_images == 189


@pytest.mark.parametrize("spec, rc, printed", [
    ("", 0, "0 1 2 3 4 done"), ("x@3", -signal.SIGKILL, "0 1 2"), ("x", -signal.SIGKILL, "0"),
    ("y", 0, "0 1 2 3 4 done"), ("done", -signal.SIGKILL, "0 1 2 3 4"),
])
def test_fault_hook_kills_exactly_at_its_stage(spec, rc, printed):
    """FIGSEARCH_FAULT_AT=<stage>[@n]: SIGKILL on the n-th time ``stage`` is reached, else no-op."""
    code = ("from figsearch.faults import maybe_crash\n"
            "for i in range(5):\n    print(i, flush=True)\n    maybe_crash('x')\n"
            "maybe_crash('done')\nprint('done')")
    env = {**server_env(Path("/nonexistent")), "FIGSEARCH_FAULT_AT": spec}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == rc, res.stderr
    assert res.stdout.split() == printed.split()
