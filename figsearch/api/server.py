"""``figsearch serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from figsearch.core.config import Settings

#: Probe routes polled by the demo, load balancers and orchestrators: their answers are not
#: logged one line per poll (any other request, and every error of theirs, still is).
PROBE_PATHS = ("/readyz", "/healthz")


class QuietProbes(logging.Filter):
    """Drop uvicorn access lines of probe polls answered 200 or 503 ("not ready yet")."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:
            path, status = str(args[2]).split("?", 1)[0], args[4]
            if path in PROBE_PATHS and status in (200, 503):
                return False
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging config plus :class:`QuietProbes` on the access log (every worker)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["quiet_probes"] = {"()": f"{__name__}.QuietProbes"}
    config["handlers"]["access"].setdefault("filters", []).append("quiet_probes")
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default: settings.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: settings.port)")
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn worker processes (default: settings.workers)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")


def load_first(settings: Settings) -> Any:
    """An AppState that already serves ``indexes/current`` (or waits for one when there is none).

    Raises what loading raised - a model that cannot load, an index that cannot be read - so
    that ``serve`` stops with that message instead of answering 503 for ever.
    """
    from figsearch.api.state import AppState
    from figsearch.index import current_version_dir

    state = AppState(settings)
    if current_version_dir(settings.indexes_dir) is not None:
        try:
            state.reload()
        except BaseException:
            state.close()
            raise
    return state


def _check_servable(settings: Settings) -> str | None:
    """Load ``indexes/current`` and its model once; None when that worked, else the reason."""
    try:
        load_first(settings).close()
    except Exception as exc:  # noqa: BLE001 - any reason not to serve is reported the same way
        return str(exc) or type(exc).__name__
    return None


def check_in_child(settings: Settings) -> str | None:
    """:func:`_check_servable` in a fresh (spawned) process: the supervisor of several workers
    then never imports torch or holds a model (about 1 GB it would keep while it only watches
    the workers, each of which loads its own copy)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_check_servable, settings).result()


def _cannot_serve(settings: Settings, reason: str) -> int:
    print(f"figsearch serve: cannot serve the index in {settings.indexes_dir}: {reason}",
          file=sys.stderr)
    return 1


def prepare_run_dir(settings: Settings, workers: int) -> Path | None:
    """With several workers: the directory they share (``settings.run_dir`` or a fresh temporary
    one), emptied of a previous run's metric files and rate-limit table, and announced to the
    workers through ``FIGSEARCH_RUN_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` (which
    prometheus-client reads when a worker starts). None for one worker."""
    if workers <= 1:
        return None
    run_dir = Path(settings.run_dir or tempfile.mkdtemp(prefix="figsearch-run-")).resolve()
    metrics_dir = run_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    for stale in run_dir.glob("ratelimit.sqlite*"):
        stale.unlink()
    os.environ["FIGSEARCH_RUN_DIR"] = str(run_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return run_dir


def command(args: argparse.Namespace) -> int:
    """Serve until interrupted. Workers each load the index (memory-mapped, so the page cache
    holds one copy) and reload it independently; metrics and the rate limit are shared.

    The current index and its model are loaded before the port opens; when they cannot be,
    the command exits with status 1 and the reason.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from figsearch.api.main import create_app

    settings: Settings = args.settings
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    # workers read settings from the environment; this process loads the model first
    os.environ["FIGSEARCH_TORCH_THREADS"] = str(threads)
    settings = settings.model_copy(update={"torch_threads": threads})
    if workers == 1:
        try:
            state = load_first(settings)
        except Exception as exc:  # noqa: BLE001 - any reason not to serve is reported the same way
            return _cannot_serve(settings, str(exc))
    else:
        problem = check_in_child(settings)
        if problem is not None:
            return _cannot_serve(settings, problem)
    run_dir = prepare_run_dir(settings, workers)
    if run_dir is not None:
        print(f"workers share {run_dir} (metrics, rate limit)")
    print(f"figsearch API on http://{host}:{port} (data {settings.data_dir}, {workers} worker(s))")
    options: dict[str, Any] = {"host": host, "port": port, "log_level": args.log_level,
                               "proxy_headers": True, "log_config": log_config(),
                               "timeout_keep_alive": settings.keep_alive_s}
    if workers == 1:
        uvicorn.run(create_app(settings, state=state), **options)
        return 0
    # Worker processes rebuild settings from the environment: pass the data dir that way.
    os.environ["FIGSEARCH_DATA_DIR"] = str(settings.data_dir)
    config = uvicorn.Config("figsearch.api.main:app_from_env", factory=True, workers=workers,
                            **options)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[tcp_listener(config)]).run()
    return 0


def tcp_listener(config: Any) -> socket.socket:
    """``config.bind_socket()`` with its protocol set to TCP, for uvicorn's worker supervisor.

    uvicorn binds the workers' shared socket with ``proto`` 0; accepted connections inherit it,
    and asyncio sets ``TCP_NODELAY`` only on sockets whose ``proto`` is ``IPPROTO_TCP``. Without
    it every keep-alive response (headers and body are two writes) waited for the client's
    delayed ACK: 40 ms more per request with ``--workers 2`` than with one (uvicorn issue #3149).
    """
    sock = config.bind_socket()
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    tcp.set_inheritable(True)
    return tcp
