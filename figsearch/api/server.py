"""``figsearch serve``: run the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import os

from figsearch.core.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default: settings.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: settings.port)")
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn worker processes (default: settings.workers)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")


def command(args: argparse.Namespace) -> int:
    """Serve until interrupted. Workers each load the index and reload it independently."""
    import uvicorn

    settings: Settings = args.settings
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    # Worker processes rebuild settings from the environment: pass the data dir that way.
    os.environ["FIGSEARCH_DATA_DIR"] = str(settings.data_dir.resolve())
    print(f"figsearch API on http://{host}:{port} (data {settings.data_dir}, {workers} worker(s))")
    uvicorn.run(
        "figsearch.api.main:app_from_env", factory=True, host=host, port=port,
        workers=workers, log_level=args.log_level, proxy_headers=True,
    )
    return 0
