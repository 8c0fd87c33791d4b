"""Find the source of a figure: geometric verification of image-query candidates (issue 25).

An image query is often a piece of a stored figure - a crop, one panel, a screenshot with a
window frame around it, a shrunk copy - and a whole-image embedding of a piece says little
about the whole (a weak image model even less). Local features do: the query's keypoints
(ORB, on a downscaled greyscale copy) are matched against each candidate figure's (Lowe's
ratio test on Hamming distance), and a RANSAC fit of a similarity transform (rotation, uniform
scale, translation: what cropping, framing, rescaling and a slightly rotated photo or scan
do) counts the matches that agree on one placement of the query inside the candidate. A
figure with at least :data:`MIN_INLIERS` such inliers is *verified* as the source.

A small crop or a single panel covers a small part of its figure, so its first fit can be weak
(a few inliers) even against its source. *Guided re-matching* (:func:`refine`) cuts the region
where that fit places the query out of the stored image, scales it to the query's own scale and
matches again: a true source then has hundreds of inliers, a wrong figure's chance placement a
handful. It runs when nothing was verified (the strongest weak fits, until one passes) and to
order verified candidates whose counts are close (:func:`refined`).

Candidates are the dense image search's top ``settings.source_candidates`` (already in the
right order of trying: best first), the visual-word index's top :data:`WORD_CANDIDATES`
(``settings.visual_words``, when the version has ``visual_words/``: ORB descriptors of the
stored images quantised into words, voting tf-idf in an inverted file,
:class:`VisualWordIndex`, built by :mod:`indexer.visual_words`; they do not depend on the image
model), tried first for the words'
best :data:`WORD_LEAD` and then alternating with the dense ones, plus - with
``settings.query_ocr`` - the figures whose in-figure text and captions hold the words read from
the query image. Verified figures move to
the front, most inliers first; the rest keep the dense order. Each verified hit carries a
``source`` signal whose ``raw`` is its inlier count.

Cost: a candidate's features are computed from its stored image (decoded at half size when
that stays large enough, the long side then scaled to :data:`CANDIDATE_SIDE`) once and kept in
an LRU cache keyed by the image's sha256 (``settings.source_feature_cache``); matching one
candidate costs a few milliseconds, re-matching one about 10 ms (it decodes the stored image).
Verification stops when the query's time budget (``settings.image_query_budget_ms``, counted
from the query's arrival) runs out, keeping what was verified; candidates not reached keep
their dense place.

OpenCV is imported lazily: without it (a serve-only install without the ``serve`` extra's
``opencv-python-headless``) image queries are answered by the dense search alone, with one
warning in the log.
"""

from __future__ import annotations

