"""Quiet, honest logs: no open_clip "initialized randomly" warning when weights are loaded right
after, and no access line per /readyz or /healthz poll, while other requests and errors are
still logged."""

from __future__ import annotations

import io
import logging
import logging.config
import socket
import threading
import time

import httpx
import pytest

from figsearch.api.server import log_config
from figsearch.encoders import load_model
from tests.figsearch.api_fixtures import loaded_app

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def test_loading_saved_weights_does_not_warn_of_random_init(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO)
    load_model(str(tiny_model_dir), device="cpu")
    logging.warning("a warning of someone else")  # the filter is gone after the load
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "initialized randomly" in m or "initialized partially" in m]
    assert "a warning of someone else" in messages


@pytest.fixture()
def restore_uvicorn_logging():
    saved = {n: (lg.handlers[:], lg.level, lg.propagate, lg.filters[:])
             for n in UVICORN_LOGGERS for lg in [logging.getLogger(n)]}
    yield
    for name, (handlers, level, propagate, filters) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers, lg.filters = handlers, filters
        lg.setLevel(level)
        lg.propagate = propagate


def test_serve_logs_requests_but_not_probe_polls(small_index_settings, restore_uvicorn_logging):
    import uvicorn

    access, errors = io.StringIO(), io.StringIO()
    config = log_config()  # what `figsearch serve` hands uvicorn (and each of its workers)
    config["handlers"]["access"]["stream"] = access
    config["handlers"]["default"]["stream"] = errors
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(loaded_app(small_index_settings), log_config=config,
                                           log_level="info"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(5):
            assert httpx.get(f"{url}/readyz").status_code == 200
            assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/v1/stats").status_code == 200
        assert httpx.get(f"{url}/v1/figures/999999").status_code == 404
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    lines = access.getvalue().splitlines()
    assert not [line for line in lines if "/readyz" in line or "/healthz" in line], lines
    assert any("GET /v1/stats" in line and "200" in line for line in lines), lines
    assert any("GET /v1/figures/999999" in line and "404" in line for line in lines), lines
