"""Real figsearch API servers on loopback for the reliability tests.

:func:`api_process` runs ``figsearch serve`` as a separate process (so it can be SIGKILLed and its
RSS measured); :func:`api_thread` runs uvicorn in a thread over in-process settings (fast, for
access-control tests that need special settings).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figsearch.netutil import free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]


def wait_ready(url: str, timeout: float = 120, process: subprocess.Popen | None = None) -> None:
    """Poll ``url/readyz`` until 200; fail early (with the log) if ``process`` exits."""
    wait_for_http(f"{url}/readyz", process=process, timeout=timeout, interval=0.1)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def copy_data_dir(src: Path, dest: Path) -> Path:
    """A private, mutable copy of a data dir (``indexes/current`` stays a relative symlink)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


@dataclass
class ApiProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(model_dir: Path, **settings: Any) -> dict[str, str]:
    """Environment for ``figsearch serve``: tiny model on CPU, no rate limit, fast reload."""
    env = {**os.environ, "FIGSEARCH_MODEL": str(model_dir), "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0", "FIGSEARCH_RELOAD_INTERVAL_S": "0.2",
           "FIGSEARCH_DEDUP_THRESHOLD": "0.99999", "FIGSEARCH_ADMIN_TOKEN": "",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.update({f"FIGSEARCH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_api_process(data_dir: Path, model_dir: Path, log_path: Path, port: int | None = None,
                      **settings: Any) -> ApiProcess:
    """Start ``figsearch serve`` (one uvicorn worker) and wait until it is ready."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(data_dir),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(model_dir, **settings), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    api = ApiProcess(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(api.url, process=proc)
    except Exception:
        stop_api_process(api)
        raise RuntimeError(f"API did not start; log:\n{api.log()[-3000:]}") from None
    return api


def stop_api_process(api: ApiProcess, sig: int = signal.SIGTERM) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
    if api.process.poll() is None:
        api.process.send_signal(sig)
        try:
            api.process.wait(15)
        except subprocess.TimeoutExpired:
            api.process.kill()
            api.process.wait(10)


@contextmanager
def api_process(data_dir: Path, model_dir: Path, log_path: Path, **settings: Any) -> Iterator[ApiProcess]:
    """``figsearch serve`` for the duration of the block."""
    api = start_api_process(data_dir, model_dir, log_path, **settings)
    try:
        yield api
    finally:
        stop_api_process(api)


@contextmanager
def api_thread(settings: Any, **uvicorn_options: Any) -> Iterator[str]:
    """uvicorn in a thread over ``create_app(settings)``; yields the base URL."""
    import uvicorn

    from figsearch.api.main import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", **uvicorn_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="reliability-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
