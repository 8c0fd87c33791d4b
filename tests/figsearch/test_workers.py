"""Several uvicorn workers: one rate-limit budget, summed metrics, memory-mapped index."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from figsearch.api.middleware import SharedTokenBuckets
from figsearch.api.server import prepare_run_dir
from figsearch.core.config import Settings
from figsearch.index import SearchIndex, current_version_dir
from figsearch.netutil import free_port, wait_for_http
from tests.conftest import REPO


def test_shared_buckets_hold_one_budget_across_processes(tmp_path):
    path = tmp_path / "ratelimit.sqlite"
    first, second = SharedTokenBuckets(path, 10), SharedTokenBuckets(path, 10)  # two workers
    now = time.time()
    taken = [b.take("1.2.3.4", now) == 0 for _ in range(6) for b in (first, second)]
    assert sum(taken) == 10 and taken[-2:] == [False, False]
    assert second.take("5.6.7.8", now) == 0  # other clients have their own budget
    wait = first.take("1.2.3.4", now)
    assert 0 < wait <= 6.0  # 10/min: a token every 6 s
    assert second.take("1.2.3.4", now + 6.1) == 0  # refilled, seen by the other worker


def test_prepare_run_dir_only_for_several_workers(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("FIGSEARCH_RUN_DIR", raising=False)
    settings = Settings(data_dir=tmp_path, run_dir=str(tmp_path / "run"))
    assert prepare_run_dir(settings, 1) is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    (tmp_path / "run" / "prometheus").mkdir(parents=True)
    (tmp_path / "run" / "prometheus" / "counter_1.db").write_bytes(b"stale")
    (tmp_path / "run" / "ratelimit.sqlite").write_bytes(b"stale")
    run = prepare_run_dir(settings, 2)
    assert run == (tmp_path / "run").resolve()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(run / "prometheus")
    assert os.environ["FIGSEARCH_RUN_DIR"] == str(run)
    assert not any((run / "prometheus").iterdir()) and not (run / "ratelimit.sqlite").exists()


def test_index_mmap_answers_like_the_loaded_copy(small_index_data_dir):
    version = current_version_dir(small_index_data_dir / "indexes")
    mapped = SearchIndex.load(version, mmap_index=True)
    copy = SearchIndex.load(version, mmap_index=False)
    q = copy.vectors_for([1, 2, 3])
    for a, b in zip(mapped.search(q, 5), copy.search(q, 5), strict=True):
        assert np.array_equal(a, b)


def _request_total(metrics: str, route: str) -> float:
    pattern = rf'^figsearch_http_requests_total\{{[^}}]*route="{re.escape(route)}"[^}}]*\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, metrics, re.M))


@pytest.mark.slow
def test_two_workers_share_rate_limit_and_metrics(small_index_data_dir, tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "FIGSEARCH_MODEL": str(tiny_model_dir), "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "6", "FIGSEARCH_RUN_DIR": str(tmp_path / "run")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(small_index_data_dir),
         "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=180, interval=0.3)
        for _ in range(40):  # both workers up (each answers readyz only once loaded)
            if all(httpx.get(f"{base}/readyz").status_code == 200 for _ in range(4)):
                break
            time.sleep(0.5)
        codes, start = [], time.monotonic()
        for _ in range(20):  # a new connection each time: the kernel spreads them over workers
            with httpx.Client(base_url=base) as http:
                codes.append(http.get("/v1/search", params={"q": "TREM2", "mode": "keyword"})
                             .status_code)
        elapsed = time.monotonic() - start
        assert set(codes) == {200, 429}
        # One budget of 6 for both workers plus a token per 10 s (two budgets would allow 12).
        assert 6 <= codes.count(200) <= 6 + int(elapsed / 10) + 1
        metrics = httpx.get(f"{base}/metrics").text
        # Every request counted once, summed over both workers' files (429s are answered
        # before routing, so they count as "unmatched").
        assert _request_total(metrics, "/v1/search") == codes.count(200)
        assert _request_total(metrics, "unmatched") == codes.count(429)
        pids = {line.split("_")[-1].removesuffix(".db")
                for line in os.listdir(tmp_path / "run" / "prometheus")}
        assert len(pids) >= 1
        # The supervisor checked the index in a child process: it holds no torch and no model.
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        assert any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in pids)
    finally:
        os.killpg(proc.pid, 15)
        output = proc.communicate(timeout=60)[0].decode()
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_several_workers_refuse_an_index_that_cannot_load(tmp_path, tiny_model_dir):
    """The check in a child process still stops ``serve`` with the reason, before the port opens."""
    data = tmp_path / "data"
    version = data / "indexes" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{not json")
    (data / "indexes" / "current").symlink_to("v1")
    env = {**os.environ, "FIGSEARCH_MODEL": str(tiny_model_dir), "FIGSEARCH_DEVICE": "cpu"}
    run = subprocess.run(
        [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(data),
         "--port", str(free_port()), "--workers", "2"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 1
    assert "figsearch serve: cannot serve the index in" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_workers_listener_gives_connections_tcp_nodelay():
    """uvicorn binds the workers' socket with proto 0, so asyncio would leave Nagle on and every
    keep-alive response would wait ~40 ms for the client's delayed ACK; ours is TCP."""
    import asyncio
    import socket

    import uvicorn

    from figsearch.api.server import tcp_listener

    config = uvicorn.Config("figsearch.api.main:app_from_env", host="127.0.0.1", port=0)
    listener = tcp_listener(config)
    assert listener.proto == socket.IPPROTO_TCP and listener.get_inheritable()

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) == 1
