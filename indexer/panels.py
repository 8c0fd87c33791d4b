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
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from figsearch.core.config import Settings
from figsearch.imaging import ImageError, open_image, safe_image_path
from figsearch.panels import detect_panels, split_caption
from figsearch.store import FigureStore

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
