"""Micro-batching of model calls across concurrent requests, on the process's one model thread.

Requests run in a thread pool; each would otherwise call the model on its own, and on CPU
several concurrent torch calls just fight over the same cores. :class:`BatchingEncoder` queues
each query on the :class:`ModelThread`, which encodes everything waiting at that moment in a
single batch per model and kind (texts with texts, images with images), so under load one
forward pass serves many requests and at low load a query waits for nothing.

Why one thread for every model of the process (the CLIP towers and the caption encoder alike):
torch's OpenMP runtime gives every thread that runs a parallel operation its own team of
worker threads, kept until that thread exits. Once the process holds more OpenMP threads than
the machine has cores, GNU OpenMP stops spinning at its barriers and sleeps in the kernel
instead, and every operation of every team pays for the wake-ups: the ViT-B-16 text tower went
from 12-14 ms to 20-32 ms per query on 2 cores after eight pool threads had each converted one
float16 array with torch (``/tmp`` measurements in issue 15's note). So the API runs model
calls here only, loads models in a thread that ends (:func:`run_in_own_thread`), and converts
vectors without OpenMP (:func:`figsearch.index.as_float32`).

Stage times (:mod:`figsearch.timing`) measured on the model thread for a batch are handed back
to every request in it; the rest of a request's wait is reported as stage ``queue``. Text
queries first look in a bounded LRU cache of recent query embeddings (:class:`QueryCache`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np

from figsearch import timing

log = logging.getLogger("figsearch.api")
T = TypeVar("T")
#: A batch function: items in, one result row per item out (an array or a list).
BatchFn = Callable[[list[Any]], Any]
_Job = tuple[BatchFn | None, Any, "Future[Any]"]


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


class Pending:
    """A row queued on the :class:`ModelThread`, not yet waited for."""

    def __init__(self, future: Future[tuple[Any, timing.Stages]], queued_at: float) -> None:
        self._future = future
        self._queued_at = queued_at

    def result(self) -> Any:
        """The row (waiting for it); adds the batch's stage times, and the time the row took
        beyond them as ``queue``, to the calling request."""
        row, stages = self._future.result()
        waited = (time.perf_counter() - self._queued_at) * 1000.0
        for name, ms in stages.items():
            timing.add(name, ms)
        timing.add("queue", max(0.0, waited - sum(stages.values())))
        return row


class ModelThread:
    """One thread that runs batch functions on what callers queue, batching equal functions.

    :meth:`submit` queues one item for a batch function and waits for its row; the thread takes
    everything waiting (up to ``max_batch`` items per function), calls each function once on
    its items and hands every caller its own row (or the function's exception).
    """

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="figsearch-model", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, fn: BatchFn, item: Any) -> Any:
        """``fn([item, ...])``'s row for ``item``, computed on this thread with other callers'
        items for the same ``fn``; adds the batch's stage times to the caller's request."""
        return self.start(fn, item).result()

    def start(self, fn: BatchFn, item: Any) -> Pending:
        """Queue ``item`` for ``fn`` and return at once: the caller does other work (a keyword
        search) while this thread encodes, then takes the row with :meth:`Pending.result`."""
        future: Future[tuple[Any, timing.Stages]] = Future()
        pending = Pending(future, time.perf_counter())
        self._queue.put((fn, item, future))
        return pending

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on this thread (alone, never batched)."""
        return self.submit(lambda items: [fn() for _ in items], None)  # type: ignore[no-any-return]

    def stop(self, timeout: float = 60.0) -> None:
        """Serve what is queued, then end the thread and wait for it.

        Waiting matters at exit: a daemon thread still freeing tensors while the interpreter
        shuts down is killed inside torch's C++ code ("terminate called without an active
        exception", SIGABRT).
        """
        self._queue.put((None, None, Future()))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._drain()
            groups: dict[BatchFn, list[tuple[Any, Future[Any]]]] = {}
            for fn, item, future in batch:
                if fn is not None:
                    groups.setdefault(fn, []).append((item, future))
            for fn, group in groups.items():
                _run_group(fn, group)
            if any(fn is None for fn, _, _ in batch):
                self._serve_stragglers()
                return

    def _drain(self) -> list[_Job]:
        batch = [self._queue.get()]  # block for the first, then take what is already waiting
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _serve_stragglers(self) -> None:
        """Serve anything queued between ``stop`` and the thread ending."""
        while True:
            try:
                fn, item, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if fn is not None:
                _run_group(fn, [(item, future)])


def _run_group(fn: BatchFn, group: list[tuple[Any, Future[Any]]]) -> None:
    stages, token = timing.begin()
    try:
        rows = fn([item for item, _ in group])
    except Exception as exc:  # hand the error to every waiting caller
        for _, future in group:
            future.set_exception(exc)
        return
    finally:
        timing.end(token)
    for row, (_, future) in zip(rows, group, strict=True):
        future.set_result((row, dict(stages)))


_model_thread: ModelThread | None = None
_model_thread_lock = threading.Lock()


def model_thread() -> ModelThread:
    """The process's model thread (started on first use, and again after :func:`stop_model_thread`)."""
    global _model_thread
    with _model_thread_lock:
        if _model_thread is None or not _model_thread.alive:
            _model_thread = ModelThread()
        return _model_thread


def stop_model_thread() -> None:
    """End the model thread after what is queued (at shutdown); a later call starts a new one."""
    global _model_thread
    with _model_thread_lock:
        worker, _model_thread = _model_thread, None
    if worker is not None:
        worker.stop()


def run_in_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread that ends afterwards, so the OpenMP team torch gives that thread
    (loading and warming up a model runs parallel operations) ends with it."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name="figsearch-load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


class BatchingEncoder:
    """Wraps an encoder; ``encode_texts`` / ``encode_images`` run batched on the model thread."""

    def __init__(self, encoder: Any, max_batch: int = 32, cache_size: int = 0) -> None:
        self.encoder = encoder
        self.cache = QueryCache(cache_size)
        self.model_key: str = encoder.model_key
        self.dim: int = encoder.dim
        self.spec = getattr(encoder, "spec", "")
        self.max_batch = max_batch
        # the same bound methods every call: the model thread batches equal functions together
        self._texts: BatchFn = self._text_batch
        self._images: BatchFn = self._image_batch

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.start_text(t)() for t in texts])

    def start_text(self, text: str) -> Callable[[], np.ndarray]:
        """Start encoding one text on the model thread; the returned call waits for its row
        (at once when the query cache holds it)."""
        hit = self.cache.get(text)
        if hit is not None:
            timing.add("cache", 0.0)  # says "served from the cache" in Server-Timing
            return lambda: hit
        pending = model_thread().start(self._texts, text)

        def row() -> np.ndarray:
            vector: np.ndarray = pending.result()
            self.cache.put(text, vector)
            return vector

        return row

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return np.stack([model_thread().submit(self._images, im) for im in images])

    def _text_batch(self, texts: list[str]) -> np.ndarray:
        return self._in_chunks(self.encoder.encode_texts, texts)

    def _image_batch(self, images: list[Any]) -> np.ndarray:
        return self._in_chunks(self.encoder.encode_images, images)

    def _in_chunks(self, fn: Callable[[list[Any]], Any], items: list[Any]) -> np.ndarray:
        # the model was warmed up for batches of up to max_batch: larger ones would meet
        # unwarmed shapes
        chunks = [np.asarray(fn(items[i:i + self.max_batch]), dtype=np.float32)
                  for i in range(0, len(items), self.max_batch)]
        return np.concatenate(chunks)

    def close(self) -> None:
        """Nothing to release: queued calls finish on the model thread, later ones still work
        (a request may hold an old snapshot while the state swaps versions)."""
