"""Small loopback helpers shared by the demo, the benchmarks and the tests."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, process: subprocess.Popen | None = None, timeout: float = 60.0,
    interval: float = 0.2,
) -> None:
    """Poll ``url`` until it answers 200.

    Raises RuntimeError (with the process's piped output, if any) as soon as ``process`` exits,
    and TimeoutError naming the last answer when ``timeout`` runs out.
    """
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            if isinstance(out, bytes):
                out = out.decode(errors="replace")
            raise RuntimeError(
                f"server exited with {process.returncode} before {url} answered"
                + (f":\n{out}" if out else "")
            )
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")
