"""The panels step of ``figsearch index``: compound figures split into panels, once per image.

For each distinct stored image (by sha256) without a ``figure_panels`` row of the current
detector version, :func:`figsearch.panels.detect_panels` runs with the panel count its caption
names (:func:`figsearch.panels.split_caption`), so a figure whose caption names no panels stays
one panel. Boxes go into the store in batches (a killed run resumes where it stopped); a rerun
reads only new images, and an image shared by several articles is read once. An unreadable image
gets a row with its error (not retried); it is not also reported in ``ingest_errors``, where the
embed step of the same build already reports every unreadable image once. Sub-captions are not
stored: :meth:`figsearch.store.FigureStore.figure_panels` aligns the boxes with each figure's
own caption when asked (cheap: the caption splitter takes well under a millisecond).

Cost: ~5 ms for an image whose caption names no panels, ~70-120 ms for a compound one (18
threshold sets tried), on one CPU core, measured by ``bench/panels_eval.py``.

:func:`panel_stage` then embeds the panels of every compound figure for the version being
built (:mod:`figsearch.panel_index`): each crop by the image model into ``<version>/panels/``
and each panel's own sub-caption by the caption encoder into ``<version>/captions/panels/``.
Crop vectors are cached by model key + image hash + box (:func:`crop_hash`), sub-caption vectors
by text (the caption cache), so a rebuild only embeds new panels; the small panel indexes are
written anew from the caches in every version, full or delta build.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from tqdm import tqdm

from figsearch.caption_index import CAPTIONS_DIR, CaptionCache, caption_text
from figsearch.core.config import Settings
from figsearch.datadir import portable_path
from figsearch.imaging import ImageError, open_image, safe_image_path
from figsearch.panel_index import PANEL_SLOTS, PANELS_DIR, own_subcaption, panel_key
from figsearch.panels import Panel, align, detect_panels, split_caption
from figsearch.store import FigureStore, parse_boxes

#: Detector version stored with each row; changing it makes the next run recompute all rows.
ALGO = "xycut-2"
BATCH = 64


@dataclass
class PanelsSummary:
    """What one run did."""

    images: int = 0
    compound: int = 0
    panels: int = 0
    failed: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        """One line for the log."""
        return (f"panels: {self.images} images split ({self.compound} compound, {self.panels} "
                f"panels, {self.failed} unreadable skipped) in {self.elapsed_s:.1f} s")


def expected_panels(caption: str) -> int:
    """How many panels a caption names: its distinct panel letters, 1 when none."""
    return max(1, len({c for s in split_caption(caption) for c in s.letters}))


def _one(images_dir: Path, rel: str, caption: str, max_pixels: int
         ) -> tuple[int, list[tuple[int, int, int, int]], str | None]:
    """(expected, boxes, error) for one stored image."""
    expected = expected_panels(caption)
    try:
        image = open_image(safe_image_path(images_dir, rel).read_bytes(), max_pixels=max_pixels)
    except (ImageError, OSError) as exc:
        return expected, [], f"unreadable image: {exc}"
    return expected, [p.box for p in detect_panels(image, expected=expected)], None


def run_panels(store: FigureStore, images_dir: Path, *, max_pixels: int = 90_000_000,
               limit: int | None = None, batch: int = BATCH) -> PanelsSummary:
    """Split every stored image that has no panels row of :data:`ALGO` yet; ``limit`` caps
    how many images are read now (the rest waits for the next run)."""
    start = time.perf_counter()
    summary = PanelsSummary()
    left = None if limit is None else max(0, int(limit))
    for rows in store.iter_panels_pending(ALGO, batch):
        if left is not None:
            rows = rows[:left]
            left -= len(rows)
        if not rows:
            break
        results = []
        for sha, rel, caption in rows:
            expected, boxes, error = _one(Path(images_dir), rel, caption, max_pixels)
            results.append((sha, expected, boxes, ALGO, error))
            summary.images += 1
            summary.panels += len(boxes)
            summary.compound += len(boxes) > 1
            summary.failed += error is not None
        store.put_panels(results)
        if left == 0:
            break
    summary.elapsed_s = time.perf_counter() - start
    return summary


def panels_step(settings: Settings, store: FigureStore) -> PanelsSummary:
    """The panels step of ``figsearch index``/``rebuild``: new images only."""
    summary = run_panels(store, settings.images_dir, max_pixels=settings.max_image_pixels)
    if summary.images:
        print(summary.line(), file=sys.stderr)
    return summary


# -- panel embeddings for a version (figsearch.panel_index) -------------------------------------
Box = tuple[int, int, int, int]
READ_CHUNK = 5_000


@dataclass
class PanelRows:
    """What a version's panel indexes hold: crops (key, sha256, image path, box) and
    sub-caption texts (key, text), keys by :func:`~figsearch.panel_index.panel_key`."""

    crops: list[tuple[int, str, str, Box]] = field(default_factory=list)
    texts: list[tuple[int, str]] = field(default_factory=list)
    figures: int = 0


def panel_rows(store: Any) -> PanelRows:
    """The panels of every live figure whose image splits into more than one panel, numbered in
    reading order with their own sub-captions (as ``FigureStore.figure_panels`` aligns them)."""
    out = PanelRows()
    last = 0
    with store.engine.connect() as conn:
        while True:
            rows = conn.execute(text(
                "SELECT f.id, f.sha256, f.image_path, f.label, f.caption, a.title, p.panels "
                "FROM figures f JOIN articles a ON a.id = f.article_id "
                "JOIN figure_panels p ON p.sha256 = f.sha256 WHERE f.id > :last "
                "AND f.has_image = 1 AND a.retracted = 0 AND f.image_path IS NOT NULL "
                "AND p.error IS NULL AND json_array_length(p.panels) > 1 "
                "ORDER BY f.id LIMIT :n"), {"last": last, "n": READ_CHUNK}).all()
            if not rows:
                return out
            for fid, sha, rel, label, caption, title, boxes in rows:
                _add_figure(out, int(fid), str(sha), str(rel), label, caption, title, boxes)
            last = int(rows[-1][0])


def _add_figure(out: PanelRows, fid: int, sha: str, rel: str, label: str | None,
                caption: str | None, title: str | None, boxes_json: str) -> None:
    """One compound figure's crops and sub-caption texts (panels past the key space: none)."""
    boxes: list[Box] = parse_boxes(boxes_json)[: PANEL_SLOTS - 1]
    panels = align([Panel(b) for b in boxes], split_caption(caption or ""))
    out.figures += 1
    for n, panel in enumerate(panels, 1):
        key = panel_key(fid, n)
        out.crops.append((key, sha, rel, panel.box))
        sub = own_subcaption(panel)
        if sub:
            out.texts.append((key, caption_text(label, sub, title)))


