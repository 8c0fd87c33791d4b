"""``figsearch ui``: the launcher starts a real Streamlit server and Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from figsearch.cli import main
from tests.ui.servers import free_port, wait_for_http
from ui.launch import APP_PATH, check_api_url, streamlit_command


def test_streamlit_command_is_headless_without_usage_stats():
    cmd = streamlit_command(8765, "127.0.0.1", max_upload_mb=2.5)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP_PATH)
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags == {"--server.port": "8765", "--server.address": "127.0.0.1",
                     "--server.headless": "true", "--browser.gatherUsageStats": "false",
                     "--client.toolbarMode": "viewer", "--server.maxUploadSize": "3"}


def test_api_url_must_be_http():
    assert check_api_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="http"):
        check_api_url("127.0.0.1:8000")


def test_bad_api_url_is_a_clear_error(capsys):
    assert main(["ui", "--api", "ftp://example.org"]) == 2
    assert "--api must be an http(s) URL" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "background"),
                         [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False),
                          (signal.SIGINT, 130, True)],
                         ids=["ctrl-c", "sigterm", "sigint-to-a-background-job"])
def test_launcher_serves_the_app_and_stops_on_a_signal(tmp_path, signum, code, background):
    """``background``: started the way a script's ``figsearch ui &`` starts it, with SIGINT
    ignored (inherited across exec); SIGINT must still stop it and its Streamlit child."""
    port = free_port()
    env = {**os.environ, "FIGSEARCH_DATA_DIR": str(tmp_path)}

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    launcher = subprocess.Popen(
        [sys.executable, "-m", "figsearch.cli", "ui", "--api", "http://127.0.0.1:9",
         "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=ignore_sigint if background else None,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", timeout=90, process=launcher)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<div id=\"root\">" in page.text
        launcher.send_signal(signum)  # SIGINT: what Ctrl-C delivers to the launcher
        assert launcher.wait(timeout=30) == code
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = launcher.stdout.read() if launcher.stdout else ""
    assert f"figsearch UI on http://127.0.0.1:{port}" in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the Streamlit child went away with the launcher
        try:
            httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.2)
    pytest.fail("the Streamlit server still answers after the launcher stopped")
