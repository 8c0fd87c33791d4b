"""Small ASGI middlewares: per-IP rate limiting (per process or shared by workers), request body
size limit, Prometheus metrics (per process or multiprocess) with per-stage timings."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from figsearch import timing

Scope = dict[str, Any]
ASGIApp = Any
#: Probes and scrapes are never rate limited.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class TokenBuckets:
    """One token bucket per key: ``per_minute`` capacity, refilled continuously."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return wait

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely (they behave like new ones)."""
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.rate >= self.capacity]
        for k in full:
            del self._buckets[k]


class SharedTokenBuckets(TokenBuckets):
    """Token buckets in a SQLite table that every worker process opens, so a client's budget
    holds across uvicorn workers (not ``workers x per_minute``). Each take is one short
    ``BEGIN IMMEDIATE`` transaction (WAL, no fsync: the buckets are throwaway state)."""

    def __init__(self, path: str | Path, per_minute: int, max_keys: int = 100_000) -> None:
        super().__init__(per_minute, max_keys)
        self.path = Path(path)
        self._local = threading.local()
        self._last_prune = 0.0
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS buckets("
            "key TEXT PRIMARY KEY, tokens REAL NOT NULL, last REAL NOT NULL)"
        )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            self._local.conn = conn
        return conn

    def take(self, key: str, now: float | None = None) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.time() if now is None else now  # wall clock: the same in every process
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT tokens, last FROM buckets WHERE key = ?", (key,)).fetchone()
            tokens, last = row if row else (self.capacity, now)
            tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            tokens -= 1.0 if tokens >= 1.0 else 0.0
            conn.execute("INSERT OR REPLACE INTO buckets(key, tokens, last) VALUES (?, ?, ?)",
                         (key, tokens, now))
            if now - self._last_prune > 60:
                self._last_prune = now
                conn.execute("DELETE FROM buckets WHERE tokens + (? - last) * ? >= ?",
                             (now, self.rate, self.capacity))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return wait


class RateLimitMiddleware:
    """429 with ``Retry-After`` once a client IP has used its per-minute budget.

    ``shared_path``: keep the buckets in that SQLite file (one budget across worker processes).
    """

    def __init__(self, app: ASGIApp, per_minute: int, shared_path: str | None = None) -> None:
        self.app = app
        self.buckets = (SharedTokenBuckets(shared_path, per_minute) if shared_path
                        else TokenBuckets(per_minute))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("unknown", 0)
        wait = self.buckets.take(str(client[0]))
        if wait > 0:
            await _send_json(
                send, 429,
                {"detail": f"rate limit of {int(self.buckets.capacity)} requests per minute "
                           f"exceeded; retry in {math.ceil(wait)} s"},
                {"Retry-After": str(math.ceil(wait))},
            )
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length up front, and by
    counting the streamed bytes (a client may lie or send chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> dict[str, str]:
        return {"detail": f"request body is over the {self.max_bytes / 2**20:g} MB limit"}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, self._message(), {"Connection": "close"})
            return
        state = {"seen": 0, "over": False, "started": False}

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Any) -> None:
            if state["over"]:
                return  # whatever the app answers after the overflow, the answer is 413
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if state["over"] and not state["started"]:
            await _send_json(send, 413, self._message(), {"Connection": "close"})


class Metrics:
    """Request counter and latency histogram by route template, in a private registry.

    With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set before they start, see
    ``figsearch serve``) each process writes its values to files there and
    :meth:`exposition_registry` reads all of them, so a scrape of any worker sees the sum.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.requests = Counter(
            "figsearch_http_requests_total", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "figsearch_http_request_duration_seconds", "Request latency by route",
            ["route", "method"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stages = Histogram(
            "figsearch_stage_duration_seconds",
            "Time per request stage (tokenise, encode, search, rerank, metadata, serialise...)",
            ["stage"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


    def exposition_registry(self) -> CollectorRegistry:
        """What ``/metrics`` renders: this process's registry, or all workers' files."""
        if not self.multiprocess_dir:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return registry


class MetricsMiddleware:
    """Counts and times every HTTP request; the route label is the path template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        stages, token = timing.begin()
        start = time.perf_counter()

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                if stages:  # only routes that did timed work say so
                    total = (time.perf_counter() - start) * 1000.0
                    value = timing.server_timing(stages, total).encode()
                    message = {**message,
                               "headers": [*message.get("headers", []), (b"server-timing", value)]}
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            timing.end(token)
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(label, method, str(status["code"])).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
            for name, ms in stages.items():
                self.metrics.stages.labels(name).observe(ms / 1000.0)
