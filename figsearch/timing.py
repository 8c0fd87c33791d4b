"""Per-request stage timings (tokenise, encode, search, rerank, metadata, collapse, serialise).

A request gets a fresh :class:`Stages` accumulator through :func:`begin` (the API's metrics
middleware does this); code on the request path wraps its work in ``with stage("search"):``.
The accumulator lives in a context variable, so it follows the request into the thread pool
(anyio copies the context) and costs nothing where no request is being timed (``stage`` is then
a no-op). Work done for a request on another thread (the batching encoder's worker) is timed
there and added with :func:`add`.

The API reports the stages as a ``Server-Timing`` header and in the Prometheus histogram
``figsearch_stage_duration_seconds{stage=...}``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar, Token

#: Stages in the order they happen on a query (others may be added; these come first).
STAGES = ("tokenise", "preprocess", "encode", "queue", "search", "rerank", "keyword", "metadata", "collapse", "highlight", "serialise")

Stages = dict[str, float]  # stage name -> milliseconds
_current: ContextVar[Stages | None] = ContextVar("figsearch_stages", default=None)


def begin() -> tuple[Stages, Token[Stages | None]]:
    """Start timing a request in this context; returns (accumulator, token for :func:`end`)."""
    acc: Stages = {}
    return acc, _current.set(acc)


def end(token: Token[Stages | None]) -> None:
    """Stop timing the request started with :func:`begin`."""
    _current.reset(token)


def current() -> Stages | None:
    """The accumulator of the request being timed in this context, or None."""
    return _current.get()


def add(name: str, ms: float) -> None:
    """Add ``ms`` to stage ``name`` of the current request (no-op outside one)."""
    acc = _current.get()
    if acc is not None:
        acc[name] = acc.get(name, 0.0) + ms


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of the current request (no-op outside one)."""
    acc = _current.get()
    if acc is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        acc[name] = acc.get(name, 0.0) + (time.perf_counter() - t0) * 1000.0


def server_timing(acc: Stages, total_ms: float | None = None) -> str:
    """The ``Server-Timing`` header value: ``search;dur=1.23, metadata;dur=0.40, ...``."""
    order = {name: i for i, name in enumerate(STAGES)}
    parts = [f"{name};dur={ms:.2f}"
             for name, ms in sorted(acc.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))]
    if total_ms is not None:
        parts.append(f"total;dur={total_ms:.2f}")
    return ", ".join(parts)


def parse_server_timing(value: str) -> Stages:
    """Inverse of :func:`server_timing` (for benches and tests)."""
    out: Stages = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";")
        if name and rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out
