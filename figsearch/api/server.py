"""``figsearch serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from figsearch.core.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default: settings.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: settings.port)")
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn worker processes (default: settings.workers)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")


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
    holds one copy) and reload it independently; metrics and the rate limit are shared."""
    import uvicorn

    settings: Settings = args.settings
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    # Worker processes rebuild settings from the environment: pass the data dir that way.
    os.environ["FIGSEARCH_DATA_DIR"] = str(settings.data_dir.resolve())
    run_dir = prepare_run_dir(settings, workers)
    if run_dir is not None:
        print(f"workers share {run_dir} (metrics, rate limit)")
    print(f"figsearch API on http://{host}:{port} (data {settings.data_dir}, {workers} worker(s))")
    uvicorn.run(
        "figsearch.api.main:app_from_env", factory=True, host=host, port=port,
        workers=workers, log_level=args.log_level, proxy_headers=True,
    )
    return 0
