"""The hot-reloadable search state: one loaded index version + model, swapped atomically.

:class:`AppState` holds a reference to a frozen :class:`Loaded` snapshot. A request takes the
snapshot once (``state.current``) and uses it to the end, so a swap never changes the index
under a request in flight: the old version stays alive until its last request drops it.

A reload loads the new version *fully* (FAISS index, ids, vectors, model, ``check_model``) before
assigning the new snapshot - a single reference assignment, atomic in CPython. A version that
fails to load is logged and remembered (``last_error``); the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figsearch.api.batching import (
    BatchingEncoder,
    model_thread,
    run_in_own_thread,
    stop_model_thread,
)
from figsearch.columns import VersionColumns
from figsearch.core.config import Settings
from figsearch.index import IndexLoadError, SearchIndex, current_version_dir, read_manifest
from figsearch.search import SearchService
from figsearch.store import FigureStore
from figsearch.version_data import versioned_store

log = logging.getLogger("figsearch.api")
#: queries encoded in one forward pass at most: the encoder is warmed up for batches up to
#: this size, and larger ones would meet unwarmed shapes (and wait longer for each other)
QUERY_BATCH = 32


@dataclass(frozen=True)
class Loaded:
    """One servable version: index + encoder + the service over them.

    ``index``/``encoder`` are None for a text-only version (keyword + caption search, e.g.
    while the demo's image model trains)."""

    version: str
    version_dir: Path
    index: SearchIndex | None
    encoder: Any
    service: SearchService
    loaded_at: float
    #: figure types present in this version (besides figsearch.figure_types.LABELS)
    figure_types: frozenset[str] = field(default_factory=frozenset)


class AppState:
    """Store, current snapshot and reload logic of one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: FigureStore | None = None
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self._failed: tuple[Path, float] | None = None  # (version dir, mtime) that failed
        self._reload_lock = threading.Lock()
        self._encoders: dict[str, Any] = {}
        self._caption_encoders: dict[str, Any] = {}
        self.reloads = 0

    # -- store ---------------------------------------------------------------------------
    @property
    def store(self) -> FigureStore | None:
        """The figure store, opened on first use (None while the database does not exist)."""
        if self._store is None and self.settings.db_path.exists():
            self._store = FigureStore(self.settings.db_path, create=False)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        for encoder in self._encoders.values():
            encoder.close()
        self._caption_encoders.clear()
        stop_model_thread()

    # -- reloading -----------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Load ``indexes/current`` if it changed (or ``force``); True when a swap happened.

        Raises :class:`IndexLoadError` / model errors when the new version cannot be served;
        the old snapshot stays in place then.
        """
        with self._reload_lock:
            target = current_version_dir(self.settings.indexes_dir)
            if target is None:
                raise IndexLoadError(f"no index in {self.settings.indexes_dir}; run `figsearch index`")
            old = self.current
            if not force and old is not None and old.version_dir == target:
                self.last_error, self._failed = None, None  # `current` points at what we serve
                return False
            try:
                # a thread of its own: the OpenMP team that loading and warming up a model
                # gives it ends with it (figsearch.api.batching says why that matters)
                loaded = run_in_own_thread(lambda: self._load(target))
            except Exception as exc:
                self.last_error = f"{target.name}: {exc}"
                self._failed = (target, _mtime(target))
                raise
            self.current = loaded  # the atomic swap
            self.last_error, self._failed = None, None
            self.reloads += 1
            self._drop_unused_encoders()
            log.info("serving index version %s (%d vectors; signals %s)", loaded.version,
                     loaded.index.ntotal if loaded.index else 0, loaded.service.signals())
            return True

    def poll_once(self) -> None:
        """One poll of ``indexes/current``: reload if it moved; errors are logged, not raised."""
        target = current_version_dir(self.settings.indexes_dir)
        if target is None:
            return
        if self.current is not None and self.current.version_dir == target:
            self.last_error, self._failed = None, None  # e.g. rolled back to the served version
            return
        if self._failed == (target, _mtime(target)):
            return  # already failed on this exact version; wait for a new one
        try:
            self.reload()
        except Exception as exc:  # keep serving the old version whatever went wrong
            log.error("cannot load index version %s: %s", target.name, exc)

    async def poll_forever(self) -> None:
        """Background task: poll every ``settings.reload_interval_s`` seconds."""
        while True:
            await asyncio.to_thread(self.poll_once)
            await asyncio.sleep(max(self.settings.reload_interval_s, 0.05))

    def _load(self, version_dir: Path) -> Loaded:
        store = self.store
        if store is None:
            raise IndexLoadError(f"no figure store at {self.settings.db_path}")
        index: SearchIndex | None = None
        encoder: Any = None
        manifest = read_manifest(version_dir)
        if manifest.get("kind") != "text":
            index = SearchIndex.load(version_dir, nprobe=self.settings.nprobe,
                                     mmap_index=self.settings.index_mmap)
            encoder = self._encoder_for(index)
            index.check_model(encoder.model_key, encoder.dim)
        # figure types (filter, facets, result fields) come from the version being loaded
        view = (versioned_store(store, version_dir, index.manifest, index.ids)
                if index is not None else store)
        captions = self._captions_for(version_dir)
        if encoder is not None or captions is not None:
            self._set_model_thread_torch_threads()
        from figsearch.keyword_index import KeywordIndex

        # filters from the version's columns (figsearch.columns) when it has them
        columns = VersionColumns.load(version_dir, store=view)
        service = SearchService(view, index, encoder, self.settings, captions=captions,
                                columns=columns, keywords=KeywordIndex.load(version_dir))
        types = frozenset(view.distinct_values("figure_type"))
        version = index.version if index else str(manifest["version"])
        return Loaded(version, version_dir, index, encoder, service, time.time(), types)

    def _captions_for(self, version_dir: Path) -> Any:
        """The version's caption signal (None without a caption index or caption model)."""
        from figsearch.caption_index import CaptionSignal, load_caption_index

        index = load_caption_index(version_dir, nprobe=self.settings.nprobe)
        spec = self.settings.caption_model or str((index.manifest if index else {}).get("model_spec") or "")
        if index is None or not spec:
            return None
        if self.settings.encoder_backend == "onnx":
            # the export is found by the key the caption index was built with
            spec = f"onnx:{index.manifest.get('model_key', '')}"
        if spec not in self._caption_encoders:
            encoder = self._new_caption_encoder(spec)
            self._caption_encoders[spec] = BatchingEncoder(
                encoder, max_batch=min(self.settings.batch_size, QUERY_BATCH),
                cache_size=self.settings.query_cache_size)
        return CaptionSignal(index, self._caption_encoders[spec])

    def _onnx_encoder(self, spec: str) -> Any:
        """The exported encoder an ``onnx:<model key>`` spec names."""
        from figsearch.onnx_encoder import load_onnx_encoder

        return load_onnx_encoder(onnx_root(self.settings), spec.removeprefix("onnx:"),
                                 threads=self.settings.torch_threads,
                                 batch_size=self.settings.batch_size)

    def _new_caption_encoder(self, spec: str) -> Any:
        if spec.startswith("onnx:"):
            return self._onnx_encoder(spec)
        from figsearch.caption_index import CaptionEncoder
        from figsearch.encoders import default_device

        return CaptionEncoder(spec, device=self.settings.device or default_device(),
                              batch_size=self.settings.batch_size)

    def _encoder_for(self, index: SearchIndex) -> Any:
        from figsearch.encoders import release_freed_memory

        spec = self._model_spec(index)
        if spec not in self._encoders:
            encoder = self._new_encoder(spec)
            max_batch = min(self.settings.batch_size, QUERY_BATCH)
            shapes = encoder.warm_up(max_rows=max_batch)
            log.info("%s warmed up (%d input shapes)", spec, shapes)
            release_freed_memory()
            self._encoders[spec] = BatchingEncoder(
                encoder, max_batch=max_batch,
                cache_size=self.settings.query_cache_size,
            )
        return self._encoders[spec]

    def _model_spec(self, index: SearchIndex) -> str:
        """The spec of the model serving ``index``: with the onnx backend, its export (found by
        the model key the index was built with), else the configured or recorded model."""
        if self.settings.encoder_backend == "onnx":
            return f"onnx:{index.manifest.get('model_key', '')}"
        from figsearch.datadir import resolve_path
        from figsearch.encoders import resolve_model_spec

        spec = self.settings.model or str(index.manifest.get("model_spec") or "")
        return resolve_path(spec, self.settings.data_dir) or resolve_model_spec(self.settings)

    def _new_encoder(self, spec: str) -> Any:
        settings = self.settings
        if spec.startswith("onnx:"):
            return self._onnx_encoder(spec)
        from figsearch.encoders import load_model, set_torch_threads

        set_torch_threads(settings.torch_threads)
        encoder = load_model(spec, device=settings.device or None,
                             batch_size=settings.batch_size, precision=settings.cpu_precision)
        if settings.quantize_text:
            from figsearch.encoders import quantize_text_tower

            n = quantize_text_tower(encoder)
            log.info("text tower of %s: %d Linear layers quantised to int8", spec, n)
        return encoder

    def _set_model_thread_torch_threads(self) -> None:
        """Apply ``settings.torch_threads`` on the model thread: an OpenMP thread count is a
        per-thread setting, and the models run there, not in the thread that loaded them."""
        from figsearch.encoders import set_torch_threads

        if self.settings.encoder_backend == "onnx":
            return  # ONNX Runtime's sessions carry their own thread count
        threads = self.settings.torch_threads
        model_thread().call(lambda: set_torch_threads(threads))

    def _drop_unused_encoders(self) -> None:
        live = self.current.encoder if self.current else None
        captions = self.current.service.captions if self.current else None
        live_caption = captions.encoder if captions is not None else None
        self._caption_encoders = {s: e for s, e in self._caption_encoders.items()
                                  if e is live_caption}
        for encoder in self._encoders.values():
            if encoder is not live:
                encoder.close()
        self._encoders = {s: e for s, e in self._encoders.items() if e is live}


def onnx_root(settings: Settings) -> Path:
    """Where ONNX exports live: ``settings.onnx_dir``, else ``<data dir>/models/onnx``."""
    from figsearch.datadir import resolve_path

    if settings.onnx_dir:
        return Path(resolve_path(settings.onnx_dir, settings.data_dir))
    return settings.models_dir / "onnx"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