def crop_hash(model_key: str, sha256: str, box: Box) -> str:
    """Cache key of one panel crop's vector under one image model."""
    return hashlib.sha256(f"{model_key}\x00{sha256}\x00{list(box)}".encode()).hexdigest()


def crop_cache_path(settings: Settings, model_key: str) -> Path:
    """The panel-crop vector cache of one image model."""
    from indexer.captions import model_file_name

    return settings.data_dir / "cache" / f"panels-{model_file_name(model_key)}.sqlite"


def embed_crops(settings: Settings, encoder: Any, crops: list[tuple[int, str, str, Box]],
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, vectors, how many crops were encoded): cached where the model already embedded
    that box of that image, the rest cut from the stored images (each image read once) and
    encoded in batches. A crop whose image cannot be read any more is left out."""
    hashes = [crop_hash(encoder.model_key, sha, box) for _, sha, _, box in crops]
    cache = CaptionCache(crop_cache_path(settings, encoder.model_key))
    try:
        found = cache.get_many(hashes)
        todo: dict[str, tuple[str, str, Box]] = {}
        for (_k, sha, rel, box), h in zip(crops, hashes, strict=True):
            if h not in found:
                todo.setdefault(h, (sha, rel, box))
        with tqdm(total=len(todo), desc="panel embed", unit="panel",
                  disable=not progress or not todo) as bar:
            for batch in _crop_batches(settings, list(todo.items()), settings.batch_size):
                vecs = encoder.encode_images([img for _, img in batch])
                items = [(h, v) for (h, _), v in zip(batch, vecs, strict=True)]
                cache.put_many(items)
                # as the cache holds them (float16), so cached and fresh runs agree bit for bit
                found.update({h: np.asarray(v, np.float16).astype(np.float32) for h, v in items})
                bar.update(len(batch))
    finally:
        cache.close()
    keep = [i for i, h in enumerate(hashes) if h in found]
    keys = np.asarray([crops[i][0] for i in keep], np.int64)
    vectors = (np.stack([found[hashes[i]] for i in keep]) if keep
               else np.zeros((0, encoder.dim), np.float32))
    return keys, vectors, len(todo)


def _crop_batches(settings: Settings, todo: list[tuple[str, tuple[str, str, Box]]],
                  size: int) -> Any:
    """Batches of (hash, cropped RGB image), each stored image opened once (the todo list is
    grouped by image: the crops of one figure follow each other)."""
    batch: list[tuple[str, Any]] = []
    image, opened = None, None
    for h, (sha, rel, box) in todo:
        if sha != opened:
            opened = sha
            try:
                image = open_image(safe_image_path(settings.images_dir, rel).read_bytes(),
                                   max_pixels=settings.max_image_pixels)
            except (ImageError, OSError) as exc:
                print(f"panels: {rel}: unreadable, its panels are skipped ({exc})",
                      file=sys.stderr)
                image = None
        if image is None:
            continue
        batch.append((h, image.crop(box)))
        if len(batch) >= max(1, size):
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class PanelVectors:
    """A version's panel vectors and what making them cost."""

    crop_keys: np.ndarray
    crop_vectors: np.ndarray
    text_keys: np.ndarray
    text_vectors: np.ndarray
    figures: int
    crops_encoded: int
    texts_encoded: int
    crop_seconds: float
    text_seconds: float

    def line(self) -> str:
        per = (1000 * self.crop_seconds / self.crops_encoded) if self.crops_encoded else 0.0
        return (f"panels: {len(self.crop_keys)} panels of {self.figures} compound figures "
                f"({self.crops_encoded} crops encoded in {self.crop_seconds:.1f} s, "
                f"{per:.0f} ms each; {len(self.text_keys)} sub-captions, "
                f"{self.texts_encoded} encoded in {self.text_seconds:.1f} s)")


