"""``figsearch index``: embed every figure, classify figure types, build and swap an index.

Steps: embed (cached by image hash + model key, resumable shards, torchrun-aware) ->
zero-shot figure types (:func:`figsearch.figure_types.classify`) -> new index version
(:func:`indexer.build.build_version`) -> ``indexes/current`` switched atomically. The whole
run holds ``indexes/.lock`` so two builds never overlap.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.build import BuildLockedError, StageHook, activate_version, build_version, index_lock
from indexer.embed import DistInfo, EmbedConfig, Embedded, run_embedding

CLASSIFY_CHUNK = 100_000


@dataclass
class IndexReport:
    """What one index run produced."""

    version_dir: Path
    count: int
    unreadable: int
    embed_line: str
    factory: str
    elapsed_s: float

    def line(self) -> str:
        rate = self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"index: version {self.version_dir.name}: {self.count} figures indexed "
            f"({self.unreadable} unreadable skipped), factory {self.factory}; "
            f"{self.elapsed_s:.1f} s, {rate:.1f} figures/s"
        )


def work_dir_for(settings: Settings, model_key: str) -> Path:
    """Embedding shards of one model live here until the index is built."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_key)[:80]
    return settings.data_dir / "work" / f"embed-{safe}"


def load_encoder(settings: Settings, model_spec: str | None) -> tuple[str, Any]:
    """(spec, Encoder) for ``model_spec`` or the settings' default model."""
    from figsearch.encoders import load_model, resolve_model_spec

    spec = model_spec or resolve_model_spec(settings)
    return spec, load_model(spec, device=settings.device or None, batch_size=settings.batch_size)


def classify_figures(store: FigureStore, encoder: Any, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Zero-shot figure types for every embedded figure, stored in the figure table."""
    from figsearch.figure_types import classify

    for start in range(0, len(ids), CLASSIFY_CHUNK):
        chunk = np.asarray(vectors[start : start + CLASSIFY_CHUNK], np.float32)
        labels = classify(encoder, chunk)
        store.set_figure_types(
            (int(i), label, score)
            for i, (label, score) in zip(ids[start : start + CLASSIFY_CHUNK], labels, strict=True)
        )


def indexable_count(store: FigureStore) -> int:
    """Figures with images of non-retracted articles: what an index should hold (+ unreadable)."""
    with store.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM figures f JOIN articles a ON a.id = f.article_id "
            "WHERE f.has_image = 1 AND a.retracted = 0"
        )).scalar() or 0)


def embed_store(settings: Settings, store: FigureStore, encoder: Any,
                progress: bool = True) -> Embedded | None:
    """Run the embedding stage for the store (None on torchrun ranks other than 0)."""
    cfg = EmbedConfig(
        work_dir=work_dir_for(settings, encoder.model_key), images_dir=settings.images_dir,
        batch_size=settings.batch_size, num_workers=settings.num_workers,
        max_pixels=settings.max_image_pixels, progress=progress,
    )
    return run_embedding(store, encoder, cfg)


def build_from_store(
    settings: Settings, store: FigureStore, spec: str, encoder: Any, *, factory: str | None = None,
    activate: bool = True, hook: StageHook | None = None, progress: bool = True,
) -> IndexReport | None:
    """Embed + classify + build one version (the caller holds the lock on rank 0)."""
    start = time.perf_counter()
    embedded = embed_store(settings, store, encoder, progress)
    if embedded is None:
        return None
    print(embedded.summary.line(), file=sys.stderr)
    if len(embedded.ids) == 0:
        raise RuntimeError(
            f"no figure images to index in {settings.db_path} "
            f"({len(embedded.failures)} unreadable); run `figsearch ingest` first"
        )
    classify_figures(store, encoder, embedded.ids, embedded.vectors)
    version = build_version(
        settings.indexes_dir, embedded.vectors, embedded.ids, model_spec=spec,
        model_key=encoder.model_key, factory=factory, memory_gb=settings.index_memory_gb,
        keep=settings.index_keep_versions, hook=hook, activate=activate,
        use_gpu=settings.index_gpu_training,
        extra={"unreadable": len(embedded.failures), "indexable": indexable_count(store)},
    )
    shutil.rmtree(work_dir_for(settings, encoder.model_key), ignore_errors=True)
    return IndexReport(version, len(embedded.ids), len(embedded.failures),
                       embedded.summary.line(), _factory_of(version), time.perf_counter() - start)


def _factory_of(version_dir: Path) -> str:
    from figsearch.index import read_manifest

    return str(read_manifest(version_dir)["factory"])


def index_all(settings: Settings, model_spec: str | None = None, *, encoder: Any = None,
              factory: str | None = None, hook: StageHook | None = None,
              progress: bool = True) -> IndexReport | None:
    """Embed all stored figures and build + activate a new index version."""
    spec, encoder = (model_spec or encoder.spec, encoder) if encoder else load_encoder(settings, model_spec)
    store = FigureStore(settings.db_path, create=False)
    try:
        if DistInfo.from_env().rank != 0:
            return build_from_store(settings, store, spec, encoder, factory=factory, progress=progress)
        with index_lock(settings.indexes_dir):
            return build_from_store(settings, store, spec, encoder, factory=factory, hook=hook,
                                    progress=progress)
    finally:
        store.close()


__all__ = ["IndexReport", "index_all", "build_from_store", "activate_version", "indexable_count"]


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch index [--model SPEC] [--factory STR]``."""
    parser.add_argument("--model", help="model spec (default: $FIGSEARCH_MODEL, else figclip-mini "
                                        "in <data-dir>/models, else BiomedCLIP)")
    parser.add_argument("--factory", help="faiss factory string (default: the size/memory rule)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--gpu-training", choices=["auto", "on", "off"],
                        help="coarse k-means on the GPU (default: $FIGSEARCH_INDEX_GPU_TRAINING, auto)")


def command(args: argparse.Namespace) -> int:
    """Build a new index version; 1 with a clear message when it cannot."""
    from figsearch.encoders import ModelLoadError

    settings: Settings = args.settings
    if not settings.db_path.is_file():
        print(f"figsearch index: no figure store at {settings.db_path}; run `figsearch ingest` "
              "first", file=sys.stderr)
        return 1
    if getattr(args, "gpu_training", None):
        settings = settings.model_copy(update={"index_gpu_training": args.gpu_training})
    try:
        from indexer.gpu import resolve_training_device

        resolve_training_device(settings.index_gpu_training)  # fail before hours of embedding
        report = index_all(settings, args.model, factory=args.factory,
                           progress=not args.no_progress)
    except (BuildLockedError, ModelLoadError, RuntimeError, ValueError) as exc:
        print(f"figsearch index: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a full disk: `current` is untouched, say so
        print(f"figsearch index: {exc}; the current index is unchanged", file=sys.stderr)
        return 1
    if report is not None:
        print(report.line())
    return 0
