"""Micro-batching of model calls across concurrent requests.

Requests run in a thread pool; each would otherwise call the model on its own, and on CPU
several concurrent torch calls just fight over the same cores. :class:`BatchingEncoder` queues
each query and one worker thread encodes everything waiting at that moment in a single batch
(texts with texts, images with images), so under load one forward pass serves many requests
and at low load a query waits for nothing.

Stage times (:mod:`figsearch.timing`) measured on the worker for a batch are handed back to
every request in it; the rest of a request's wait is reported as stage ``queue``. Text queries
first look in a bounded LRU cache of recent query embeddings (:class:`QueryCache`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

import numpy as np

from figsearch import timing

log = logging.getLogger("figsearch.api")


class QueryCache:
    """A bounded, thread-safe LRU of query text -> embedding (``size`` 0 disables it).

    Popular queries repeat; a hit skips tokenising, the queue and the model entirely.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self.hits = self.misses = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        if not self.size:
            return None
        with self._lock:
            row = self._items.get(key)
            if row is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return row

    def put(self, key: str, row: np.ndarray) -> None:
        if not self.size:
            return
        row = np.array(row, dtype=np.float32)  # a private, read-only copy
        row.setflags(write=False)
        with self._lock:
            self._items[key] = row
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class BatchingEncoder:
    """Wraps an Encoder; ``encode_texts`` / ``encode_images`` are batched across threads."""

    def __init__(self, encoder: Any, max_batch: int = 32, cache_size: int = 0) -> None:
        self.encoder = encoder
        self.cache = QueryCache(cache_size)
        self.model_key: str = encoder.model_key
        self.dim: int = encoder.dim
        self.spec = getattr(encoder, "spec", "")
        self.max_batch = max_batch
        self._closed = False
        self._queue: queue.Queue[tuple[str, Any, Future[Any]]] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="encoder-batcher", daemon=True)
        self._worker.start()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._text(t) for t in texts])

    def _text(self, text: str) -> np.ndarray:
        hit = self.cache.get(text)
        if hit is not None:
            timing.add("cache", 0.0)  # says "served from the cache" in Server-Timing
            return hit
        row = self._submit("text", text)
        self.cache.put(text, row)
        return row

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return np.stack([self._submit("image", im) for im in images])

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker after what is queued and wait for it; later calls encode directly.

        Waiting matters at exit: a daemon thread still freeing tensors while the interpreter
        shuts down is killed inside torch's C++ code ("terminate called without an active
        exception", SIGABRT).
        """
        self._closed = True
        self._queue.put(("stop", None, Future()))
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def _submit(self, kind: str, item: Any) -> np.ndarray:
        if self._closed:  # a request still holding an old snapshot: no batching, no hang
            fn = self.encoder.encode_texts if kind == "text" else self.encoder.encode_images
            return np.asarray(fn([item]), dtype=np.float32)[0]
        future: Future[tuple[np.ndarray, timing.Stages]] = Future()
        t0 = time.perf_counter()
        self._queue.put((kind, item, future))
        row, stages = future.result()
        waited = (time.perf_counter() - t0) * 1000.0
        for name, ms in stages.items():
            timing.add(name, ms)
        timing.add("queue", max(0.0, waited - sum(stages.values())))
        return row

    def _drain(self) -> list[tuple[str, Any, Future[Any]]]:
        batch = [self._queue.get()]  # block for the first, then take what is already waiting
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._drain()
            for kind in ("text", "image"):
                group = [(item, fut) for k, item, fut in batch if k == kind]
                if group:
                    self._encode_group(kind, group)
            if any(k == "stop" for k, _, _ in batch):
                self._flush_after_stop()
                return

    def _flush_after_stop(self) -> None:
        """Serve anything that slipped in between ``close`` and the worker stopping."""
        while True:
            try:
                kind, item, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind != "stop":
                self._encode_group(kind, [(item, fut)])

    def _encode_group(self, kind: str, group: list[tuple[Any, Future[Any]]]) -> None:
        items = [item for item, _ in group]
        stages, token = timing.begin()
        try:
            fn = self.encoder.encode_texts if kind == "text" else self.encoder.encode_images
            vectors = np.asarray(fn(items), dtype=np.float32)
        except Exception as exc:  # hand the error to every waiting request
            for _, fut in group:
                fut.set_exception(exc)
            return
        finally:
            timing.end(token)
        for row, (_, fut) in zip(vectors, group, strict=True):
            fut.set_result((row, dict(stages)))
