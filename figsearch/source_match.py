"""Find the source of a figure: geometric verification of image-query candidates (issue 25).

An image query is often a piece of a stored figure - a crop, one panel, a screenshot with a
window frame around it, a shrunk copy - and a whole-image embedding of a piece says little
about the whole (a weak image model even less). Local features do: the query's keypoints
(ORB, on a downscaled greyscale copy) are matched against each candidate figure's (Lowe's
ratio test on Hamming distance), and a RANSAC fit of a similarity transform (rotation, uniform
scale, translation: what cropping, framing, rescaling and a slightly rotated photo or scan
do) counts the matches that agree on one placement of the query inside the candidate. A
figure with at least :data:`MIN_INLIERS` such inliers is *verified* as the source.

Candidates are the dense image search's top ``settings.source_candidates`` (already in the
right order of trying: best first), the visual-word index's top :data:`WORD_CANDIDATES`
(``settings.visual_words``, when the version has ``visual_words/``: the same ORB descriptors
quantised into words, voting tf-idf in an inverted file, :class:`VisualWordIndex`, built by
:mod:`indexer.visual_words`; they do not depend on the image model), tried first for the words'
best :data:`WORD_LEAD` and then alternating with the dense ones, plus - with
``settings.query_ocr`` - the figures whose in-figure text and captions hold the words read from
the query image. Verified figures move to
the front, most inliers first; the rest keep the dense order. Each verified hit carries a
``source`` signal whose ``raw`` is its inlier count.

Cost: a candidate's features are computed from its stored image (decoded at half size, the
long side then scaled to :data:`CANDIDATE_SIDE`) once and kept in an LRU cache keyed by the
image's sha256 (``settings.source_feature_cache``); matching one candidate costs about a
millisecond. Verification stops when the query's time budget
(``settings.image_query_budget_ms``, counted from the query's arrival) runs out, keeping what
was verified; candidates not reached keep their dense place.

OpenCV is imported lazily: without it (a serve-only install without the ``serve`` extra's
``opencv-python-headless``) image queries are answered by the dense search alone, with one
warning in the log.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch import timing
from figsearch.explain import HitSignal
from figsearch.store import FigureFilter

if TYPE_CHECKING:
    from figsearch.search import SearchHit, SearchPage, SearchService

log = logging.getLogger("figsearch.source")

#: Long side (px) a stored candidate image is scaled to (down, or up from a small stored copy:
#: a crop must not be several times larger in the query than in the candidate) before its
#: keypoints are found.
CANDIDATE_SIDE = 640
#: Long side range (px) of the query image's working copy: larger ones are scaled down, smaller
#: ones up (a tiny crop has too few keypoints at its own size).
QUERY_SIDE = (480, 800)
#: Keypoints kept (ORB's strongest) per stored candidate image and per query: matching costs
#: about their product (1000 x 800: ~10 ms per candidate on a loaded 2-core machine).
CANDIDATE_FEATURES = 1000
QUERY_FEATURES = 800
#: ORB pyramid levels (scale 1.2 apart): a query's pyramid is deeper, because a crop or panel
#: is shown larger in the query than inside the whole stored figure (1.2^11 = 7.4x).
CANDIDATE_LEVELS = 8
QUERY_LEVELS = 12
#: Lowe's ratio: a match counts when its Hamming distance is below this share of the second
#: best's.
RATIO = 0.8
#: RANSAC reprojection threshold (px at the candidate's working size).
RANSAC_PX = 6.0
#: A similarity fit with fewer inliers does not verify a candidate. Chosen on the dev split
#: (``python -m bench.source_eval --split dev --tune``, bench/results/source_eval_dev.json):
#: another figure than the source passes 6 inliers for 23 % of the queries, 8 for 9 %, 10 for
#: 6.6 %, 14 for 5.3 % - above ~10 mostly figures that really share content (the same KEGG map
#: in two articles) - while hit@1 of crops, panels and screenshots only falls from 0.600 (6) to
#: 0.575 (14); 14 leaves a margin above the noise.
MIN_INLIERS = 14
#: Scales of the query inside the candidate a real crop or screenshot can have.
SCALE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class LocalFeatures:
    """An image's keypoints (x, y at its working size) and their binary descriptors."""

    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, 32) uint8
    size: tuple[int, int]  # working (width, height)

    @property
    def count(self) -> int:
        return int(len(self.points))


