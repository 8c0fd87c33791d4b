"""Micro-batching of model calls across concurrent requests.

Requests run in a thread pool; each would otherwise call the model on its own, and on CPU
several concurrent torch calls just fight over the same cores. :class:`BatchingEncoder` queues
each query and one worker thread encodes everything waiting at that moment in a single batch
(texts with texts, images with images), so under load one forward pass serves many requests
and at low load a query waits for nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger("figsearch.api")


class BatchingEncoder:
    """Wraps an Encoder; ``encode_texts`` / ``encode_images`` are batched across threads."""

    def __init__(self, encoder: Any, max_batch: int = 32) -> None:
        self.encoder = encoder
        self.model_key: str = encoder.model_key
        self.dim: int = encoder.dim
        self.spec = getattr(encoder, "spec", "")
        self.max_batch = max_batch
        self._closed = False
        self._queue: queue.Queue[tuple[str, Any, Future[np.ndarray]]] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="encoder-batcher", daemon=True)
        self._worker.start()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._submit("text", t) for t in texts])

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return np.stack([self._submit("image", im) for im in images])

    def close(self) -> None:
        """Stop the worker after what is queued; later calls encode directly."""
        self._closed = True
        self._queue.put(("stop", None, Future()))

    def _submit(self, kind: str, item: Any) -> np.ndarray:
        if self._closed:  # a request still holding an old snapshot: no batching, no hang
            fn = self.encoder.encode_texts if kind == "text" else self.encoder.encode_images
            return np.asarray(fn([item]), dtype=np.float32)[0]
        future: Future[np.ndarray] = Future()
        self._queue.put((kind, item, future))
        return future.result()

    def _drain(self) -> list[tuple[str, Any, Future[np.ndarray]]]:
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

    def _encode_group(self, kind: str, group: list[tuple[Any, Future[np.ndarray]]]) -> None:
        items = [item for item, _ in group]
        try:
            fn = self.encoder.encode_texts if kind == "text" else self.encoder.encode_images
            vectors = np.asarray(fn(items), dtype=np.float32)
        except Exception as exc:  # hand the error to every waiting request
            for _, fut in group:
                fut.set_exception(exc)
            return
        for row, (_, fut) in zip(vectors, group, strict=True):
            fut.set_result(row)
