"""Build the caption-semantics index of an index version (see :mod:`figsearch.caption_index`).

Every captioned figure of a non-retracted article (with or without an image) is embedded as
``label. caption (from: title)`` by the caption encoder; vectors come from the
:class:`~figsearch.caption_index.CaptionCache` when that exact text was encoded before, so a
nightly rebuild only encodes new or changed captions. The vectors are written next to the image
index, in ``<version>/captions/``, by the same writer as the image index.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from tqdm import tqdm

from figsearch.caption_index import (
    CAPTIONS_DIR,
    PASSAGES_DIR,
    CaptionCache,
    caption_passages,
    caption_text,
    passage_key,
    text_hash,
)
from figsearch.core.config import Settings
from figsearch.index import IDS_FILE, INDEX_FILE, MANIFEST_FILE, VECTORS_FILE, choose_factory
from figsearch.store import FigureStore

READ_CHUNK = 5_000


@dataclass
class CaptionReport:
    """What one caption-index build did."""

    count: int
    encoded: int
    cached: int
    seconds: float
    passages: int = 0

    def line(self) -> str:
        rate = self.encoded / self.seconds if self.seconds > 0 else 0.0
        return (f"captions: {self.count} figures in the caption index, {self.passages} passages "
                f"({self.encoded} texts encoded, {self.cached} from cache); {self.seconds:.1f} s, "
                f"{rate:.1f} texts/s encoded")


@dataclass
class CaptionVectors:
    """The whole-caption vectors (one per figure) and the passage vectors (keyed by
    :func:`~figsearch.caption_index.passage_key`) of a build."""

    ids: np.ndarray
    vectors: np.ndarray
    passage_ids: np.ndarray
    passage_vectors: np.ndarray
    report: CaptionReport


def cache_path(settings: Settings, model_key: str) -> Path:
    """The caption-vector cache of one caption encoder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_key)[:80]
    return settings.data_dir / "cache" / f"captions-{safe}.sqlite"