_cv2: Any = None
_cv2_checked = False
_cv2_lock = threading.Lock()


def opencv() -> Any:
    """The ``cv2`` module, or None when OpenCV is not installed (logged once)."""
    global _cv2, _cv2_checked
    with _cv2_lock:
        if not _cv2_checked:
            _cv2_checked = True
            try:
                import cv2

                _cv2 = cv2
            except ImportError:
                log.warning("OpenCV (cv2) is not installed: image queries are not verified "
                            "against their candidates (pip install opencv-python-headless)")
    return _cv2


def _scaled(gray: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``gray`` resized so its long side lies in [lo, hi] (unchanged when it already does)."""
    cv2 = opencv()
    h, w = gray.shape[:2]
    side = max(h, w)
    target = hi if side > hi else lo if side < lo else side
    if target == side:
        return gray
    scale = target / side
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=interp)


def features(gray: np.ndarray, lo: int, hi: int, n: int = CANDIDATE_FEATURES,
             levels: int = CANDIDATE_LEVELS) -> LocalFeatures:
    """``n`` ORB keypoints of a greyscale uint8 image scaled to a long side in [lo, hi]."""
    cv2 = opencv()
    img = _scaled(gray, lo, hi)
    orb = cv2.ORB_create(nfeatures=n, nlevels=levels, fastThreshold=10)
    keypoints, descriptors = orb.detectAndCompute(img, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8),
                             (img.shape[1], img.shape[0]))
    points = np.array([k.pt for k in keypoints], np.float32)
    return LocalFeatures(points, descriptors, (img.shape[1], img.shape[0]))


def query_features(image: Any) -> LocalFeatures:
    """Features of a query image (a decoded RGB PIL image)."""
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    return features(gray, *QUERY_SIDE, n=QUERY_FEATURES, levels=QUERY_LEVELS)


def file_features(path: Path) -> LocalFeatures:
    """Features of a stored image file, decoded at half size when that keeps it large enough
    (JPEG decodes in scaled-down DCT, several times faster)."""
    cv2 = opencv()
    gray = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if gray is None or max(gray.shape) < CANDIDATE_SIDE:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise OSError(f"cannot decode {path}")
    return features(gray, CANDIDATE_SIDE, CANDIDATE_SIDE)


def inliers(query: LocalFeatures, candidate: LocalFeatures) -> int:
    """How many ratio-test matches of ``query`` agree on one similarity transform into
    ``candidate`` (RANSAC); 0 when too few match to fit one or the fit's scale is absurd."""
    if query.count < 2 or candidate.count < 2:
        return 0
    cv2 = opencv()
    import faiss  # the serve role's vector search library; its binary index is 6x faster
    # than OpenCV's brute-force Hamming matcher here

    index = faiss.IndexBinaryFlat(candidate.descriptors.shape[1] * 8)
    index.add(candidate.descriptors)
    with one_omp_thread():
        dist, nearest = index.search(query.descriptors, 2)
    good = np.nonzero((nearest[:, 1] >= 0) & (dist[:, 0] < RATIO * dist[:, 1]))[0]
    if len(good) < max(4, MIN_INLIERS):  # fewer matches than needed: no fit can verify
        return 0
    src = query.points[good]
    dst = candidate.points[nearest[good, 0]]
    model, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=500,
        confidence=0.99)
    if model is None or mask is None:
        return 0
    scale = float(np.hypot(model[0, 0], model[1, 0]))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return 0
    return _distinct_inliers(dst[mask.ravel().astype(bool)])