import atexit
import html
import importlib
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
#: keypoints are found. 960 px and 3000 keypoints rather than 640 and 1000: a crop of a third of
#: a figure's side held ~120 of the 1000 keypoints, too few to agree on a placement. On dev,
#: with re-matching and the conclusive stop below, 35 % crops found first went 0.64 -> 0.85 and
#: single panels 0.82 -> 0.95 (bench/results/source_eval_dev.json against its previous
#: version); matching costs about twice as much per candidate.
CANDIDATE_SIDE = 960
#: Long side range (px) of the query image's working copy: larger ones are scaled down, smaller
#: ones up (a tiny crop has too few keypoints at its own size).
QUERY_SIDE = (480, 800)
#: Keypoints kept (ORB's strongest) per stored candidate image and per query: matching costs
#: about their product.
CANDIDATE_FEATURES = 3000
QUERY_FEATURES = 800
#: The visual-word index (:mod:`indexer.visual_words`) quantises the lighter features it was
#: designed with: its postings grow with the keypoints per image.
WORD_SIDE = 640
WORD_FEATURES = 1000
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
#: (``python -m bench.source_eval --split dev --tune``, bench/results/source_eval_dev_tune.json:
#: first fits only, every candidate tried within the budget): another figure than the source
#: passes 14 inliers for 10.6 % of the queries, 20 for 8.7 %, 25 for 7.3 % - above ~10 mostly
#: figures that really share content (the same KEGG map in two articles) - while hit@1 of crops,
#: panels and screenshots goes 0.939 / 0.935 / 0.926; guided re-matching (below) verifies the
#: weaker true fits that 20 leaves out.
MIN_INLIERS = 20
#: Scales of the query inside the candidate a real crop or screenshot can have.
SCALE_RANGE = (0.05, 20.0)
#: Guided re-matching (:func:`refine`): the weakest first fit worth re-matching, how many weak
#: fits are re-matched when nothing is verified (strongest first, until one passes), the
#: re-matched inliers that verify, and - when several candidates are verified - the share of
#: the best count within which the top :data:`REFINE_TOP` are re-matched to order them. On dev
#: a re-matched true source has 149+ inliers in 95 % of cases; a re-matched wrong figure with a
#: first fit of 3 never passed 15 (15,832 of them); of all 21,676 weak first fits (3-19) of
#: wrong figures, 28 reached 30 (at most 101), mostly figures sharing content with the source.
REFINE_FROM = 3
REFINE_WEAK = 8
REFINE_MIN_INLIERS = 30
REFINE_CLOSE = 0.7
REFINE_TOP = 2
#: Budget (ms) kept from the candidate verification for re-matching: verification of the pool
#: stops this long before the deadline.
REFINE_RESERVE_MS = 60.0
#: A fit this strong is conclusive: verification stops trying further candidates. On dev the
#: first candidate tried reaches it for most queries (median 1 tried instead of 86), at the same
#: hit@1 (0.953 against 0.951 trying all within an unlimited budget).
CONCLUSIVE_INLIERS = 100
#: Keypoints of the candidate's region at the query's scale, and the scale range of the
#: re-matched fit (the region is already scaled to the query).
REFINE_FEATURES = 1500
REFINE_SCALE_RANGE = (0.5, 2.0)
#: Margin (share of the region's side) added around the query's placement before re-matching.
REFINE_MARGIN = 0.1


@dataclass(frozen=True)
class LocalFeatures:
    """An image's keypoints (x, y at its working size) and their binary descriptors."""

    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, 32) uint8
    size: tuple[int, int]  # working (width, height)

    @property
    def count(self) -> int:
        return int(len(self.points))


_optional: dict[str, Any] = {}  # module name -> the module, or None: not installed
_lock = threading.Lock()


def optional_module(name: str, missing: str) -> Any:
    """The module ``name``, imported on first use, or None when it is not installed (then
    ``missing`` is logged, once per process)."""
    with _lock:
        if name not in _optional:
            try:
                _optional[name] = importlib.import_module(name)
            except ImportError:
                _optional[name] = None
                log.warning(missing)
        return _optional[name]


def opencv() -> Any:
    """The ``cv2`` module, or None when OpenCV is not installed (logged once)."""
    return optional_module("cv2", "OpenCV (cv2) is not installed: image queries are not "
                                  "verified against their candidates (pip install "
                                  "opencv-python-headless)")


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


def file_features(path: Path, side: int = CANDIDATE_SIDE,
                  n: int = CANDIDATE_FEATURES) -> LocalFeatures:
    """Features of a stored image file at a long side of ``side``, decoded at half size when
    that keeps it large enough (JPEG decodes in scaled-down DCT, several times faster)."""
    gray = _read_gray(path, reduced=True, least=side)
    return features(gray, side, side, n=n)


def word_features(path: Path) -> LocalFeatures:
    """The features the visual-word index quantises (:data:`WORD_SIDE`, :data:`WORD_FEATURES`)."""
    return file_features(path, WORD_SIDE, WORD_FEATURES)


def _read_gray(path: Path, reduced: bool = False, least: int = 0) -> np.ndarray:
    """A stored image file as greyscale uint8; ``reduced`` decodes at half size when its long
    side stays at least ``least``."""
    cv2 = opencv()
    gray = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2) if reduced else None
    if gray is None or max(gray.shape) < least:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise OSError(f"cannot decode {path}")
    return gray


@dataclass(frozen=True)
class Fit:
    """A similarity fit of a query into a candidate: its distinct inliers and the transform
    (2 x 3, query working pixels -> candidate working pixels; None without a fit)."""

    count: int
    model: np.ndarray | None = None


NO_FIT = Fit(0)


