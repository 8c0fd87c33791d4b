"""``figsearch ocr``: the words drawn inside figures, read by an offline OCR engine.

The engine is rapidocr-onnxruntime: PP-OCR detection + recognition models that ship inside the
wheel and run on onnxruntime (CPU), so nothing is downloaded at run time. Each distinct image
(by sha256) is read once: the text goes into the store's ``figure_ocr`` table, whose triggers
copy it into the ``ocr`` column of the keyword index (FTS5), where it is searchable at once
(no index rebuild needed). A rerun OCRs only images that have no row yet, so the same image is
never read twice, across articles and reruns. An unreadable image gets a row with its error
(so it is not retried) and an ``ingest_errors`` entry; the rest goes on.

Work is done in batches by ``--workers`` processes (``FIGSEARCH_OCR_WORKERS``), each running one
engine with its share of the CPU threads; each batch is committed before the next, so a killed
run resumes where it stopped. ``figsearch index`` and ``figsearch rebuild`` run the same step
first when ``FIGSEARCH_OCR=true``. ``--export``/``--import`` move the texts between stores as
JSONL keyed by sha256 (e.g. read once on a big machine, loaded everywhere else).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from figsearch.core.config import Settings
from figsearch.store import FigureStore

ENGINE = "rapidocr-onnxruntime"
#: Text boxes the recogniser is less sure of are dropped.
MIN_SCORE = 0.5
#: The recogniser also reads Chinese; keep boxes with at least one Latin letter or digit.
_USEFUL = re.compile(r"[A-Za-z0-9]")
BATCH = 32
#: Detection scales an image down to 960 px on its long side but never up (the package's
#: default scales the short side *up* to 736 px, 1.5x slower on 400-800 px figures for the
#: same boxes); no 180-degree text classifier (upside-down text is rare in figures).
ENGINE_PARAMS: dict[str, Any] = {"det_limit_type": "max", "det_limit_side_len": 960,
                                 "use_cls": False}

_engine: Any = None  # one per process, made by _init_worker or lazily


@dataclass
class OcrResult:
    """One image's outcome: its text (one line per text box) or why it was skipped."""

    sha256: str
    text: str = ""
    boxes: int = 0
    error: str | None = None


@dataclass
class OcrSummary:
    """What one OCR run did."""

    images: int = 0  # images read this run (ok + failed)
    with_text: int = 0
    failed: int = 0
    boxes: int = 0
    cached: int = 0  # images already read by earlier runs
    workers: int = 1
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (
            f"ocr: {self.images} images read ({self.with_text} with text, {self.failed} "
            f"unreadable skipped), {self.boxes} text boxes, {self.cached} already done; "
            f"{self.workers} workers, {self.elapsed_s:.1f} s, {self.rate:.2f} images/s"
        )


def engine_name() -> str:
    """Engine and version, stored with each result."""
    try:
        return f"{ENGINE} {metadata.version(ENGINE)}"
    except metadata.PackageNotFoundError:
        return ENGINE