@contextmanager
def one_omp_thread() -> Iterator[None]:
    """faiss on this thread only, for the block (an OpenMP per-thread setting): a search as
    small as one image's descriptors is 15x slower on two busy cores split over threads that
    wait on each other."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def quantise(vocab_index: Any, descriptors: np.ndarray) -> np.ndarray:
    """Sorted distinct visual words (int64) of ORB descriptors (n x 32 uint8): each
    descriptor's nearest word in a binary index of the vocabulary. The index build
    (:mod:`indexer.visual_words`) and the query (:class:`VisualWordIndex`) both use it, so a
    query's words are those the figures were indexed under."""
    if len(descriptors) == 0:
        return np.zeros(0, np.int64)
    _, nearest = vocab_index.search(np.ascontiguousarray(descriptors), 1)
    return np.unique(nearest[:, 0]).astype(np.int64)


def _distinct_inliers(points: np.ndarray) -> int:
    """Inliers counted once per 2-px cell of the candidate: ORB finds the same corner at
    several pyramid levels, and one corner matched five times is not five pieces of evidence."""
    if len(points) == 0:
        return 0
    cells = np.unique(np.floor(points / 2.0).astype(np.int64), axis=0)
    return int(len(cells))


class FeatureCache:
    """Candidate features by image sha256, least recently used dropped beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, LocalFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], LocalFeatures]) -> LocalFeatures:
        """The cached features of ``key``, computed by ``make`` on a miss."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = make()
        if self.size > 0:
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_caches: dict[int, FeatureCache] = {}


def feature_cache(size: int) -> FeatureCache:
    """The process's cache of candidate features for this size (one per size setting)."""
    with _cv2_lock:
        cache = _caches.get(size)
        if cache is None:
            cache = _caches[size] = FeatureCache(size)
        return cache


def verify(
    query: LocalFeatures, candidates: Sequence[tuple[int, dict[str, Any]]], images_dir: Path,
    cache: FeatureCache, deadline: float, min_inliers: int | None = None,
) -> tuple[dict[int, int], int]:
    """Inlier counts of the candidates (id, store row) verified before ``deadline``
    (``time.perf_counter()`` seconds), tried in the given order, and how many were tried.

    Only counts of at least ``min_inliers`` (default :data:`MIN_INLIERS`) are returned; a
    candidate without a readable stored image is skipped.
    """
    from figsearch.imaging import ImageError, safe_image_path

    least = MIN_INLIERS if min_inliers is None else min_inliers
    found: dict[int, int] = {}
    tried = 0
    for fid, figure in candidates:
        if time.perf_counter() >= deadline:
            break
        rel, sha = figure.get("image_path"), figure.get("sha256")
        if not figure.get("has_image") or not rel or not sha:
            continue
        tried += 1
        try:
            path = safe_image_path(images_dir, str(rel))
            feats = cache.get(str(sha), lambda p=path: file_features(p))  # type: ignore[misc]
        except (ImageError, OSError) as exc:
            log.debug("figure %s: no features (%s)", fid, exc)
            continue
        count = inliers(query, feats)
        if count >= least:
            found[fid] = count
    return found, tried


# -- visual words -------------------------------------------------------------------------------
#: A version's visual-word index (indexer/visual_words.py writes it).
VISUAL_WORDS_DIR = "visual_words"


