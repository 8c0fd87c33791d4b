"""One way to open an index version for searching: the API, ``figsearch search``, ``figsearch
eval`` and the benches all go through :class:`VersionLoader`.

A version is full (image index + model) or text-only (``figsearch index --text-only``: keyword and
caption search, e.g. while the demo's image model trains). Loading one gives a :class:`Loaded`
snapshot: the store seen through the version (its figure types), the image index and the model
that built it, the caption index and its sentence encoder, the filter columns and the keyword
index, and the :class:`~figsearch.search.SearchService` over them. A signal the version lacks is
left out, and the service says which one and how to build it when a mode needs it.

Encoders are cached by spec across loads (a hot reload to a version of the same model reuses the
loaded model); :meth:`VersionLoader.drop_unused` releases the others once a new version serves.
With ``batching`` (the API) encoders run behind a :class:`~figsearch.api.batching.BatchingEncoder`
on the model thread, warmed up for every batch shape; the CLI uses the same encoders, wrapped the
same way, so a query ranks exactly as the API ranks it.

Which runtime encodes queries is ``settings.encoder_backend``: ``auto`` (the default) serves a
model on ONNX Runtime when its checked export exists (``figsearch index`` writes it, or
``figsearch export-onnx``) and with torch otherwise, saying why in the log; ``torch`` and
``onnx`` force one (``onnx`` without an export is an error that says how to make one).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figsearch.api.batching import BatchingEncoder, model_thread, stop_model_thread
from figsearch.columns import VersionColumns
from figsearch.core.config import Settings
from figsearch.encoders.spec import ModelLoadError
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
    #: what encodes the image model's queries, ``torch`` or ``onnx`` (None without one)
    encoder_backend: str | None = None
    #: filters prepared at load: the UI's license toggles and those the version served before
    #: it answered last (:meth:`figsearch.search.SearchService.prepare_filters`)
    prepared_filters: int = 0


def one_blas_thread() -> None:
    """Have numpy's BLAS run on the calling thread alone, for the rest of the process.

    A served query's matrix products are small (the page's near-duplicate check multiplies
    some 40 x 512 rows by their transpose), yet OpenBLAS splits even those over every core, and
    its idle threads then spin for a while. Five such products 50 ms apart kept a core busy
    the whole time on the 2-core machine (249 ms of CPU in 250 ms), 21 ms with one thread: CPU
    the next queries' keyword searches and encodings need."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class VersionLoader:
    """Opens versions into :class:`Loaded` snapshots; owns the encoders they use.

    ``load_models=False`` opens the indexes without any model (keyword search, and the stored
    vectors for near-duplicate collapse): dense, image and caption search are then unavailable.
    ``warm_up=False`` skips running every batch shape once (a one-query CLI run needs none).
    """

    def __init__(self, settings: Settings, *, load_models: bool = True,
                 warm_up: bool = True) -> None:
        self.settings = settings
        self.load_models = load_models
        self.warm_up = warm_up
        one_blas_thread()
        self._encoders: dict[str, Any] = {}
        self._caption_encoders: dict[str, Any] = {}
        #: "image model"/"caption model" -> why its ONNX export is not used (for the error
        #: an install without torch gives)
        self._why_torch: dict[str, str] = {}

    def close(self) -> None:
        """Stop every encoder's worker thread (left running at exit, torch aborts)."""
        for encoder in [*self._encoders.values(), *self._caption_encoders.values()]:
            encoder.close()
        self._encoders.clear()
        self._caption_encoders.clear()

    def load(self, version_dir: Path, store: FigureStore) -> Loaded:
        """Open ``version_dir`` over ``store``, every part checked before anything is served."""
        index: SearchIndex | None = None
        encoder: Any = None
        backend: str | None = None
        manifest = read_manifest(version_dir)
        if manifest.get("kind") != "text":
            index = SearchIndex.load(version_dir, nprobe=self.settings.nprobe,
                                     mmap_index=self.settings.index_mmap)
            if self.load_models:
                encoder, backend = self._encoder_for(index)
                index.check_model(encoder.model_key, encoder.dim)
        # figure types (filter, facets, result fields) come from the version being loaded
        view = (versioned_store(store, version_dir, index.manifest, index.ids)
                if index is not None else store)
        captions, caption_backend = (self._captions_for(version_dir) if self.load_models
                                     else (None, None))
        if "torch" in (backend, caption_backend):
            self._set_model_thread_torch_threads()
        if encoder is not None and captions is not None:
            _share_text_trunk(encoder, captions.encoder)
        from figsearch.keyword_index import KeywordIndex

        # filters from the version's columns (figsearch.columns) when it has them
        columns = VersionColumns.load(version_dir, store=view)
        from figsearch.panel_index import load_panel_index
        from figsearch.source_match import word_index

        service = SearchService(view, index, encoder, self.settings, captions=captions,
                                columns=columns, keywords=KeywordIndex.load(version_dir),
                                text_only=manifest.get("kind") == "text",
                                panels=load_panel_index(index, version_dir, self.settings.nprobe,
                                                        self.settings.index_mmap),
                                visual_words=word_index(version_dir) if index is not None
                                else None)
        types = frozenset(view.distinct_values("figure_type"))
        version = index.version if index else str(manifest["version"])
        return Loaded(version, version_dir, index, encoder, service, time.time(), types,
                      encoder_backend=backend)

    def drop_unused(self, live: Loaded | None, *pinned: Loaded) -> None:
        """Release the encoders that neither ``live`` (the snapshot now served) nor the
        ``pinned`` snapshots (older versions kept open for ``version=`` searches) use."""
        snapshots = [s for s in (live, *pinned) if s is not None]
        encoders = [s.encoder for s in snapshots if s.encoder is not None]
        captions = [s.service.captions.encoder for s in snapshots
                    if s.service.captions is not None]
        for spec, cached in list(self._caption_encoders.items()):
            if not any(cached is used for used in captions):
                del self._caption_encoders[spec]
        for spec, cached in list(self._encoders.items()):
            if not any(cached is used for used in encoders):
                cached.close()
                del self._encoders[spec]

    def backend_for(self, model_key: str, what: str) -> str:
        """``torch`` or ``onnx`` for the model ``model_key`` (``what`` names it in the log):
        the setting, or with ``auto`` onnx when a checked export of that model exists."""
        chosen = self.settings.encoder_backend
        if chosen != "auto":
            return chosen
        from figsearch.onnx_encoder import checked_export

        try:
            checked_export(onnx_root(self.settings), model_key)
        except ModelLoadError as exc:
            self._why_torch[what] = str(exc)
            log.warning("%s %s: encoding queries with torch, not ONNX Runtime: %s", what,
                        model_key, exc)
            return "torch"
        return "onnx"

    def _captions_for(self, version_dir: Path) -> tuple[Any, str | None]:
        """The version's caption signal and the backend encoding its queries ((None, None)
        without a caption index or caption model)."""
        from figsearch.caption_index import CaptionSignal, load_caption_index

        index: Any = load_caption_index(version_dir, nprobe=self.settings.nprobe,
                                        mmap_index=self.settings.index_mmap)
        spec = self.settings.caption_model or str((index.manifest if index else {}).get("model_spec") or "")
        if index is None or not spec:
            return None, None
        # the export is found by the key the caption index was built with
        key = str(index.manifest.get("model_key", ""))
        backend = self.backend_for(key, "caption model")
        if backend == "onnx":
            spec = f"onnx:{key}"
        if spec not in self._caption_encoders:
            encoder = self._new_caption_encoder(spec)
            self._caption_encoders[spec] = BatchingEncoder(
                encoder, max_batch=min(self.settings.batch_size, QUERY_BATCH),
                cache_size=self.settings.query_cache_size)
        from figsearch.panel_index import PanelIndex, load_subcaptions

        subcaptions = load_subcaptions(version_dir, self.settings.nprobe, self.settings.index_mmap)
        if subcaptions is not None and self.settings.panel_caption_maxp:
            index = PanelIndex(index, subcaptions)
        return CaptionSignal(index, self._caption_encoders[spec], subcaptions), backend

    def _onnx_encoder(self, spec: str) -> Any:
        """The exported encoder an ``onnx:<model key>`` spec names."""
        from figsearch.encoders import load_encoder

        return load_encoder(spec.removeprefix("onnx:"), "onnx", onnx_root=onnx_root(self.settings),
                            threads=self.settings.torch_threads,
                            batch_size=self.settings.batch_size)

    def _new_caption_encoder(self, spec: str) -> Any:
        if spec.startswith("onnx:"):
            return self._onnx_encoder(spec)
        self._need_torch(spec, "caption model")
        from figsearch.caption_index import CaptionEncoder
        from figsearch.encoders import default_device

        return CaptionEncoder(spec, device=self.settings.device or default_device(),
                              batch_size=self.settings.batch_size)

    def _need_torch(self, spec: str, what: str) -> None:
        """A clear error when the torch backend is wanted in an install without torch (the
        ``serve`` extra): why the model has no usable export, and how to get one."""
        if importlib.util.find_spec("torch") is not None:
            return
        why = self._why_torch.get(what, f"FIGSEARCH_ENCODER_BACKEND={self.settings.encoder_backend}")
        raise ModelLoadError(
            f"{spec}: torch is not installed (the `serve` extra runs exported models only) and "
            f"the ONNX export cannot be used: {why}. Build the index with figsearch[index] "
            "installed (the build exports the model), or run `figsearch export-onnx` there.")

    def _encoder_for(self, index: SearchIndex) -> tuple[Any, str]:
        """The (cached) encoder of the model that built ``index``, and its backend."""
        from figsearch.encoders import release_freed_memory

        spec = self._model_spec(index)
        if spec not in self._encoders:
            encoder = self._new_encoder(spec)
            max_batch = min(self.settings.batch_size, QUERY_BATCH)
            if self.warm_up:
                shapes = encoder.warm_up(max_rows=max_batch)
                log.info("%s warmed up (%d input shapes)", spec, shapes)
                release_freed_memory()
            self._encoders[spec] = BatchingEncoder(
                encoder, max_batch=max_batch,
                cache_size=self.settings.query_cache_size,
            )
        return self._encoders[spec], "onnx" if spec.startswith("onnx:") else "torch"

    def _model_spec(self, index: SearchIndex) -> str:
        """The spec of the model serving ``index``: with the onnx backend, its export (found by
        the model key the index was built with), else the configured or recorded model."""
        key = str(index.manifest.get("model_key", ""))
        if self.backend_for(key, "image model") == "onnx":
            return f"onnx:{key}"
        from figsearch.datadir import resolve_path
        from figsearch.encoders import resolve_model_spec

        spec = self.settings.model or str(index.manifest.get("model_spec") or "")
        return resolve_path(spec, self.settings.data_dir) or resolve_model_spec(self.settings)

    def _new_encoder(self, spec: str) -> Any:
        settings = self.settings
        if spec.startswith("onnx:"):
            return self._onnx_encoder(spec)
        self._need_torch(spec, "image model")
        from figsearch.encoders import load_encoder, set_torch_threads

        set_torch_threads(settings.torch_threads)
        encoder = load_encoder(spec, "torch", device=settings.device or None,
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

        threads = self.settings.torch_threads
        model_thread().call(lambda: set_torch_threads(threads))


def onnx_root(settings: Settings) -> Path:
    """Where ONNX exports live: ``settings.onnx_dir``, else ``<data dir>/models/onnx``."""
    from figsearch.datadir import resolve_path

    if settings.onnx_dir:
        return Path(resolve_path(settings.onnx_dir, settings.data_dir))
    return settings.models_dir / "onnx"


@dataclass
class Opened:
    """``indexes/current`` opened outside the API (CLI, evaluation, benches): close when done."""

    loader: VersionLoader
    store: FigureStore
    loaded: Loaded

    @property
    def service(self) -> SearchService:
        return self.loaded.service

    def close(self) -> None:
        self.loader.close()
        self.store.close()
        stop_model_thread()


def open_current(settings: Settings, *, load_models: bool = True, warm_up: bool = False
                 ) -> Opened:
    """The current version of ``settings.data_dir``, opened exactly as the API opens it."""
    version_dir = current_version_dir(settings.indexes_dir)
    if version_dir is None:
        raise IndexLoadError(f"no index in {settings.indexes_dir}; run `figsearch index` first")
    if not settings.db_path.exists():
        raise IndexLoadError(f"no figure store at {settings.db_path}; run `figsearch ingest`")
    loader = VersionLoader(settings, load_models=load_models, warm_up=warm_up)
    store = FigureStore(settings.db_path, create=False)
    try:
        return Opened(loader, store, loader.load(version_dir, store))
    except BaseException:
        loader.close()
        store.close()
        raise


def _share_text_trunk(encoder: Any, caption_encoder: Any) -> None:
    """Let the image model's text queries reuse the caption model's tower when both exports
    say they are one trunk (:meth:`figsearch.onnx_encoder.OnnxEncoder.share_trunk_with`)."""
    dense, caption = getattr(encoder, "encoder", None), getattr(caption_encoder, "encoder", None)
    share = getattr(dense, "share_trunk_with", None)
    if share is None or not hasattr(caption, "share_trunk_with"):
        return
    if share(caption):
        log.info("%s: text queries run the caption model's trunk (%s) once, then its "
                 "projection", getattr(dense, "model_key", ""), getattr(caption, "model_key", ""))