def make_engine(threads: int = 1) -> Any:
    """A RapidOCR engine using ``threads`` CPU threads (its models come with the package)."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:  # pragma: no cover - a broken install
        raise RuntimeError(
            f"OCR needs the {ENGINE} package (pip install {ENGINE}): {exc}"
        ) from exc
    return RapidOCR(**ENGINE_PARAMS, intra_op_num_threads=max(1, int(threads)),
                    inter_op_num_threads=1)


def recognise(engine: Any, image: Any) -> tuple[str, int]:
    """(text, boxes) read from an RGB PIL image: confident boxes in reading order, one a line."""
    found, _timings = engine(_bgr(image))
    lines = _kept_lines((text, score) for _box, text, score in (found or []))
    return "\n".join(lines), len(lines)


def _bgr(image: Any) -> Any:
    """An RGB PIL image as the contiguous BGR array the engine reads."""
    import numpy as np

    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _kept_lines(read: Iterable[tuple[Any, Any]]) -> list[str]:
    """The (text, score) pairs the recogniser read that are kept: confident (:data:`MIN_SCORE`)
    and holding a Latin letter or digit, stripped."""
    return [str(text).strip() for text, score in read
            if float(score) >= MIN_SCORE and _USEFUL.search(str(text))]


#: A text box counts as word-shaped when it is at least this many times wider than high (a
#: 3-letter word is about 1.5x; tick labels and panel letters are narrower).
WORD_BOX_ASPECT = 1.5


@dataclass
class Detected:
    """The text boxes detection found in an image (the engine's working copy and its boxes)."""

    image: Any
    boxes: list[Any]


def detect(engine: Any, image: Any) -> Detected:
    """Text boxes of an RGB PIL image, in reading order: the first half of :func:`recognise`
    (detection costs about a fifth of reading a figure's boxes), so a caller can decide which
    boxes are worth reading."""
    work, _ratio_h, _ratio_w = engine.preprocess(_bgr(image))
    work, _record = engine.maybe_add_letterbox(work, {})
    boxes, _elapsed = engine.auto_text_det(work)
    return Detected(work, list(boxes) if boxes is not None else [])


def read_widest(engine: Any, found: Detected, limit: int) -> str:
    """The text of the ``limit`` widest word-shaped boxes (:data:`WORD_BOX_ASPECT`) of
    ``found``, in reading order, one a line: reading costs about the boxes' total width, and
    the widest boxes hold a figure's words, not its tick labels."""
    import numpy as np

    shapes = [(float(np.linalg.norm(b[1] - b[0])), float(np.linalg.norm(b[3] - b[0])))
              for b in found.boxes]
    words = [i for i, (w, h) in enumerate(shapes) if w >= WORD_BOX_ASPECT * h]
    keep = sorted(sorted(words, key=lambda i: -shapes[i][0])[:max(0, limit)])
    if not keep:
        return ""
    crops = engine.get_crop_img_list(found.image, [found.boxes[i] for i in keep])
    read, _elapsed = engine.text_rec(crops, False)
    return "\n".join(_kept_lines((r[0], r[1]) for r in read))


def ocr_image_file(sha256: str, path: str, max_pixels: int) -> OcrResult:
    """Read one stored image file with this process's engine; errors become a reason."""
    global _engine
    from figsearch.imaging import ImageError, open_image

    if _engine is None:
        _engine = make_engine(os.cpu_count() or 1)
    try:
        image = open_image(Path(path).read_bytes(), max_pixels=max_pixels)
        text, boxes = recognise(_engine, image)
    except (ImageError, OSError) as exc:
        return OcrResult(sha256, error=f"unreadable image: {exc}")
    except Exception as exc:  # the engine (opencv/onnxruntime) on an odd image: skip it
        return OcrResult(sha256, error=f"OCR failed: {type(exc).__name__}: {exc}")
    return OcrResult(sha256, text, boxes)


def _init_worker(threads: int) -> None:
    global _engine
    _engine = make_engine(threads)


def _ocr_job(job: tuple[str, str, int]) -> OcrResult:
    return ocr_image_file(*job)


def _jobs(batch: Sequence[tuple[str, str]], images_dir: Path, max_pixels: int
          ) -> tuple[list[tuple[str, str, int]], list[OcrResult]]:
    """(sha256, absolute path, max pixels) per image, and the images refused before reading."""
    from figsearch.imaging import ImageError, safe_image_path

    jobs, refused = [], []
    for sha, rel in batch:
        try:
            jobs.append((sha, str(safe_image_path(images_dir, rel)), max_pixels))
        except ImageError as exc:
            refused.append(OcrResult(sha, error=f"unreadable image: {exc}"))
    return jobs, refused


def _store_results(store: FigureStore, results: Iterable[OcrResult], summary: OcrSummary,
                   paths: dict[str, str]) -> None:
    results = list(results)
    engine = engine_name()
    store.put_ocr((r.sha256, r.text, r.boxes, engine, r.error) for r in results)
    for r in results:
        summary.images += 1
        summary.boxes += r.boxes
        if r.error:
            summary.failed += 1
            store.record_error("ocr", r.error, item=paths.get(r.sha256, r.sha256), stage="ocr")
        elif r.text:
            summary.with_text += 1


def run_ocr(store: FigureStore, images_dir: Path, *, workers: int = 1, max_pixels: int = 90_000_000,
            limit: int | None = None, progress: bool = True, batch: int = BATCH) -> OcrSummary:
    """OCR every stored image that has no OCR row yet; returns the run's summary.

    ``workers`` > 1 runs that many processes (spawned: no state shared with torch), each
    with ``cpu_count // workers`` threads; 1 runs in this process. ``limit`` caps the number
    of images read (the rest waits for the next run).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    workers = max(1, int(workers))
    pending = store.ocr_pending_count()
    summary = OcrSummary(cached=store.ocr_done_count(), workers=workers)
    total = pending if limit is None else min(pending, max(0, int(limit)))
    pool = None
    if workers > 1 and total > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
    bar = tqdm(total=total, unit="img", desc="ocr", disable=not progress, file=sys.stderr)
    try:
        for rows in store.iter_ocr_pending(batch):
            rows = rows[: total - summary.images]
            if not rows:
                break
            jobs, refused = _jobs(rows, Path(images_dir), max_pixels)
            results = list(refused)
            bar.update(len(refused))
            for result in pool.map(_ocr_job, jobs) if pool else map(_ocr_job, jobs):
                results.append(result)
                bar.update(1)
            _store_results(store, results, summary, dict(rows))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    summary.elapsed_s = time.perf_counter() - start
    return summary


def ocr_step(settings: Settings, store: FigureStore, progress: bool = True) -> OcrSummary | None:
    """The OCR step of ``figsearch index``/``rebuild``: runs only when ``settings.ocr``."""
    if not settings.ocr:
        return None
    summary = run_ocr(store, settings.images_dir, workers=settings.ocr_workers,
                      max_pixels=settings.max_image_pixels, progress=progress)
    print(summary.line(), file=sys.stderr)
    return summary


# -- export / import -----------------------------------------------------------------------------
def export_ocr(store: FigureStore, path: Path) -> int:
    """Write one JSON line per figure whose image was read: pmcid, label, fig_id, sha256,
    ocr_text, error. Returns the number of lines."""
    from sqlalchemy import text

    sql = ("SELECT a.pmcid, f.label, f.fig_id, f.sha256, o.text, o.error FROM figures f "
           "JOIN articles a ON a.id = f.article_id JOIN figure_ocr o ON o.sha256 = f.sha256 "
           "ORDER BY a.pmcid, f.fig_id")
    with store.engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    with open(path, "w", encoding="utf-8") as fh:
        for pmcid, label, fig_id, sha, ocr_text, error in rows:
            fh.write(json.dumps({"pmcid": pmcid, "label": label, "fig_id": fig_id, "sha256": sha,
                                 "ocr_text": ocr_text, "error": error}) + "\n")
    return len(rows)


def import_ocr(store: FigureStore, path: Path) -> int:
    """Load texts written by :func:`export_ocr` (by sha256, e.g. from another machine) so that
    those images are not read again. Lines without a 64-hex ``sha256`` are refused with their
    line number. Returns the number of images loaded."""
    rows: dict[str, tuple[str, str, int, str, str | None]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                sha = str(rec["sha256"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an OCR export line ({exc})") from exc
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ValueError(f"{path}:{n}: sha256 {sha!r} is not 64 hex digits")
            txt = str(rec.get("ocr_text") or "")
            rows[sha] = (sha, txt, len(txt.splitlines()), f"import:{Path(path).name}",
                         rec.get("error"))
    store.put_ocr(rows.values())
    return len(rows)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch ocr [--workers N] [--limit N] [--no-progress]``."""
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: $FIGSEARCH_OCR_WORKERS)")
    parser.add_argument("--limit", type=int, default=None,
                        help="read at most this many images now (a rerun continues)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--import", dest="import_file", type=Path, default=None,
                        help="first load texts from a JSONL file written by --export (by sha256)")
    parser.add_argument("--export", dest="export_file", type=Path, default=None,
                        help="afterwards write every figure's text to this JSONL file")


def command(args: argparse.Namespace) -> int:
    """OCR the store's images that have no text yet; 1 with a clear message when it cannot."""
    settings: Settings = args.settings
    if not settings.db_path.is_file():
        print(f"figsearch ocr: no figure store at {settings.db_path}; run `figsearch ingest` "
              "first", file=sys.stderr)
        return 1
    if args.workers is not None and args.workers < 1:
        print(f"figsearch ocr: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 1
    store = FigureStore(settings.db_path, create=False)
    try:
        if args.import_file:
            print(f"ocr: loaded {import_ocr(store, args.import_file)} images' text from "
                  f"{args.import_file}")
        summary = run_ocr(
            store, settings.images_dir, workers=args.workers or settings.ocr_workers,
            max_pixels=settings.max_image_pixels, limit=args.limit, progress=not args.no_progress,
        )
        print(summary.line())
        if args.export_file:
            print(f"ocr: wrote {export_ocr(store, args.export_file)} figures' text to "
                  f"{args.export_file}")
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"figsearch ocr: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
