"""Real servers on loopback for the UI tests: free ports, readiness polling, Streamlit process."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from figsearch.netutil import free_port, wait_for_http
from ui.launch import stop, streamlit_command


@contextmanager
def streamlit_server(api_url: str, log_path: Path) -> Iterator[str]:
    """``streamlit run ui/app.py`` on a free port against ``api_url``; yields the UI's URL."""
    port = free_port()
    env = {**os.environ, "FIGSEARCH_API_URL": api_url}
    with open(log_path, "w") as log:
        process = subprocess.Popen(streamlit_command(port, "127.0.0.1"), env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
        try:
            wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", timeout=90, process=process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)





@contextmanager
def api_server(settings: Any) -> Iterator[str]:
    """The real figsearch API (uvicorn in a thread) on a free loopback port; yields its URL."""
    import uvicorn

    from figsearch.api.main import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="figsearch-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/readyz", timeout=120)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
