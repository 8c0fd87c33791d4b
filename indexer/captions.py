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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from tqdm import tqdm

from figsearch.caption_index import (
    CAPTIONS_DIR,
    PASSAGE_SLOTS,
    PASSAGES_DIR,
    CaptionCache,
    caption_passages,
    caption_text,
    passage_key,
    text_hash,
)
from figsearch.core.config import Settings
from figsearch.datadir import version_name
from figsearch.index import (
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    caption_budget,
    choose_factory,
    read_manifest,
)
from figsearch.store import FigureStore
from indexer.delta import TEXT_SHA_FILE, IndexDelta, delta_allowed, row_file_names

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
    #: (n, 16) :func:`text_sha` of the rows (None: not written, the next build is a full one)
    sha: np.ndarray | None = None
    passage_sha: np.ndarray | None = None
    #: when the store was read (:func:`store_time`): the next delta re-reads only the articles
    #: ingested since (minus :data:`SINCE_MARGIN`)
    read_at: str | None = None
    passages_limit: int | None = None  # settings.caption_passages of the read


def model_file_name(model_key: str) -> str:
    """A model key as a file-name part (the caches and work dirs named after a model): runs of
    anything but letters, digits, ``_``, ``.`` and ``-`` become ``_``, at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_key)[:80]


def cache_path(settings: Settings, model_key: str) -> Path:
    """The caption-vector cache of one caption encoder."""
    return settings.data_dir / "cache" / f"captions-{model_file_name(model_key)}.sqlite"


def caption_rows(store: FigureStore, passages: int = 0, since: str | None = None
                 ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(figure id, text to embed) of every captioned figure of a non-retracted article, and
    (passage key, text) of up to ``passages`` passages of each long caption. With ``since``
    (a stored ``articles.ingested_at`` value), only the figures of articles ingested then or
    later: every change of an article's text goes through ``upsert_article``, which stamps it."""
    whole: list[tuple[int, str]] = []
    parts: list[tuple[int, str]] = []
    last = 0
    newer = "AND a.ingested_at >= :since" if since is not None else ""
    with store.engine.connect() as conn:
        while True:
            rows = conn.execute(text(
                "SELECT f.id, f.label, f.caption, a.title FROM figures f "
                "JOIN articles a ON a.id = f.article_id WHERE f.id > :last AND a.retracted = 0 "
                f"{newer} ORDER BY f.id LIMIT :n"),
                {"last": last, "n": READ_CHUNK, "since": since}).all()
            if not rows:
                return whole, parts
            for fid, label, caption, title in rows:
                if (caption or "").strip() or (title or "").strip():
                    whole.append((int(fid), caption_text(label, caption, title)))
                    parts.extend((passage_key(int(fid), n), t) for n, t in enumerate(
                        caption_passages(label, caption, title, passages), 1))
            last = int(rows[-1][0])


def live_figure_ids(store: FigureStore, since: str | None = None) -> np.ndarray:
    """Sorted ids of every figure of a non-retracted article (ids only: cheap at 15 M), or
    with ``since`` those of articles ingested then or later."""
    newer = "AND a.ingested_at >= :since" if since is not None else ""
    with store.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
            f"WHERE a.retracted = 0 {newer} ORDER BY f.id"), {"since": since})
        return np.fromiter((r[0] for r in rows), np.int64)


#: How far before the previous build's store read the next delta looks again (clock steps,
#: a transaction committed with an earlier stamp): re-reading too much only costs hashing.
SINCE_MARGIN = timedelta(hours=1)