def match(query: LocalFeatures, candidate: LocalFeatures, least: int = REFINE_FROM,
          scale_range: tuple[float, float] = SCALE_RANGE) -> Fit:
    """The RANSAC similarity fit of ``query``'s ratio-test matches into ``candidate``
    (:data:`NO_FIT` with fewer than ``least`` matches, or a scale outside ``scale_range``)."""
    if query.count < 2 or candidate.count < 2:
        return NO_FIT
    cv2 = opencv()
    import faiss  # the serve role's vector search library; its binary index is 6x faster
    # than OpenCV's brute-force Hamming matcher here

    index = faiss.IndexBinaryFlat(candidate.descriptors.shape[1] * 8)
    index.add(candidate.descriptors)
    with one_omp_thread():
        dist, nearest = index.search(query.descriptors, 2)
    good = np.nonzero((nearest[:, 1] >= 0) & (dist[:, 0] < RATIO * dist[:, 1]))[0]
    if len(good) < max(4, least):  # fewer matches than needed: no fit can count
        return NO_FIT
    src = query.points[good]
    dst = candidate.points[nearest[good, 0]]
    model, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=500,
        confidence=0.99)
    if model is None or mask is None:
        return NO_FIT
    scale = float(np.hypot(model[0, 0], model[1, 0]))
    if not scale_range[0] <= scale <= scale_range[1]:
        return NO_FIT
    return Fit(_distinct_inliers(dst[mask.ravel().astype(bool)]), model)


def refine(query: LocalFeatures, fit: Fit, candidate: LocalFeatures, path: Path) -> int:
    """Inliers of the query re-matched against the candidate's region where ``fit`` places it,
    cut from the stored image and scaled to the query's own scale (guided re-matching).

    A crop or panel covers a small part of the whole figure, so few of the candidate's
    keypoints fall inside it and few of those were found at the query's scale: a weak first
    fit. Its placement is still roughly right, and the region alone, at the query's scale,
    holds as many keypoints as the query (a true source: 150-300 inliers); a wrong figure's
    region matches by chance (under 15 for nearly all weak fits on dev)."""
    if fit.model is None:
        return 0
    region = _placed_region(query, fit.model, candidate, _read_gray(path))
    if region is None:
        return 0
    local = features(region, max(region.shape), max(region.shape), n=REFINE_FEATURES)
    return match(query, local, scale_range=REFINE_SCALE_RANGE).count