class VisualWordIndex:
    """A version's inverted file of visual words (:mod:`indexer.visual_words`), memory-mapped:
    a query's ORB descriptors -> words -> tf-idf cosine over the figures sharing them."""

    def __init__(self, root: Path) -> None:
        def load(name: str) -> np.ndarray:
            return np.load(root / f"{name}.npy", mmap_mode="r")

        self.root = root
        self.manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
        self.vocab = np.ascontiguousarray(load("vocab"))  # small (words x 32 bytes): in RAM
        self.ids, self.offsets, self.postings = load("ids"), load("offsets"), load("postings")
        self.idf, self.norms = np.asarray(load("idf")), load("norms")
        import faiss

        self._words = faiss.IndexBinaryFlat(self.vocab.shape[1] * 8)
        self._words.add(self.vocab)

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Sorted distinct words of ORB descriptors (n x 32 uint8)."""
        with one_omp_thread():
            return quantise(self._words, descriptors)

    def ranked(self, descriptors: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The ``n`` figures (id, score) whose words best match the query's: the tf-idf cosine
        of binary word sets (the query's norm left out: it ranks nothing)."""
        words = self.words(descriptors)
        words = words[self.idf[words] > 0]
        if not len(words) or n <= 0:
            return []
        starts, ends = self.offsets[words], self.offsets[words + 1]
        rows = np.concatenate([self.postings[a:b] for a, b in zip(starts, ends, strict=True)])
        weights = np.repeat(self.idf[words] ** 2, ends - starts)
        uniq, inverse = np.unique(rows, return_inverse=True)
        scores = np.bincount(inverse, weights=weights) / np.maximum(
            np.asarray(self.norms[uniq], np.float64), 1e-9)
        top = np.argsort(-scores, kind="stable")[:n]
        return [(int(self.ids[uniq[i]]), float(scores[i])) for i in top]


def word_index(version_dir: Path | None) -> VisualWordIndex | None:
    """The visual-word index of ``version_dir``, or None when the version has none."""
    if version_dir is None:
        return None
    root = Path(version_dir) / VISUAL_WORDS_DIR
    return VisualWordIndex(root) if (root / "manifest.json").is_file() else None


# -- the image query ----------------------------------------------------------------------------
@dataclass
class SourceRun:
    """What the last image query of this thread did (for benches and logs)."""

    pool: list[int]  # the candidates in the order they were to be tried
    tried: int = 0
    verified: dict[int, int] | None = None
    ocr_words: list[str] | None = None
    ocr_ms: float | None = None
    out_of_time: bool = False
    skipped: str = ""  # why nothing was verified ("" when verification ran)


_last = threading.local()


def last_run() -> SourceRun | None:
    """The :class:`SourceRun` of this thread's last :func:`find_source` call."""
    return getattr(_last, "run", None)


def find_source(service: SearchService, image: Any, vector: np.ndarray, k: int, offset: int,
                flt: FigureFilter | None, dedup: bool) -> SearchPage:
    """The dense image search's page with the figures the query is verified to be a piece or
    copy of moved to the front, most inliers first (see the module doc).

    Only the dense top ``settings.source_candidates`` (and the query-OCR candidates) are tried,
    so a page beyond them is the dense page itself; ``settings.source_verify`` off, or no
    OpenCV, gives the dense page unchanged.
    """
    service._check_page(k, offset)  # the page asked for, before the candidate pool's search
    settings = service.settings
    start = time.perf_counter()
    deadline = start + settings.image_query_budget_ms / 1000.0
    pool_n = min(settings.source_candidates, settings.max_k)
    skip = ("verification is off" if not settings.source_verify else
            "OpenCV is not installed" if opencv() is None else
            "the page is beyond the candidates" if offset >= pool_n else "")
    if skip:
        _last.run = SourceRun([], skipped=skip)
        return service.search_vector(vector, k, offset, flt, dedup, label="<image>")
    ocr = _QueryOcr(image) if settings.query_ocr else None
    with timing.stage("source"):
        head = service.search_vector(vector, pool_n, 0, flt, dedup, label="<image>")
        query = query_features(image)
        cache = feature_cache(settings.source_feature_cache)
        words = _word_candidates(service, query, flt, head.hits, dedup, vector)
        pool = _interleaved(head.hits, words)
        run = SourceRun([h.id for h in pool])
        verified, run.tried = verify(query, [(h.id, h.figure) for h in pool],
                                     settings.images_dir, cache, deadline)
        dense_ids = {h.id for h in head.hits}
        extra = [h for h in words if h.id in verified and h.id not in dense_ids]
        if ocr is not None:
            seen = {h.id for h in pool}
            more = _ocr_candidates(service, ocr, run, deadline, flt, seen, vector)
            run.pool += [h.id for h in more]
            found, tried = verify(query, [(h.id, h.figure) for h in more],
                                  settings.images_dir, cache, deadline)
            run.tried += tried
            verified.update(found)
            extra += [h for h in more if h.id in found]
        run.verified = verified
        run.out_of_time = time.perf_counter() >= deadline
        _last.run = run
    hits = _reordered(head.hits + extra, verified)
    if offset + k > len(hits) and len(head.hits) == pool_n:  # the page reaches past the pool
        tail = service.search_vector(vector, offset + k - pool_n, pool_n, flt, dedup,
                                     label="<image>").hits
        seen = {h.id for h in hits}
        hits += [h for h in tail if h.id not in seen]
    page = hits[offset:offset + k]
    for rank, hit in enumerate(page, offset + 1):
        hit.rank = rank
    head.hits, head.k, head.offset = page, k, offset
    head.took_ms = round((time.perf_counter() - start) * 1000.0, 2)  # as search_vector's:
    # from after the encoding to the page, the candidate search and verification included
    return head