def caption_rows(store: FigureStore, passages: int = 0
                 ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(figure id, text to embed) of every captioned figure of a non-retracted article, and
    (passage key, text) of up to ``passages`` passages of each long caption."""
    whole: list[tuple[int, str]] = []
    parts: list[tuple[int, str]] = []
    last = 0
    with store.engine.connect() as conn:
        while True:
            rows = conn.execute(text(
                "SELECT f.id, f.label, f.caption, a.title FROM figures f "
                "JOIN articles a ON a.id = f.article_id WHERE f.id > :last AND a.retracted = 0 "
                "ORDER BY f.id LIMIT :n"), {"last": last, "n": READ_CHUNK}).all()
            if not rows:
                return whole, parts
            for fid, label, caption, title in rows:
                if (caption or "").strip() or (title or "").strip():
                    whole.append((int(fid), caption_text(label, caption, title)))
                    parts.extend((passage_key(int(fid), n), t) for n, t in enumerate(
                        caption_passages(label, caption, title, passages), 1))
            last = int(rows[-1][0])


def encode_cached(settings: Settings, encoder: Any, rows: list[tuple[int, str]],
                  progress: bool = True, chunk: int = 1024,
                  desc: str = "caption embed") -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, vectors, how many were encoded): cached vectors where the text is unchanged, the
    rest encoded and cached."""
    hashes = [text_hash(encoder.model_key, t) for _, t in rows]
    cache = CaptionCache(cache_path(settings, encoder.model_key))
    try:
        found = cache.get_many(hashes)
        todo = [i for i, h in enumerate(hashes) if h not in found]
        with tqdm(total=len(todo), desc=desc, unit="text",
                  disable=not progress or not todo) as bar:
            for s in range(0, len(todo), chunk):
                part = todo[s : s + chunk]
                vecs = encoder.encode_texts([rows[i][1] for i in part])
                items = [(hashes[i], v) for i, v in zip(part, vecs, strict=True)]
                cache.put_many(items)
                # as the cache holds them (float16), so cached and fresh runs agree bit for bit
                found.update({h: np.asarray(v, np.float16).astype(np.float32) for h, v in items})
                bar.update(len(part))
    finally:
        cache.close()
    ids = np.asarray([key for key, _ in rows], np.int64)
    vectors = (np.stack([found[h] for h in hashes]) if rows
               else np.zeros((0, encoder.dim), np.float32))
    return ids, vectors, len(todo)


def embed_captions(settings: Settings, store: FigureStore, encoder: Any, progress: bool = True,
                   chunk: int = 1024) -> CaptionVectors:
    """Whole-caption and passage vectors (``settings.caption_passages`` per figure at most)."""
    start = time.perf_counter()
    whole, parts = caption_rows(store, settings.caption_passages)
    ids, vectors, encoded = encode_cached(settings, encoder, whole, progress, chunk)
    p_ids, p_vectors, p_encoded = encode_cached(settings, encoder, parts, progress, chunk,
                                                desc="passage embed")
    n_texts = len(whole) + len(parts)
    report = CaptionReport(len(whole), encoded + p_encoded, n_texts - encoded - p_encoded,
                           time.perf_counter() - start, len(parts))
    return CaptionVectors(ids, vectors, p_ids, p_vectors, report)


def write_caption_index(version_dir: Path, built: CaptionVectors, encoder: Any,
                        memory_gb: float = 16.0) -> dict[str, Any]:
    """Write ``<version_dir>/captions/`` (SearchIndex format) and, when there are passages,
    ``captions/passages/``; returns the manifest summary."""
    sub = Path(version_dir) / CAPTIONS_DIR
    whole_gb, passages_gb = caption_budgets(len(built.ids), len(built.passage_ids), memory_gb)
    n = _write_vectors(sub, version_dir, built.ids, built.vectors, encoder, whole_gb)
    summary = {"model_spec": encoder.spec, "model_key": encoder.model_key, "count": n,
               "dim": int(encoder.dim), "passages": len(built.passage_ids)}
    if len(built.passage_ids):
        _write_vectors(sub / PASSAGES_DIR, version_dir, built.passage_ids, built.passage_vectors,
                       encoder, passages_gb)
    return summary


def caption_budgets(n_whole: int, n_passages: int, memory_gb: float) -> tuple[float, float]:
    """The caption index's memory budget split between whole captions and passages in
    proportion to their counts, so passages (several per long caption) never multiply the
    caption index's RAM beyond ``index_memory_gb``: at scale they take smaller PQ codes."""
    total = n_whole + n_passages
    if total == 0 or n_passages == 0:
        return memory_gb, 0.0
    return memory_gb * n_whole / total, memory_gb * n_passages / total


def _write_vectors(sub: Path, version_dir: Path, ids: np.ndarray, vectors: np.ndarray,
                   encoder: Any, memory_gb: float) -> int:
    """One SearchIndex directory of ``ids`` and ``vectors``; returns the count."""
    from indexer.build import BUILDING_PREFIX, _checksums, _validate_inputs, write_version_files

    sub.mkdir(parents=True, exist_ok=True)
    vectors16, ids = _validate_inputs(np.asarray(vectors, np.float32), np.asarray(ids))
    n, dim = len(ids), int(encoder.dim)
    factory = choose_factory(max(n, 1), dim, memory_gb)
    if n == 0:  # an empty flat index is still a valid, searchable index
        vectors16 = np.zeros((0, dim), np.float16)
    write_version_files(sub, vectors16, ids, factory, None, None)  # faiss CPU training
    manifest = {
        # written inside the version's temporary .building-<version> dir, named as it will be
        "version": Path(version_dir).name.removeprefix(BUILDING_PREFIX),
        "model_spec": encoder.spec, "model_key": encoder.model_key,
        "dim": dim, "count": n, "factory": factory, "metric": "inner_product",
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checksums": _checksums(sub, [INDEX_FILE, IDS_FILE, VECTORS_FILE]),
    }
    (sub / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return n


def caption_stage(settings: Settings, store: FigureStore, encoder: Any | None,
                  progress: bool = True) -> Callable[[Path], dict[str, Any]] | None:
    """A build step writing the caption index into a version directory (None: no encoder).

    The captions are embedded when the step is created (before the image index is written), so
    an encoding failure leaves no half-built version behind.
    """
    if encoder is None:
        return None
    built = embed_captions(settings, store, encoder, progress)
    print(built.report.line(), file=sys.stderr)

    def write(version_dir: Path) -> dict[str, Any]:
        return {"captions": write_caption_index(version_dir, built, encoder,
                                                settings.index_memory_gb)}

    return write


def load_caption_encoder(settings: Settings) -> Any | None:
    """The configured caption encoder, or None when ``caption_model`` is empty."""
    if not settings.caption_model:
        return None
    from figsearch.caption_index import CaptionEncoder
    from figsearch.encoders import default_device

    return CaptionEncoder(settings.caption_model, device=settings.device or default_device(),
                          batch_size=settings.batch_size)