def _placed_region(query: LocalFeatures, model: np.ndarray, candidate: LocalFeatures,
                   gray: np.ndarray) -> np.ndarray | None:
    """The part of the stored image (``gray``, full size) where ``model`` (a fit's transform)
    places the query, with a :data:`REFINE_MARGIN`, scaled to the query's working scale; None
    for a placement too small or absurdly large."""
    height, width = gray.shape
    zoom = width / candidate.size[0]  # candidate working pixels -> stored pixels
    qw, qh = query.size
    corners = np.array([[0, 0, 1], [qw, 0, 1], [0, qh, 1], [qw, qh, 1]], float) @ model.T
    (x0, y0), (x1, y1) = corners.min(0) * zoom, corners.max(0) * zoom
    mx, my = REFINE_MARGIN * (x1 - x0), REFINE_MARGIN * (y1 - y0)
    x0, y0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
    x1, y1 = min(width, int(x1 + mx) + 1), min(height, int(y1 + my) + 1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    to_query = 1.0 / (float(np.hypot(model[0, 0], model[1, 0])) * zoom)
    size = (max(1, round((x1 - x0) * to_query)), max(1, round((y1 - y0) * to_query)))
    if max(size) > 4 * max(query.size):  # an absurd placement: nothing to re-match
        return None
    cv2 = opencv()
    return cv2.resize(gray[y0:y1, x0:x1], size,
                      interpolation=cv2.INTER_AREA if to_query < 1 else cv2.INTER_CUBIC)


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
    with _lock:
        cache = _caches.get(size)
        if cache is None:
            cache = _caches[size] = FeatureCache(size)
        return cache


@dataclass
class Tried:
    """A candidate verification tried: its first fit, features and stored image (what
    :func:`refine` needs)."""

    fit: Fit
    features: LocalFeatures
    path: Path


def verify(
    query: LocalFeatures, candidates: Sequence[tuple[int, dict[str, Any]]], images_dir: Path,
    cache: FeatureCache, deadline: float, min_inliers: int | None = None,
    tried_fits: dict[int, Tried] | None = None, conclusive: int | None = None,
) -> tuple[dict[int, int], int]:
    """Inlier counts of the candidates (id, store row) verified before ``deadline``
    (``time.perf_counter()`` seconds), tried in the given order, and how many were tried.

    Only counts of at least ``min_inliers`` (default :data:`MIN_INLIERS`) are returned; every
    fit of at least :data:`REFINE_FROM` goes into ``tried_fits`` when given. A fit of
    ``conclusive`` inliers ends the search. A candidate without a readable stored image is
    skipped.
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
        fit = match(query, feats)
        if fit.count >= least:
            found[fid] = fit.count
        if tried_fits is not None and fit.count >= REFINE_FROM:
            tried_fits[fid] = Tried(fit, feats, path)
        if conclusive is not None and fit.count >= conclusive:
            break
    return found, tried


def refined(query: LocalFeatures, verified: dict[int, int], tried: dict[int, Tried],
            deadline: float) -> dict[int, int]:
    """``verified`` after guided re-matching (:func:`refine`) before ``deadline``:

    - nothing verified: the :data:`REFINE_WEAK` strongest weak fits are re-matched, strongest
      first, and the first with :data:`REFINE_MIN_INLIERS` re-matched inliers is verified;
    - several verified within :data:`REFINE_CLOSE` of the best count: the top
      :data:`REFINE_TOP` are re-matched and ranked by the larger of their counts (a wrong
      figure sharing a few keypoints can outscore a small crop's source in the first fit).
    """
    out = dict(verified)
    if out:
        best = max(out.values())
        close = sorted((i for i in out if out[i] >= REFINE_CLOSE * best and i in tried),
                       key=lambda i: -out[i])[:REFINE_TOP]
        todo, first_only = (close if len(close) > 1 else []), False
    else:
        weak = sorted(tried, key=lambda i: -tried[i].fit.count)
        todo, first_only = weak[:REFINE_WEAK], True
    for fid in todo:
        if time.perf_counter() >= deadline:
            break
        t = tried[fid]
        try:
            count = refine(query, t.fit, t.features, t.path)
        except OSError as exc:
            log.debug("figure %s: not re-matched (%s)", fid, exc)
            continue
        if count >= REFINE_MIN_INLIERS:
            out[fid] = max(out.get(fid, 0), count)
            if first_only:
                break
    return out


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
    with timing.stage("source"):
        head = service.search_vector(vector, pool_n, 0, flt, dedup, label="<image>")
        verified, extra = _verify_pool(service, image, head.hits, flt, dedup, vector, deadline)
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


def _verify_pool(service: SearchService, image: Any, dense: list[SearchHit],
                 flt: FigureFilter | None, dedup: bool, vector: np.ndarray, deadline: float
                 ) -> tuple[dict[int, int], list[SearchHit]]:
    """The verified inlier counts of the candidate pool and the verified hits from outside the
    dense list: dense and visual-word candidates until one is conclusive; query OCR (with
    ``settings.query_ocr``) started only when the first :data:`OCR_AFTER` were not, its
    candidates tried when nothing else was conclusive; then guided re-matching in the time
    reserved for it."""
    query = query_features(image)
    settings = service.settings
    cache = feature_cache(settings.source_feature_cache)
    words = _word_candidates(service, query, flt, dense, dedup, vector)
    pool = _interleaved(dense, words)
    run = SourceRun([h.id for h in pool])
    _last.run = run
    tried: dict[int, Tried] = {}
    verify_until = deadline - REFINE_RESERVE_MS / 1000.0

    def verified_among(hits: list[SearchHit]) -> dict[int, int]:
        found, n = verify(query, [(h.id, h.figure) for h in hits], settings.images_dir, cache,
                          verify_until, tried_fits=tried, conclusive=CONCLUSIVE_INLIERS)
        run.tried += n
        return found

    def conclusive(found: dict[int, int]) -> bool:
        return max(found.values(), default=0) >= CONCLUSIVE_INLIERS

    verified = verified_among(pool[:OCR_AFTER])
    ocr = (_QueryOcr(image) if settings.query_ocr and not conclusive(verified)
           and query_ocr_available() else None)
    try:
        if not conclusive(verified):
            verified.update(verified_among(pool[OCR_AFTER:]))
        more = (_ocr_candidates(service, ocr, run, verify_until, flt, {h.id for h in pool},
                                vector) if ocr is not None and not conclusive(verified) else [])
    finally:
        if ocr is not None:
            ocr.drop()
    run.pool += [h.id for h in more]
    verified.update(verified_among(more))
    verified = refined(query, verified, tried, deadline)
    run.verified = verified
    run.out_of_time = time.perf_counter() >= deadline
    dense_ids = {h.id for h in dense}
    return verified, [h for h in words + more if h.id in verified and h.id not in dense_ids]


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
#: Candidates verified before query OCR starts: when one of them is conclusive (most queries)
#: the query needs no OCR, and OCR would only take CPU from verification.
OCR_AFTER = 10
#: Text boxes of the query image read (the widest word-shaped ones): on these cores detection
#: costs about 45 ms an image and reading about 15 ms a box, and reading every box of a figure
#: took a median 0.34 s (p90 0.8 s) on 40 dev queries; 12 boxes keep 0.67 of its words.
OCR_BOXES = 12
#: Words of the query image searched in the keyword index, and the candidates taken from it.
OCR_WORDS = 24
OCR_CANDIDATES = 10
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")
_ocr_lock = threading.Lock()  # one query OCR at a time per process: the engine is not shared
_ocr_engine: Any = None


@atexit.register
def _wait_for_query_ocr() -> None:
    """At exit, let a query OCR still running finish (up to 2 s): the interpreter stopping a
    thread inside onnxruntime aborts the process."""
    if _ocr_lock.acquire(timeout=2.0):
        _ocr_lock.release()


def ocr_words(text: str, limit: int = OCR_WORDS) -> list[str]:
    """The distinct words of OCR text worth searching: 3+ characters starting with a letter
    (axis ticks, panel letters and stray digits say nothing), in reading order."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        seen.setdefault(word.lower(), word)
    return list(seen.values())[:limit]


def query_ocr_available() -> bool:
    """Whether the OCR engine (rapidocr, the ``ocr`` extra) is installed; a serve-only install
    without it answers image queries without query OCR, logged once."""
    return optional_module("rapidocr_onnxruntime", "query OCR is on but rapidocr is not "
                           "installed: image queries go without it (pip install "
                           "'figsearch[ocr]')") is not None


def read_query_text(image: Any, wanted: Callable[[], bool] = lambda: True) -> str:
    """The text rapidocr reads in a query image at :data:`QUERY_OCR_SIDE`: detection, then -
    when the query still ``wanted`` it - the :data:`OCR_BOXES` widest word-shaped boxes (one
    engine per process, made on first use; callers hold ``_ocr_lock``)."""
    global _ocr_engine
    from indexer.ocr import detect, make_engine, read_widest

    if _ocr_engine is None:
        _ocr_engine = make_engine(threads=1)
    small = image.copy()
    small.thumbnail((QUERY_OCR_SIDE, QUERY_OCR_SIDE))
    found = detect(_ocr_engine, small)
    return read_widest(_ocr_engine, found, OCR_BOXES) if wanted() else ""


class _QueryOcr:
    """Query OCR on a background thread, started before the dense search and used if it ends
    before the deadline. One runs at a time per process: a query arriving while another's OCR
    runs goes without (the engine's CPU is the bound). A query that ends without needing the
    words (:meth:`drop`) stops its OCR after detection, so it does not hold the CPU long."""

    def __init__(self, image: Any) -> None:
        self.words: list[str] | None = None
        self.ms: float | None = None
        self._done = threading.Event()
        self._dropped = threading.Event()
        if not _ocr_lock.acquire(blocking=False):
            self._done.set()
            return
        threading.Thread(target=self._run, args=(image,), daemon=True,
                         name="query-ocr").start()

    def _run(self, image: Any) -> None:
        start = time.perf_counter()
        try:
            self.words = ocr_words(read_query_text(image, lambda: not self._dropped.is_set()))
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

    def drop(self) -> None:
        """The query no longer needs the words: stop after the current stage."""
        self._dropped.set()


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