#: Visual-word candidates (``VisualWordIndex.ranked``) added to the verification pool, and how
#: many of them are tried before the dense candidates (the rest alternate with them). Chosen on
#: the dev split (bench/results/source_eval_dev.json).
WORD_CANDIDATES = 50
WORD_LEAD = 5


def _word_candidates(service: SearchService, query: LocalFeatures, flt: FigureFilter | None,
                     dense: list[SearchHit], dedup: bool, vector: np.ndarray) -> list[SearchHit]:
    """The visual-word index's best :data:`WORD_CANDIDATES` figures for the query (passing
    ``flt``, in the store; a dense candidate as its dense hit; with ``dedup`` none sharing an
    image with another dense hit), as hits scored by their image cosine; none without the
    index or ``settings.visual_words``."""
    words: VisualWordIndex | None = getattr(service, "visual_words", None)
    if words is None or not service.settings.visual_words or query.count == 0:
        return []
    ranked = [fid for fid, _ in words.ranked(query.descriptors, WORD_CANDIDATES)]
    if flt is not None and not flt.is_empty() and ranked:
        allowed = service._allowed_ids(flt).contains(np.asarray(ranked, np.int64))
        ranked = [fid for fid, ok in zip(ranked, allowed, strict=True) if ok]
    by_id = {h.id: h for h in dense}
    new = {h.id: h for h in _hits_for(service, [i for i in ranked if i not in by_id], vector)}
    shas = {h.figure.get("sha256") for h in dense} if dedup else set()
    return [by_id[i] if i in by_id else new[i] for i in ranked
            if i in by_id or (i in new and new[i].figure.get("sha256") not in shas)]


def _interleaved(dense: list[SearchHit], words: list[SearchHit]) -> list[SearchHit]:
    """The order of trying: the first :data:`WORD_LEAD` word candidates, then dense and word
    candidates alternating (each list's own order kept, each figure at its first place)."""
    out: dict[int, SearchHit] = {h.id: h for h in words[:WORD_LEAD]}
    rest = words[WORD_LEAD:]
    for i in range(max(len(dense), len(rest))):
        for hit in dense[i:i + 1] + rest[i:i + 1]:
            out.setdefault(hit.id, hit)
    return list(out.values())


def _hits_for(service: SearchService, ids: list[int], vector: np.ndarray) -> list[SearchHit]:
    """Hits for candidate ids from outside the dense search (those in the store, in the given
    order), scored by their image cosine."""
    from figsearch.search import SearchHit

    figures = service.store.get_figures(ids)
    ids = [i for i in ids if i in figures]
    index = service.index
    cosines = index.scores_for(service.check_vector(vector), ids) if index is not None else {}
    hits = []
    for fid in ids:
        score = float(cosines.get(fid, 0.0))
        hits.append(SearchHit(fid, 0, score, figures[fid],
                              html.escape(str(figures[fid].get("caption") or "")), "",
                              [HitSignal("dense", score, score, 1.0, None, None)]))
    return hits