def store_time(when: datetime) -> str:
    """A UTC time as the store keeps ``ingested_at`` (SQLAlchemy's SQLite DateTime text)."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def text_sha(hashes: list[str]) -> np.ndarray:
    """(n, 16) uint8: the first 16 bytes of each caption-cache key, kept per row of a caption
    index (``text_sha.npy``) so the next delta build sees which texts changed."""
    if not hashes:
        return np.zeros((0, 16), np.uint8)
    return np.frombuffer(bytes.fromhex("".join(h[:32] for h in hashes)),
                         np.uint8).reshape(-1, 16).copy()


def encode_cached(settings: Settings, encoder: Any, rows: list[tuple[int, str]],
                  progress: bool = True, chunk: int = 1024,
                  desc: str = "caption embed",
                  hashes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, vectors, how many were encoded): cached vectors where the text is unchanged, the
    rest encoded and cached. ``hashes``: the rows' :func:`text_hash` when already known."""
    if hashes is None:
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
    read_at = store_time(datetime.now(timezone.utc))
    whole, parts = caption_rows(store, settings.caption_passages)
    hashes = [text_hash(encoder.model_key, t) for _, t in whole]
    p_hashes = [text_hash(encoder.model_key, t) for _, t in parts]
    ids, vectors, encoded = encode_cached(settings, encoder, whole, progress, chunk,
                                          hashes=hashes)
    p_ids, p_vectors, p_encoded = encode_cached(settings, encoder, parts, progress, chunk,
                                                desc="passage embed", hashes=p_hashes)
    n_texts = len(whole) + len(parts)
    report = CaptionReport(len(whole), encoded + p_encoded, n_texts - encoded - p_encoded,
                           time.perf_counter() - start, len(parts))
    return CaptionVectors(ids, vectors, p_ids, p_vectors, report, text_sha(hashes),
                          text_sha(p_hashes), read_at, settings.caption_passages)


def write_caption_index(version_dir: Path, built: CaptionVectors, encoder: Any,
                        memory_gb: float = 16.0) -> dict[str, Any]:
    """Write ``<version_dir>/captions/`` (SearchIndex format) and, when there are passages,
    ``captions/passages/``; returns the manifest summary."""
    sub = Path(version_dir) / CAPTIONS_DIR
    whole_gb, passages_gb = caption_budgets(len(built.ids), len(built.passage_ids), memory_gb)
    read = {"store_read_at": built.read_at, "passages_limit": built.passages_limit}
    n = _write_vectors(sub, version_dir, built.ids, built.vectors, encoder, whole_gb,
                       built.sha, read)
    summary = {"model_spec": encoder.spec, "model_key": encoder.model_key, "count": n,
               "dim": int(encoder.dim), "passages": len(built.passage_ids)}
    if len(built.passage_ids):
        _write_vectors(sub / PASSAGES_DIR, version_dir, built.passage_ids, built.passage_vectors,
                       encoder, passages_gb, built.passage_sha, read)
    return summary


def caption_budgets(n_whole: int, n_passages: int, memory_gb: float) -> tuple[float, float]:
    """The caption indexes' part of a version's memory budget ``memory_gb``
    (:func:`~figsearch.index.caption_budget`) split between whole captions and passages in
    proportion to their counts, so passages (several per long caption) never multiply the
    version's RAM beyond ``index_memory_gb``: at scale they take smaller PQ codes."""
    captions_gb = caption_budget(memory_gb)
    total = n_whole + n_passages
    if total == 0 or n_passages == 0:
        return captions_gb, 0.0
    return captions_gb * n_whole / total, captions_gb * n_passages / total