def embed_panels(settings: Settings, store: Any, encoder: Any | None,
                 caption_encoder: Any | None, progress: bool = False) -> PanelVectors:
    """Crop vectors (with an image encoder) and sub-caption vectors (with a caption encoder)
    of every compound figure's panels, from the caches where they were embedded before."""
    from indexer.captions import encode_cached

    rows = panel_rows(store)
    start = time.perf_counter()
    empty = np.zeros(0, np.int64)
    keys, vecs, n_crops = (embed_crops(settings, encoder, rows.crops, progress)
                           if encoder is not None and rows.crops
                           else (empty, np.zeros((0, 1), np.float32), 0))
    mid = time.perf_counter()
    t_keys, t_vecs, n_texts = (encode_cached(settings, caption_encoder, rows.texts, progress,
                                             desc="sub-caption embed")
                               if caption_encoder is not None and rows.texts
                               else (empty, np.zeros((0, 1), np.float32), 0))
    return PanelVectors(keys, vecs, t_keys, t_vecs, rows.figures, n_crops, n_texts,
                        mid - start, time.perf_counter() - mid)


def panel_stage(settings: Settings, store: Any, encoder: Any | None, caption_encoder: Any | None,
                progress: bool = False) -> Callable[[Path], dict[str, Any]]:
    """A build step writing a version's panel indexes (``panels/`` with an image encoder,
    ``captions/panels/`` when the version has a caption index); the panels are embedded when
    the step is made, so an encoding failure leaves no half-built version. A build without
    compound figures writes no panel directory."""
    from indexer.captions import _write_vectors

    built = embed_panels(settings, store, encoder, caption_encoder, progress)
    if built.figures:
        print(built.line(), file=sys.stderr)

    def write(version_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"figures": built.figures, "crops": 0, "subcaptions": 0,
                               "crops_encoded": built.crops_encoded,
                               "subcaptions_encoded": built.texts_encoded}
        if len(built.crop_keys) and encoder is not None:
            out["crops"] = _write_vectors(
                Path(version_dir) / PANELS_DIR, version_dir, built.crop_keys, built.crop_vectors,
                encoder, settings.index_memory_gb,
                model_spec=portable_path(str(getattr(encoder, "spec", "")), settings.data_dir))
        captions = Path(version_dir) / CAPTIONS_DIR
        if len(built.text_keys) and caption_encoder is not None and captions.is_dir():
            out["subcaptions"] = _write_vectors(captions / PANELS_DIR, version_dir,
                                                built.text_keys, built.text_vectors,
                                                caption_encoder, settings.index_memory_gb)
        return {"panels": out}

    return write