def _reordered(hits: list[SearchHit], verified: dict[int, int]) -> list[SearchHit]:
    """Verified hits first, most inliers first (ties: dense order), each with a ``source``
    signal; the others after them in their dense order."""
    order = sorted((h for h in hits if h.id in verified), key=lambda h: -verified[h.id])
    for place, hit in enumerate(order, 1):
        hit.signals = [*hit.signals, HitSignal("source", float(verified[hit.id]), 0.0, None,
                                               None, place)]
    return order + [h for h in hits if h.id not in verified]


# -- query OCR ----------------------------------------------------------------------------------
#: Long side (px) the query image is detected at by query OCR (ingest reads figures at 960).
QUERY_OCR_SIDE = 640
#: Words of the query image searched in the keyword index, and the candidates taken from it.
OCR_WORDS = 24
OCR_CANDIDATES = 10
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")
_ocr_lock = threading.Lock()  # one query OCR at a time per process: the engine is not shared
_ocr_engine: Any = None


def ocr_words(text: str, limit: int = OCR_WORDS) -> list[str]:
    """The distinct words of OCR text worth searching: 3+ characters starting with a letter
    (axis ticks, panel letters and stray digits say nothing), in reading order."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        seen.setdefault(word.lower(), word)
    return list(seen.values())[:limit]


def read_query_text(image: Any) -> str:
    """The text rapidocr reads in a query image at :data:`QUERY_OCR_SIDE` (one engine per
    process, made on first use; callers hold ``_ocr_lock``)."""
    global _ocr_engine
    from indexer.ocr import make_engine, recognise

    if _ocr_engine is None:
        _ocr_engine = make_engine(threads=1)
    small = image.copy()
    small.thumbnail((QUERY_OCR_SIDE, QUERY_OCR_SIDE))
    text, _boxes = recognise(_ocr_engine, small)
    return text


class _QueryOcr:
    """Query OCR on a background thread, started before the dense search and used if it ends
    before the deadline. One runs at a time per process: a query arriving while another's OCR
    runs goes without (the engine's CPU is the bound), and an OCR that outlives its query's
    deadline finishes unused."""

    def __init__(self, image: Any) -> None:
        self.words: list[str] | None = None
        self.ms: float | None = None
        self._done = threading.Event()
        if not _ocr_lock.acquire(blocking=False):
            self._done.set()
            return
        threading.Thread(target=self._run, args=(image,), daemon=True,
                         name="query-ocr").start()

    def _run(self, image: Any) -> None:
        start = time.perf_counter()
        try:
            self.words = ocr_words(read_query_text(image))
        except Exception as exc:  # noqa: BLE001 - OCR is an extra: the query goes on without
            log.warning("query OCR failed: %s", exc)
        finally:
            self.ms = (time.perf_counter() - start) * 1000.0
            _ocr_lock.release()
            self._done.set()

    def result(self, deadline: float) -> list[str] | None:
        """The words read, waiting at most until ``deadline``; None when not done by then."""
        self._done.wait(max(0.0, deadline - time.perf_counter()))
        return self.words if self._done.is_set() else None


def _ocr_candidates(service: SearchService, ocr: _QueryOcr, run: SourceRun, deadline: float,
                    flt: FigureFilter | None, exclude: set[int], vector: np.ndarray
                    ) -> list[SearchHit]:
    """Figures whose text (caption, in-figure text, ...) best matches the words read in the
    query image, not among the dense candidates, as hits scored by their image cosine."""
    words = ocr.result(deadline)
    run.ocr_words, run.ocr_ms = words, ocr.ms
    if not words or time.perf_counter() >= deadline:
        return []
    found = service._keyword(" ".join(words), OCR_CANDIDATES + len(exclude),
                             flt or FigureFilter())
    ids = [i for i in found.ids if i not in exclude][:OCR_CANDIDATES]
    return _hits_for(service, ids, vector)