def _write_vectors(sub: Path, version_dir: Path, ids: np.ndarray, vectors: np.ndarray,
                   encoder: Any, memory_gb: float, sha: np.ndarray | None = None,
                   extra: dict[str, Any] | None = None, model_spec: str | None = None) -> int:
    """One SearchIndex directory of ``ids`` and ``vectors`` (with the rows' text hashes
    ``sha`` when given, and ``extra`` in its manifest; ``model_spec`` instead of the
    encoder's, e.g. a data-dir-relative one); returns the count."""
    from indexer.build import _checksums, _validate_inputs, write_version_files

    sub.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    if sha is not None and len(sha) == len(ids):
        np.save(sub / TEXT_SHA_FILE, np.asarray(sha)[np.argsort(np.asarray(ids, np.int64),
                                                                kind="stable")])
        rows.append(TEXT_SHA_FILE)
    vectors16, ids = _validate_inputs(np.asarray(vectors, np.float32), np.asarray(ids))
    n, dim = len(ids), int(encoder.dim)
    factory = choose_factory(max(n, 1), dim, memory_gb)
    if n == 0:  # an empty flat index is still a valid, searchable index
        vectors16 = np.zeros((0, dim), np.float16)
    write_version_files(sub, vectors16, ids, factory, None, None)  # faiss CPU training
    manifest = {
        # written inside the version's temporary .building-<version> dir, named as it will be
        "version": version_name(version_dir),
        "model_spec": model_spec or encoder.spec, "model_key": encoder.model_key,
        "dim": dim, "count": n, "factory": factory, "metric": "inner_product",
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checksums": _checksums(sub, [INDEX_FILE, IDS_FILE, VECTORS_FILE, *rows]),
        **(extra or {}),
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


# -- the delta path (indexer.delta) ------------------------------------------------------------
@dataclass
class CaptionDelta:
    """A caption-index change against a previous version: one :class:`IndexDelta` per
    SearchIndex directory (``captions/`` and, when there are passages, ``captions/passages/``),
    the figures that left the caption index and those whose caption text is new or changed."""

    deltas: dict[str, Any]  # sub-directory ("captions", "captions/passages") -> IndexDelta
    removed_ids: np.ndarray
    upserted_ids: np.ndarray
    report: CaptionReport
    read: dict[str, Any]  # store_read_at, passages_limit: for the new manifests
    reread: int | str = "all"  # captions read and hashed again ("all": no store_read_at)


def _text_delta(prev_sub: Path, rows: list[tuple[int, str]], hashes: list[str],
                scope: tuple[np.ndarray, np.ndarray] | None, slots: int
                ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(ids to remove, ids to add, positions in ``rows`` to add) of one caption directory whose
    rows carry ``text_sha.npy``. ``scope`` = (figures re-read, figures still live): previous
    rows of other live figures stay as they are (None: ``rows`` hold every figure). ``slots``:
    rows per figure id (passage keys are ``figure id * PASSAGE_SLOTS + n``)."""
    prev_ids = np.load(prev_sub / IDS_FILE)
    prev_sha = np.ascontiguousarray(np.load(prev_sub / TEXT_SHA_FILE)).view("S16").ravel()
    ids = np.asarray([key for key, _ in rows], np.int64)
    sha = text_sha(hashes).view("S16").ravel()
    same = np.zeros(len(ids), bool)
    if len(prev_ids):
        pos = np.searchsorted(prev_ids, ids).clip(0, len(prev_ids) - 1)
        same = (prev_ids[pos] == ids) & (prev_sha[pos] == sha)
    considered = prev_ids
    if scope is not None:
        reread, live = scope
        figures = prev_ids // slots
        considered = prev_ids[np.isin(figures, reread) | ~np.isin(figures, live)]
    remove = np.setdiff1d(considered, ids[same], assume_unique=True)
    todo = np.flatnonzero(~same)
    return remove, ids[todo], todo.tolist()


def plan_caption_delta(settings: Settings, store: FigureStore, encoder: Any, prev_dir: Path,
                       progress: bool = True, chunk: int = 1024) -> CaptionDelta | str:
    """The caption delta against ``prev_dir`` with only new and changed texts encoded (or taken
    from the cache), or why a full caption build is needed instead (a string).

    When the previous caption index says when it read the store, only the articles ingested
    since (less :data:`SINCE_MARGIN`) are read and hashed again, and the ids of the live
    figures tell which previous rows left; otherwise every caption is read and hashed."""
    start = time.perf_counter()
    sub = Path(prev_dir) / CAPTIONS_DIR
    if not (sub / MANIFEST_FILE).is_file():
        return "the previous version has no caption index"
    prev = read_manifest(sub)
    read_at = store_time(datetime.now(timezone.utc))
    scope: tuple[np.ndarray, np.ndarray] | None = None
    since = None
    if prev.get("store_read_at") and prev.get("passages_limit") == settings.caption_passages:
        since = store_time(datetime.strptime(str(prev["store_read_at"]), "%Y-%m-%d %H:%M:%S.%f")
                           .replace(tzinfo=timezone.utc) - SINCE_MARGIN)
        scope = (live_figure_ids(store, since), live_figure_ids(store))
    whole, parts = caption_rows(store, settings.caption_passages, since)
    subs = {CAPTIONS_DIR: whole}
    if (sub / PASSAGES_DIR / MANIFEST_FILE).is_file():
        if scope is None and not parts:
            return "no caption has passages any more"
        subs[f"{CAPTIONS_DIR}/{PASSAGES_DIR}"] = parts
    elif parts:
        return "captions with passages appeared"
    planned = {}
    for name, rows in subs.items():
        manifest = read_manifest(Path(prev_dir) / name)
        if row_file_names(manifest) != [TEXT_SHA_FILE]:
            return f"{name} of the previous version keeps no text hashes"
        hashes = [text_hash(encoder.model_key, t) for _, t in rows]
        slots = 1 if name == CAPTIONS_DIR else PASSAGE_SLOTS
        remove, add, todo = _text_delta(Path(prev_dir) / name, rows, hashes, scope, slots)
        count = int(manifest["count"]) - len(remove) + len(add)
        planned[name] = (manifest, rows, hashes, remove, add, todo, count)
    counts = [p[-1] for p in planned.values()]
    budgets = caption_budgets(counts[0], counts[1] if len(counts) > 1 else 0,
                              settings.index_memory_gb)
    for (name, (manifest, _r, _h, remove, add, _t, count)), budget in zip(
            planned.items(), budgets, strict=False):
        why = delta_allowed(manifest, len(np.union1d(remove, add)), model_key=encoder.model_key,
                            dim=int(encoder.dim),
                            factory=choose_factory(max(count, 1), int(encoder.dim), budget))
        if why:
            return f"{name}: {why}"
    deltas: dict[str, Any] = {}
    encoded = cached = 0
    for name, (_m, rows, hashes, remove, _a, todo, _c) in planned.items():
        sel_hashes = [hashes[i] for i in todo]
        ids, vectors, n_enc = encode_cached(settings, encoder, [rows[i] for i in todo], progress,
                                            chunk, desc=f"{name} embed", hashes=sel_hashes)
        encoded, cached = encoded + n_enc, cached + len(todo) - n_enc
        deltas[name] = IndexDelta(remove, ids, vectors, {TEXT_SHA_FILE: text_sha(sel_hashes)})
    whole_delta = deltas[CAPTIONS_DIR]
    removed = np.setdiff1d(whole_delta.remove_ids, whole_delta.add_ids)
    upserted = whole_delta.add_ids
    if len(deltas) > 1:
        p = deltas[f"{CAPTIONS_DIR}/{PASSAGES_DIR}"]
        touched = np.union1d(p.add_ids, p.remove_ids) // PASSAGE_SLOTS
        upserted = np.union1d(upserted, np.setdiff1d(touched, removed))
    report = CaptionReport(counts[0], encoded, cached, time.perf_counter() - start,
                           counts[1] if len(counts) > 1 else 0)
    return CaptionDelta(deltas, removed, upserted, report,
                        {"store_read_at": read_at, "passages_limit": settings.caption_passages},
                        "all" if scope is None else len(whole))


def caption_delta_stage(settings: Settings, store: FigureStore, encoder: Any | None,
                        prev_dir: Path, progress: bool = True
                        ) -> tuple[Callable[[Path], dict[str, Any]] | None, CaptionDelta | None]:
    """(a build step writing the caption index of a delta version, the caption delta or None
    when the step rebuilds the caption index in full). Texts are encoded when the step is made,
    as in :func:`caption_stage`."""
    if encoder is None:
        return None, None
    planned = plan_caption_delta(settings, store, encoder, prev_dir, progress)
    if isinstance(planned, str):
        print(f"captions: full build ({planned})", file=sys.stderr)
        return caption_stage(settings, store, encoder, progress), None
    print(planned.report.line() + " (delta)", file=sys.stderr)
    plan = planned

    def write(version_dir: Path) -> dict[str, Any]:
        from indexer.delta import apply_index_delta, write_sub_manifest

        version = version_name(version_dir)
        counts = {}
        for name, delta in plan.deltas.items():
            target = Path(version_dir) / name
            target.mkdir(parents=True, exist_ok=True)
            result = apply_index_delta(Path(prev_dir) / name, target, delta)
            write_sub_manifest(Path(prev_dir) / name, target, result, version, **plan.read)
            counts[name] = result
        whole = counts[CAPTIONS_DIR]
        passages = counts.get(f"{CAPTIONS_DIR}/{PASSAGES_DIR}")
        return {"captions": {
            "model_spec": encoder.spec, "model_key": encoder.model_key, "count": whole["count"],
            "dim": int(encoder.dim), "passages": passages["count"] if passages else 0,
            "reread": plan.reread,
            "delta": {name: {k: r[k] for k in ("removed", "added", "stages_s")}
                      for name, r in counts.items()}}}

    return write, plan
