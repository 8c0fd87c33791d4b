"""``figsearch ui``: run the Streamlit research UI against a figsearch API.

Starts ``streamlit run ui/app.py`` as a child process with the API address in
``FIGSEARCH_API_URL`` and waits for it; Ctrl-C stops the child and returns 130.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

APP_PATH = Path(__file__).resolve().with_name("app.py")
STOP_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``figsearch ui``; defaults come from the settings (FIGSEARCH_API_URL, FIGSEARCH_UI_PORT)."""
    parser.add_argument("--api", default=None, metavar="URL",
                        help="figsearch API base URL (default: $FIGSEARCH_API_URL or http://127.0.0.1:8000)")
    parser.add_argument("--port", type=int, default=None,
                        help="port of the UI (default: $FIGSEARCH_UI_PORT or 8501)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address the UI listens on (default 127.0.0.1; 0.0.0.0 for all)")


def check_api_url(url: str) -> str:
    """The URL without a trailing slash; ValueError saying what is wrong if it is not http(s)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--api must be an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    return url.rstrip("/")


def streamlit_command(
    port: int, address: str, max_upload_mb: float = 20.0, app_path: Path = APP_PATH
) -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no developer
    toolbar, and uploads capped like the API's (larger ones would be refused there anyway)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path),
        "--server.port", str(port), "--server.address", address,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--server.maxUploadSize", str(max(1, math.ceil(max_upload_mb))),
    ]


def stop(process: subprocess.Popen) -> int:
    """Ask the child to stop (SIGINT, like Ctrl-C), then insist; return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class TerminateRequested(Exception):
    """SIGTERM arrived (service manager, ``docker stop``)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise TerminateRequested


def run_ui(api_url: str, port: int, address: str = "127.0.0.1", max_upload_mb: float = 20.0) -> int:
    """Run the UI in the foreground until it exits, Ctrl-C (130) or SIGTERM (143).

    Either signal stops the Streamlit child before returning, so no server is left behind.
    """
    env = {**os.environ, "FIGSEARCH_API_URL": check_api_url(api_url)}
    print(f"figsearch UI on http://{address}:{port} (API {env['FIGSEARCH_API_URL']}); "
          "Ctrl-C stops it", flush=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell script's background job (`figsearch ui &`) starts with SIGINT ignored, and the
    # child would inherit that: handle it explicitly, so Ctrl-C / SIGINT always stops the UI
    # (a handled signal is reset to the default in the child at exec).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(streamlit_command(port, address, max_upload_mb), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        return 130
    except TerminateRequested:
        stop(process)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def command(args: argparse.Namespace) -> int:
    """Entry point of ``figsearch ui``."""
    settings = args.settings
    try:
        return run_ui(args.api or settings.api_url, args.port or settings.ui_port, args.address,
                      settings.max_upload_mb)
    except ValueError as exc:
        print(f"figsearch ui: {exc}", file=sys.stderr)
        return 2
