"""The search service: text, image, vector and similar-figure search over one index version.

Modes for text queries:

* ``dense``   - the query text is encoded by the CLIP text tower and looked up in the FAISS index;
* ``keyword`` - BM25 over caption, label, article title and in-figure text (OCR): the
  version's tantivy index (whole text, plus weighted fields: ``settings.keyword_weights``), top-k
  with block-max WAND (:mod:`figsearch.keyword_index`), or the store's FTS5 table
  (``settings.fts_weights``) for versions built without one;
* ``caption`` - the query's sentence embedding against the caption-semantics index
  (:mod:`figsearch.caption_index`);
* ``hybrid``  - (default) weighted fusion of the live signals (:mod:`figsearch.fusion`): caption
  semantics, BM25 and - when its build-time quality check passed - the image model, with weights
  chosen on the dev split of the real-figure query set. An untrained image model is left out,
  and image embeddings that cannot tell unrelated figures apart are not used for near-duplicate
  collapse (:func:`figsearch.fusion.vector_dedup_ok`), so a weak model cannot bury text matches.

Filters (:class:`~figsearch.store.FigureFilter`) are applied *before* truncation to ``k``: the
dense search only considers the figure ids that pass the filter (``allowed_ids``), keyword search
filters in SQL, so a filtered query returns ``k`` results whenever ``k`` matching figures exist.

Near-duplicates are collapsed by default: a result is dropped when an earlier (better ranked)
result has the same image (sha256) or an embedding with cosine similarity above
``settings.dedup_threshold``. Paging (``offset``) is applied after the collapse, so pages never
overlap and never repeat a duplicate.

Highlights mark exactly the words the keyword index matches (same analysis: stems, folded
diacritics, no stopwords), in the caption and in the in-figure text, for every mode: computed
from the page's own text by :meth:`figsearch.keyword_index.KeywordIndex.highlights` (FTS5's
``highlight()``/``snippet()`` for versions without a keyword index).

Every hit also says why it matched (``SearchHit.signals``: each signal's part in its score, the
keyword fields and words, the caption passage, the image cosine) and every text query whether its
best matches are strong or weak (``SearchPage.match``); both come from :mod:`figsearch.explain`,
are computed for the page only, after the ranking, and never change it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import html
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import numpy as np

from figsearch import timing
from figsearch.caption_index import best_passages, whole_index
from figsearch.columns import AllowedSet, VersionColumns
from figsearch.core.config import Settings
from figsearch.encoders import start_query_encoding
from figsearch.explain import (
    STRONG_KEYWORD_COVERAGE,
    HitSignal,
    MatchQuality,
    assess,
    keyword_coverage,
    keyword_evidence,
)
from figsearch.fusion import (
    FusionConfig,
    SignalResult,
    dense_reliable,
    explain,
    fuse,
    fusion_from_settings,
    vector_dedup_ok,
)
from figsearch.index import SUBSET_CACHE_SIZE
from figsearch.keyword_index import KeywordIndex, all_words_then_any
from figsearch.links import PMC_ARTICLE_URL, article_url, figure_url  # noqa: F401 (re-exported)
from figsearch.panel_index import (
    PanelIndex,
    PanelMatch,
    choose_text_panel,
    match_of,
    own_subcaption,
    subcaption_cosines,
)
from figsearch.source_match import find_source
from figsearch.store import FigureFilter, FigureStore

MODES = ("hybrid", "dense", "keyword", "caption")
_DUP_BLOCK = 512  # candidate rows per near-duplicate matrix product
RRF_K = 60
#: filters a service remembers as recently answered: a version swapped in prepares these
#: (:meth:`SearchService.prepare_filters`), as many as an index keeps plans for
RECENT_FILTERS = SUBSET_CACHE_SIZE
#: the UI's two license toggles, one click away for every user: the API prepares them whenever
#: it loads a version, a fresh process's first included
ONE_CLICK_FILTERS = (FigureFilter(commercial_only=True), FigureFilter(reusable_only=True))
_WORD = re.compile(r"\w+", re.UNICODE)
log = logging.getLogger("figsearch.search")


def newest_filters(filters: Sequence[FigureFilter], keep: int = RECENT_FILTERS
                   ) -> list[FigureFilter]:
    """Each filter once, where it came last in ``filters`` (oldest first); the newest
    ``keep``."""
    latest: dict[tuple[Any, ...], FigureFilter] = {}
    for flt in filters:
        key = dataclasses.astuple(flt)
        latest.pop(key, None)
        latest[key] = flt
    return list(latest.values())[-keep:]


class SearchInputError(ValueError):
    """A query the service refuses; the message says what is wrong (API: 4xx)."""


class SignalUnavailable(SearchInputError):
    """A well-formed query for a signal the served index version lacks (no image model, no
    caption index): the request is fine, the server's state cannot answer it (API: 409)."""


class FigureNotFound(LookupError):
    """A figure id that is not in the store or not in the index (API: 404)."""


class TextImageEncoder(Protocol):
    model_key: str
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list[Any]) -> np.ndarray: ...


class VectorIndex(Protocol):
    version: str

    @property
    def dim(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | AllowedSet | None = None,
        rerank: bool = True, rerank_factor: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors_for(self, ids: Any) -> np.ndarray: ...

    def scores_for(self, qvec: np.ndarray, ids: list[int]) -> dict[int, float]: ...

    def rows_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class SearchHit:
    """One result: the figure's store row plus rank, score and FTS5 highlights.

    ``caption_highlighted`` is the HTML-escaped caption with the tokens FTS5 matched in
    ``<mark>``; ``ocr_snippet`` the best matching window of the in-figure text ("" when the
    query matched none of it). ``signals``: why it matched (:mod:`figsearch.explain`).
    ``panel``: the panel of a compound figure that matched best (:mod:`figsearch.panel_index`),
    or None when the figure as a whole matched best.
    """

    id: int
    rank: int
    score: float
    figure: dict[str, Any]
    caption_highlighted: str
    ocr_snippet: str = ""
    signals: list[HitSignal] = field(default_factory=list)
    panel: PanelMatch | None = None


@dataclass
class SearchPage:
    """One page of results for one query."""

    query: str
    mode: str
    k: int
    offset: int
    index_version: str
    took_ms: float
    hits: list[SearchHit] = field(default_factory=list)
    #: strong | weak | none for text queries (:func:`figsearch.explain.assess`); None else
    match: MatchQuality | None = None


# -- rank fusion and links ------------------------------------------------------
def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of 1 / (k + rank), rank from 1.

    Returns (id, score) best first; ties keep the order of first appearance. This is
    :func:`figsearch.fusion.fuse`'s ``rrf`` method with equal weights (one implementation).
    """
    names = [str(i) for i in range(len(rankings))]
    results = {name: SignalResult([int(d) for d in ranking], [0.0] * len(ranking))
               for name, ranking in zip(names, rankings, strict=True)}
    return fuse(results, FusionConfig(dict.fromkeys(names, 1.0), method="rrf", rrf_k=k))


def query_terms(query: str) -> set[str]:
    """Distinct lower-case words of a query (as the keyword index sees them)."""
    return {w.lower() for w in _WORD.findall(query)}


def _row_ids(index: Any) -> np.ndarray | None:
    """The figure ids of a vector index's rows that filters apply to (a caption index with
    passages or panels filters its whole-caption index), or None."""
    ids = getattr(whole_index(index), "ids", None)
    return ids if isinstance(ids, np.ndarray) else None


# -- the service ----------------------------------------------------------------------------
@dataclass
class _Candidates:
    ids: list[int]
    scores: list[float]
    exhausted: bool  # True when no deeper fetch can find more


@dataclass
class _Started:
    """What :meth:`SearchService.start_signals` searched and encoded for a text query."""

    keyword: _Candidates | None = None  # a hybrid query's keyword top list
    qvec: np.ndarray | None = None  # the image model's text vector (1, dim)
    cvec: np.ndarray | None = None  # the caption model's query vector
    vectors: dict[str, _Candidates] | None = None  # vector signals searched meanwhile


@cache
def _query_pool() -> ThreadPoolExecutor:
    """Threads that search a hybrid query's keyword index while its request thread searches
    the vector indexes: one per request the API runs at once (anyio's default 40)."""
    return ThreadPoolExecutor(max_workers=40, thread_name_prefix="keyword-query")


class SearchService:
    """Search over one (store, index, encoder); cheap to create, safe to share across threads."""

    def __init__(
        self, store: FigureStore, index: VectorIndex | None, encoder: TextImageEncoder | None,
        settings: Settings, captions: Any = None, fusion: FusionConfig | None = None,
        columns: VersionColumns | None = None, keywords: KeywordIndex | None = None,
        text_only: bool = False, panels: Any = None, visual_words: Any = None,
    ) -> None:
        self.store = store
        # the version's visual-word index (figsearch.source_match.VisualWordIndex), or None
        self.visual_words = visual_words
        # the image index with the version's panel crops (MaxP) for image queries, or None
        self.panels: PanelIndex | None = panels if isinstance(panels, PanelIndex) else None
        self.keywords = keywords  # the version's tantivy index; None: the store's FTS5
        self.text_only = text_only  # a version built without an image index
        # the version's columnar filter metadata (figsearch.columns): filters without a SQL
        # scan; None for versions built without it (then store.filtered_ids answers)
        self.columns = columns
        if columns is not None:  # line the indexes' rows up with the columns now, not at a
            # first filtered query (one searchsorted per index)
            row_ids = [_row_ids(i) for i in (index, getattr(captions, "index", None))]
            columns.prepare(*(ids for ids in row_ids if ids is not None))
        self.index = index
        self.encoder = encoder
        self.settings = settings
        self.captions = captions  # a figsearch.caption_index.CaptionSignal, or None
        self.fusion = fusion or fusion_from_settings(settings)
        # An image model that failed its build-time quality check (e.g. untrained) is neither
        # fused nor trusted for near-duplicate collapse.
        manifest = getattr(index, "manifest", None)
        self.dense_reliable = dense_reliable(manifest)
        self.vector_dedup = vector_dedup_ok(manifest, settings.dedup_threshold)
        # Filtered id sets, reused across queries: a service lives as long as its index
        # version, and ids the store dropped since are discarded again by get_figures.
        self._allowed_cache: OrderedDict[tuple[Any, ...], AllowedSet] = OrderedDict()
        self._cache_lock = threading.Lock()
        # the filters answered most recently (oldest first): what a successor version prepares
        self._recent_filters: OrderedDict[tuple[Any, ...], FigureFilter] = OrderedDict()

    @property
    def index_version(self) -> str:
        if self.index is not None:
            return self.index.version
        # a text-only version: its caption index carries the version name
        return self.captions.index.version if self.captions is not None else ""

    def signals(self) -> dict[str, bool]:
        """Which signals can answer now (``dense`` also needs a passed quality check)."""
        return {
            "keyword": True, "caption": self.captions is not None,
            "dense": self.index is not None and self.encoder is not None and self.dense_reliable,
        }

    def fused_signals(self) -> list[str]:
        """The live signals the default (hybrid) mode combines (weight > 0)."""
        return [s for s, live in self.signals().items() if live and self.fusion.weight(s) > 0]

    # -- public entry points ------------------------------------------------------------
    def search_text(
        self, query: str, k: int = 20, offset: int = 0, mode: str = "hybrid",
        flt: FigureFilter | None = None, dedup: bool = True,
    ) -> SearchPage:
        """Text query in ``mode`` hybrid | dense | keyword."""
        query = self.check_query(query)
        if mode not in MODES:
            raise SearchInputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        flt = flt or FigureFilter()
        self._check_page(k, offset)
        start = time.perf_counter()
        use = self.fused_signals() if mode == "hybrid" else [mode]
        started = self.start_signals(query, mode, flt, use)
        qvec, cvec = started.qvec, started.cvec

        fused: dict[str, dict[str, SignalResult]] = {}  # the last fetch's signals (hybrid)

        def fetch(n: int) -> _Candidates:
            if mode == "keyword":
                return self._keyword(query, n, flt)
            if mode == "dense":
                return self._dense(qvec, n, flt)  # type: ignore[arg-type]
            if mode == "caption":
                return self._caption(cvec, n, flt)  # type: ignore[arg-type]
            depth = max(n, self.settings.fusion_depth)
            ahead = started if depth == self.settings.fusion_depth else _Started()
            fused["signals"] = self.signal_results(
                query, depth, flt, use, qvec, cvec, keyword=ahead.keyword, searched=ahead.vectors)
            return self._fuse(fused["signals"])

        hits = self._collect(fetch, k, offset, dedup, query)
        with timing.stage("explain"):
            results = fused.get("signals")
            panels = self.store.compound_panels({h.id: h.figure for h in hits}) if hits else {}
            self._explain(query, mode, hits, results, cvec, panels)
            self._text_panels(query, hits, cvec, panels)
            match = self._match_quality(query, flt, hits, results or {}, cvec, offset)
        return self._page(query, mode, k, offset, start, hits, match)

    def start_signals(self, query: str, mode: str, flt: FigureFilter, use: Sequence[str]
                      ) -> _Started:
        """What a text query searches before fusion, at the fusion depth: the keyword top list
        of a hybrid query and the query vectors, with a hybrid query's vector searches done
        too where its filter is ready (:meth:`_filter_ready`).

        The model thread encodes while the keyword index is searched. A hybrid query whose
        filter is ready searches the keyword index on a thread of its own and each vector
        index as soon as its encoding is ready, so the vector searches overlap the keyword
        search instead of following it: the keyword search is the longest part at 15 M
        figures (37-40 ms under the encoding's load, against 12-21 ms for the encodings).
        A filter's first use keeps the order keyword search, plans (:meth:`_prepare_filter`),
        vector searches: preparing the plans beside the keyword search was slower at 15 M
        figures (first use 97-118 ms -> 133-200 ms, 5 fresh processes each), as encoding and
        the keyword shards already keep both cores busy."""
        text_vector = self._start_text(query) if "dense" in use else None
        caption_vector = self._start_caption_query(query) if "caption" in use else None
        hybrid = mode == "hybrid" and "keyword" in use
        if hybrid and self._filter_ready(flt, use):
            return self._overlapped(query, flt, text_vector, caption_vector)
        ahead = self._keyword(query, self.settings.fusion_depth, flt, hybrid=True) \
            if hybrid else None
        self._prepare_filter(flt, use)
        qvec = text_vector() if text_vector else None
        cvec = caption_vector() if caption_vector else None
        return _Started(ahead, qvec, cvec)

    def _overlapped(self, query: str, flt: FigureFilter,
                    text_vector: Callable[[], np.ndarray] | None,
                    caption_vector: Callable[[], np.ndarray] | None) -> _Started:
        """A hybrid query's searches at the fusion depth: the keyword index on a pool thread
        (with this request's context, so its stage timing counts), the vector indexes here,
        each as soon as the model thread has its query vector (the image model's text tower
        is encoded first)."""
        depth = self.settings.fusion_depth
        keyword = _query_pool().submit(contextvars.copy_context().run,
                                       self._keyword, query, depth, flt, True, True)
        vectors: dict[str, _Candidates] = {}
        qvec = text_vector() if text_vector else None
        if qvec is not None:
            vectors["dense"] = self._dense(qvec, depth, flt)
        cvec = caption_vector() if caption_vector else None
        if cvec is not None:
            vectors["caption"] = self._caption(cvec, depth, flt)
        return _Started(keyword.result(), qvec, cvec, vectors)

    def _filter_ready(self, flt: FigureFilter, signals: Sequence[str]) -> bool:
        """Whether a query with ``flt`` finds made what its vector searches read: the allowed
        set (in the columns' cache) and every vector index's plan. Nothing is computed."""
        if flt.is_empty():
            return True
        allowed = self.columns.cached(flt) if self.columns is not None else None
        if allowed is None:
            return False
        if allowed.count == 0:
            return True
        for index in self._vector_indexes(signals):
            has_plan = getattr(whole_index(index), "has_plan", None)  # others plan inline
            if has_plan is not None and not has_plan(allowed):
                return False
        return True

    def _vector_indexes(self, signals: Sequence[str]) -> list[VectorIndex]:
        """The vector indexes of the named signals (dense: the image index; caption)."""
        out = []
        for name in signals:
            if name == "dense" and self.index is not None:
                out.append(self.index)
            elif name == "caption" and self.captions is not None:
                out.append(self.captions.index)
        return out

    def search_vector(
        self, vector: Sequence[float] | np.ndarray, k: int = 20, offset: int = 0,
        flt: FigureFilter | None = None, dedup: bool = True, exclude: Sequence[int] = (),
        label: str = "<vector>",
    ) -> SearchPage:
        """Dense search with a raw embedding (normalised here; wrong dim / non-finite refused)."""
        qvec = self.check_vector(vector)
        self._check_page(k, offset)
        flt = flt or FigureFilter()
        start = time.perf_counter()
        excluded = {int(i) for i in exclude}

        index = self.panels or self._require_index()  # figures score as their best panel

        def fetch(n: int) -> _Candidates:
            cands = self._vector_search(index, qvec, n + len(excluded), flt)
            keep = [(i, s) for i, s in zip(cands.ids, cands.scores, strict=True) if i not in excluded]
            return _Candidates([i for i, _ in keep], [s for _, s in keep], cands.exhausted)

        hits = self._collect(fetch, k, offset, dedup, "")
        for h in hits:  # the hit's score is the image cosine itself
            h.signals = [HitSignal("dense", h.score, h.score, 1.0, None, h.rank)]
        self._image_panels(qvec, hits)
        return self._page(label, "dense", k, offset, start, hits)

    def search_image(
        self, image: Any, k: int = 20, offset: int = 0, flt: FigureFilter | None = None,
        dedup: bool = True,
    ) -> SearchPage:
        """Search by example image (a decoded RGB PIL image); the figures it is verified to be
        a crop, panel, screenshot or copy of come first (:mod:`figsearch.source_match`)."""
        encoder = self._require_encoder()
        vector = encoder.encode_images([image])[0]
        return find_source(self, image, vector, k, offset, flt, dedup)

    def similar(
        self, figure_id: int, k: int = 20, offset: int = 0, flt: FigureFilter | None = None,
        dedup: bool = True,
    ) -> SearchPage:
        """Figures similar to a stored figure; the figure itself and copies of it are left out."""
        figure = self.store.get_figure(figure_id)
        if figure is None:
            raise FigureNotFound(f"no figure with id {figure_id}")
        vector = self._vector_of(figure_id)
        copies = self._same_image_ids(figure, figure_id)
        return self.search_vector(
            vector, k, offset, flt, dedup, exclude=[figure_id, *copies], label=f"similar:{figure_id}"
        )

    # -- validation ---------------------------------------------------------------------
    def check_query(self, query: str) -> str:
        """The stripped query, or SearchInputError for empty / too long queries."""
        query = (query or "").strip()
        if not query:
            raise SearchInputError("query is empty; type some words to search for")
        if len(query) > self.settings.max_query_chars:
            raise SearchInputError(
                f"query is {len(query)} characters long; the limit is "
                f"{self.settings.max_query_chars}"
            )
        return query

    def check_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """A (1, dim) float32 unit vector, or SearchInputError saying what is wrong."""
        index = self._require_index()
        try:
            arr = np.asarray(vector, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise SearchInputError(f"vector is not a list of numbers: {exc}") from exc
        if arr.shape[0] != index.dim:
            raise SearchInputError(
                f"vector has {arr.shape[0]} dimensions; the index has {index.dim}"
            )
        if not np.all(np.isfinite(arr)):
            raise SearchInputError("vector contains NaN or infinite values")
        # Scale by the largest component first, so tiny or huge values neither underflow
        # nor overflow on their way to a float32 unit vector.
        peak = float(np.max(np.abs(arr)))
        if peak == 0.0:
            raise SearchInputError("vector is all zeros")
        arr = arr / peak
        return (arr / np.linalg.norm(arr)).astype(np.float32).reshape(1, -1)

    def _check_page(self, k: int, offset: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise SearchInputError(f"k must be between 1 and {self.settings.max_k}, got {k}")
        if not 0 <= offset <= self.settings.max_offset:
            raise SearchInputError(
                f"offset must be between 0 and {self.settings.max_offset}, got {offset}"
            )

    def _require_index(self) -> VectorIndex:
        if self.index is None and self.text_only:
            raise SignalUnavailable(
                f"dense and image search are unavailable: index version {self.index_version} "
                "is text-only (keyword and caption search); build the image index with "
                "`figsearch index`")
        if self.index is None:
            raise SignalUnavailable("no index is loaded; run `figsearch index` first")
        return self.index

    def _require_encoder(self) -> TextImageEncoder:
        if self.encoder is None and self.text_only:
            self._require_index()  # says what a text-only version lacks
        if self.encoder is None:
            raise SignalUnavailable("no model is loaded; dense and image search are unavailable")
        return self.encoder

    # -- candidate sources --------------------------------------------------------------
    def _encode_text(self, query: str) -> np.ndarray:
        return self._start_text(query)()

    def _start_text(self, query: str) -> Callable[[], np.ndarray]:
        """Start encoding ``query`` with the image model's text tower (on the model thread
        when it batches there); the returned call waits for the (1, dim) vector."""
        return start_query_encoding(self._require_encoder(), query)

    def _encode_caption_query(self, query: str) -> np.ndarray:
        return self._start_caption_query(query)()

    def _start_caption_query(self, query: str) -> Callable[[], np.ndarray]:
        """Start encoding ``query`` with the caption model; the returned call waits for it."""
        if self.captions is None:
            raise SignalUnavailable(
                "caption search is unavailable: the index has no caption index "
                "(set FIGSEARCH_CAPTION_MODEL and rebuild with `figsearch index`)"
            )
        return self.captions.start(query)

    def _caption(self, cvec: np.ndarray, n: int, flt: FigureFilter) -> _Candidates:
        return self._vector_search(self.captions.index, cvec, n, flt)

    def _dense(self, qvec: np.ndarray, n: int, flt: FigureFilter) -> _Candidates:
        return self._vector_search(self._require_index(), qvec, n, flt)

    def _vector_search(
        self, index: VectorIndex, qvec: np.ndarray, n: int, flt: FigureFilter
    ) -> _Candidates:
        allowed = None if flt.is_empty() else self._allowed_ids(flt)
        if allowed is not None and allowed.count == 0:
            return _Candidates([], [], True)
        n = max(1, min(n, index.ntotal))
        scores, ids = index.search(
            qvec, n, allowed_ids=allowed, rerank=self.settings.rerank,
            rerank_factor=self.settings.rerank_factor,
        )
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        exhausted = len(pairs) < n or n >= index.ntotal
        return _Candidates([i for i, _ in pairs], [s for _, s in pairs], exhausted)

    def _prepare_filter(self, flt: FigureFilter, signals: Sequence[str]) -> None:
        """What a filter costs the vector signals on its first use, done while the model thread
        encodes the query: the allowed set and each vector index's plan (with the row mask a
        bitmap plan reads: 20-35 ms at 15 M figures, and an exact plan's vectors: ~35 ms per
        15,000 rows). All are cached, so the searches after the encoding find them ready.
        Passages (MaxP parts) are kept to the filter by looking their figures up in the
        allowed set: nothing to prepare."""
        if flt.is_empty():
            return
        allowed = self._allowed_ids(flt)
        if allowed.count == 0:
            return
        for index in self._vector_indexes(signals):
            prepare = getattr(whole_index(index), "prepare", None)  # others plan inline
            if prepare is not None:
                prepare(allowed)

    def filter_prepared(self, flt: FigureFilter) -> bool:
        """Whether a query with ``flt`` would find its allowed set and every vector index's
        plan made (nothing is computed). Without filter columns nothing is ever prepared."""
        if self.columns is None:
            return True
        return self._filter_ready(flt, self._served_vector_signals())

    def _served_vector_signals(self) -> list[str]:
        """The vector signals this version serves (a filter plans for each one's index)."""
        return [s for s in ("dense", "caption") if self.signals()[s]]

    def recent_filters(self) -> list[FigureFilter]:
        """The filters this service answered most recently, oldest first (at most
        :data:`RECENT_FILTERS`)."""
        with self._cache_lock:
            return list(self._recent_filters.values())

    def prepare_filters(self, filters: Sequence[FigureFilter]) -> int:
        """Make what each filter's first query would make - its allowed set and every vector
        index's plan (a bitmap plan's row mask, an exact plan's vectors) - so that a version
        swapped in answers the filters its predecessor was serving at the cost of any query
        (at 15 M figures a first use costs 45-100 ms more). Runs before the swap, off the
        request path. ``filters`` run oldest first; a repeated one counts where it comes last,
        and only the newest :data:`RECENT_FILTERS` (the plans an index keeps) are prepared.
        A filter this version cannot answer (e.g. a feed over a version without
        its history) is skipped and logged. A filter needing the store's SQL (a version without
        filter columns, or without the column it needs) is skipped: that path scans the store
        for each filter (43-53 s at 5 M figures), delaying the swap. Returns how many were
        prepared."""
        if self.columns is None:
            return 0
        signals = self._served_vector_signals()
        prepared = 0
        # oldest first, so the newest end up the most recent in every cache; no more than an
        # index keeps plans for (older ones would only be evicted again)
        for flt in newest_filters(filters):
            if self.columns.needs_sql(flt):
                continue  # a version written before the column it needs: a scan, as above
            try:
                self._prepare_filter(flt, signals)
            except Exception as exc:  # optional work: it must never keep a version out
                log.warning("filter %s not prepared for %s: %s", flt, self.index_version, exc)
                continue
            prepared += not flt.is_empty()
        return prepared

    def _remember_filter(self, flt: FigureFilter) -> None:
        key = dataclasses.astuple(flt)
        with self._cache_lock:
            self._recent_filters[key] = flt
            self._recent_filters.move_to_end(key)
            while len(self._recent_filters) > RECENT_FILTERS:
                self._recent_filters.popitem(last=False)

    def _allowed_ids(self, flt: FigureFilter, max_entries: int = 32) -> AllowedSet:
        """The figures passing ``flt``: from the version's columns when it has them (no SQL
        scan; cached there), else ``store.filtered_ids`` with a small LRU cache keyed by the
        filter's values."""
        self._remember_filter(flt)
        if self.columns is not None:
            return self.columns.allowed(flt)
        key = dataclasses.astuple(flt)
        with self._cache_lock:
            if key in self._allowed_cache:
                self._allowed_cache.move_to_end(key)
                return self._allowed_cache[key]
        ids = AllowedSet.from_ids(self.store.filtered_ids(flt))
        with self._cache_lock:
            self._allowed_cache[key] = ids
            while len(self._allowed_cache) > max_entries:
                self._allowed_cache.popitem(last=False)
        return ids

    def _keyword(self, query: str, n: int, flt: FigureFilter, widen: bool = True,
                 hybrid: bool = False) -> _Candidates:
        """BM25 candidates: the best ``n`` figures containing every query word when there are
        that many, else (``widen``) the best ``n`` containing any of them - for the default
        (``hybrid``) mode found by the query's less common words and scored by all
        (``Settings.keyword_common_share``, :meth:`KeywordIndex.any_word_search`).

        The all-words query is selective and cheap; the any-word query (block-max WAND, still
        18 ms wall and 31 ms CPU at 15 M figures) only runs when the first finds fewer than
        ``n``. Hybrid search widens too: without the partial matches its hit@1 on the dev
        queries fell from 0.913 to 0.812 (the caption and dense lists do not replace them).
        """
        with timing.stage("keyword"):
            return self._keyword_rows(query, n, flt, widen, hybrid)

    def _keyword_rows(self, query: str, n: int, flt: FigureFilter, widen: bool,
                      hybrid: bool = False) -> _Candidates:
        if self.keywords is None:
            return self._fts_rows(query, n, flt, widen)
        allowed = None if flt.is_empty() else self._allowed_set(flt)
        share = self.settings.keyword_common_share if hybrid else 0.0
        rows = self.keywords.ranked(query, n, self.settings.keyword_weights, allowed, flt, widen,
                                    share)
        return _Candidates([i for i, _ in rows], [s for _, s in rows], len(rows) < n)

    def _allowed_set(self, flt: FigureFilter) -> AllowedSet:
        """What ``flt`` lets through, for the keyword index's filter plan (which needs the
        share of all figures: the SQL fallback's set only knows its own count)."""
        allowed = self._allowed_ids(flt)
        if self.columns is None and self.keywords is not None:
            return AllowedSet.from_ids(allowed.ids, max(self.keywords.count, allowed.count))
        return allowed

    def _fts_rows(self, query: str, n: int, flt: FigureFilter, widen: bool) -> _Candidates:
        """Keyword candidates from the store's FTS5 table (versions without a keyword index)."""
        weights = self.settings.fts_weights
        rows = all_words_then_any(
            lambda match_all: self.store.keyword_search(query, n, flt, match_all, weights),
            n, single_word=len(query_terms(query)) <= 1, widen=widen)
        return _Candidates([i for i, _ in rows], [s for _, s in rows], len(rows) < n)

    def signal_results(
        self, query: str, n: int, flt: FigureFilter, signals: Sequence[str],
        qvec: np.ndarray | None = None, cvec: np.ndarray | None = None,
        keyword: _Candidates | None = None, searched: dict[str, _Candidates] | None = None,
    ) -> dict[str, SignalResult]:
        """Each named signal's top ``n`` for the query; vector signals also score the other
        signals' candidates exactly (``extra``). Used by hybrid search and by tuning.
        ``keyword``, ``searched``: the keyword and vector top ``n`` lists already searched
        (:meth:`start_signals`)."""
        out: dict[str, SignalResult] = {}
        vector_signals: dict[str, tuple[VectorIndex, np.ndarray]] = {}
        if "keyword" in signals:
            c = keyword if keyword is not None else self._keyword(query, n, flt, hybrid=True)
            out["keyword"] = SignalResult(c.ids, c.scores, floor=0.0, exhausted=c.exhausted)
        if "caption" in signals:
            cvec = cvec if cvec is not None else self._encode_caption_query(query)
            vector_signals["caption"] = (self.captions.index, cvec)
        if "dense" in signals:
            qvec = qvec if qvec is not None else self._encode_text(query)
            vector_signals["dense"] = (self._require_index(), qvec)
        for name, (index, vec) in vector_signals.items():
            found = (searched or {}).get(name)
            v = found if found is not None else self._vector_search(index, vec, n, flt)
            out[name] = SignalResult(v.ids, v.scores, exhausted=v.exhausted)
        union = {i for r in out.values() for i in r.ids}
        for name, (index, vec) in vector_signals.items():
            out[name].extra = index.scores_for(vec, sorted(union - set(out[name].ids)))
        return out

    def _fuse(self, results: dict[str, SignalResult]) -> _Candidates:
        fused = fuse(results, self.fusion)
        exhausted = all(r.exhausted for r in results.values())
        return _Candidates([i for i, _ in fused], [s for _, s in fused], exhausted)

    # -- explanations -------------------------------------------------------------------
    def _explain(self, query: str, mode: str, hits: list[SearchHit],
                 results: dict[str, SignalResult] | None, cvec: np.ndarray | None,
                 panels: dict[int, list[Any]] | None = None) -> None:
        """Set each hit's ``signals``: the fused parts (hybrid) or the mode's one signal, with
        the keyword fields and words and the caption passage (or panel sub-caption) that
        matched. Page hits only; ``panels``: the compound hits' aligned panels."""
        if results is not None:
            parts = explain(results, self.fusion, [h.id for h in hits])
            for h in hits:
                h.signals = [HitSignal.from_part(p) for p in parts.get(h.id, [])]
        else:
            for h in hits:
                h.signals = [HitSignal(mode, h.score, h.score, 1.0, None, h.rank)]
        passages: dict[int, str] = {}
        if cvec is not None and self.captions is not None:
            passages = best_passages(self.captions.index, cvec, {
                h.id: str(h.figure.get("caption") or "") for h in hits
                if any(s.name == "caption" for s in h.signals)})
            passages.update(self._subcaption_passages(cvec, hits, panels or {}))
        for h in hits:
            for signal in h.signals:
                if signal.name == "keyword":
                    signal.fields, signal.terms = keyword_evidence(query, h.figure)
                elif signal.name == "caption":
                    signal.passage = passages.get(h.id)

    def _subcaption_passages(self, cvec: np.ndarray, hits: list[SearchHit],
                             panels: dict[int, list[Any]]) -> dict[int, str]:
        """{figure id: the sub-caption whose vector is the caption hit's best} where the caption
        score counts sub-captions (MaxP) and one beat the whole caption and its passages."""
        index = self.captions.index if self.captions is not None else None
        if not isinstance(index, PanelIndex) or not panels:
            return {}
        ids = [h.id for h in hits
               if h.id in panels and any(s.name == "caption" for s in h.signals)]
        inner = index.whole.scores_for(cvec, ids)
        out: dict[int, str] = {}
        for fid, (n, score) in index.best_parts(cvec, ids).items():
            text = own_subcaption(panels[fid][n - 1]) if n <= len(panels[fid]) else None
            if text and score > inner.get(fid, float("-inf")):
                out[fid] = text
        return out

    def _image_panels(self, qvec: np.ndarray, hits: list[SearchHit]) -> None:
        """Set ``panel`` on the image-query hits whose best vector is a panel crop rather than
        the whole image (page hits only; one exact product over their panel vectors)."""
        if self.panels is None or not hits:
            return
        ids = [h.id for h in hits]
        whole = self.panels.whole.scores_for(qvec, ids)
        best = {fid: nv for fid, nv in self.panels.best_parts(qvec, ids).items()
                if nv[1] > whole.get(fid, float("-inf"))}
        if not best:
            return
        panels = self.store.compound_panels({h.id: h.figure for h in hits if h.id in best})
        for h in hits:
            if h.id in best and h.id in panels:
                n, score = best[h.id]
                h.panel = match_of(panels[h.id], n, "image", score)

    def _text_panels(self, query: str, hits: list[SearchHit], cvec: np.ndarray | None,
                     panels: dict[int, list[Any]]) -> None:
        """Set ``panel`` on the text-query hits of compound figures (``panels``: their aligned
        panels) whose best sub-caption matches the query better than the whole caption
        (:func:`choose_text_panel`): by sub-caption vectors when the version has them and the
        caption signal is live, and by the query's words in each sub-caption."""
        if not panels:
            return
        subcaptions = getattr(self.captions, "subcaptions", None)
        whole: dict[int, float] = {}
        if subcaptions is not None:
            cvec = cvec if cvec is not None else self._encode_caption_query(query)
            whole = whole_index(self.captions.index).scores_for(cvec, sorted(panels))
        for h in hits:
            if h.id not in panels:
                continue
            cosines = (subcaption_cosines(subcaptions, cvec, h.id)
                       if subcaptions is not None and cvec is not None and h.id in whole
                       else None)
            h.panel = choose_text_panel(query, h.figure, panels[h.id], cosines, whole.get(h.id),
                                        self.settings.panel_margin)

    def _match_quality(self, query: str, flt: FigureFilter, hits: list[SearchHit],
                       results: dict[str, SignalResult], cvec: np.ndarray | None,
                       offset: int = 0) -> MatchQuality:
        """Strong, weak or none (:func:`figsearch.explain.assess`) from the best keyword
        match's share of the query's words and the best caption cosine over the filtered
        collection: the hybrid signals' own lists when they ran, else a top-1 search each - the
        caption one (a query encoding, ~10 ms) only when the keyword match alone is not strong."""
        keyword = results.get("keyword")
        top = keyword.ids[:1] if keyword is not None else self._keyword(query, 1, flt).ids
        coverage = None
        if top:
            on_page = {h.id: h.figure for h in hits}
            figure = on_page.get(top[0]) or self.store.get_figures(top).get(top[0])
            coverage = keyword_coverage(query, figure)
        cosine = None
        caption = results.get("caption")
        if caption is not None:
            cosine = max(caption.scores, default=None)
        elif self.captions is not None and (coverage or 0.0) < STRONG_KEYWORD_COVERAGE:
            vec = cvec if cvec is not None else self._encode_caption_query(query)
            cosine = max(self._caption(vec, 1, flt).scores, default=None)
        return assess(query, bool(hits) or offset > 0, cosine, coverage)

    def _vector_of(self, figure_id: int) -> np.ndarray:
        index = self._require_index()
        try:
            vectors = np.asarray(index.vectors_for(np.array([figure_id], dtype=np.int64)))
        except (KeyError, IndexError, ValueError) as exc:
            raise FigureNotFound(f"figure {figure_id} is not in the current index") from exc
        if vectors.size == 0 or not np.any(vectors):
            raise FigureNotFound(f"figure {figure_id} is not in the current index")
        return vectors.reshape(-1)

    def _same_image_ids(self, figure: dict[str, Any], figure_id: int) -> list[int]:
        sha = figure.get("sha256")
        if not sha:
            return []
        from sqlalchemy import text

        with self.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT id FROM figures WHERE sha256 = :s"), {"s": sha}).all()
        return [int(r[0]) for r in rows if int(r[0]) != figure_id]

    # -- collecting, dedup, paging ------------------------------------------------------
    def _collect(
        self, fetch: Callable[[int], _Candidates], k: int, offset: int, dedup: bool,
        highlight_query: str,
    ) -> list[SearchHit]:
        """Fetch deeper until ``offset + k`` distinct results exist or candidates run out."""
        need = offset + k
        n = need * 2 + 10
        figures: dict[int, dict[str, Any]] = {}
        while True:
            cands = fetch(n)
            kept = self._select(cands, need, dedup, figures)
            if len(kept) >= need or cands.exhausted or n >= 8 * need + 1000:
                break
            n *= 2
        page = kept[offset:need]
        with timing.stage("highlight"):
            if self.keywords is not None:
                marked = self.keywords.highlights(highlight_query, {i: figures[i] for i, _ in page})
            else:
                marked = self.store.highlights(highlight_query, [i for i, _ in page])
        hits = []
        for r, (i, s) in enumerate(page):
            caption, ocr = marked.get(i, (html.escape(figures[i]["caption"] or ""), ""))
            hits.append(SearchHit(i, offset + r + 1, s, figures[i], caption, ocr))
        return hits

    def _select(
        self, cands: _Candidates, need: int, dedup: bool, figures: dict[int, dict[str, Any]]
    ) -> list[tuple[int, float]]:
        """The first ``need`` candidates, in rank order, that are in the store (not retracted)
        and - with ``dedup`` - neither share an image (sha256) with nor nearly equal
        (cosine > ``dedup_threshold``) a better-ranked kept one.

        Store rows are fetched a rank-ordered chunk at a time into ``figures`` (usually one
        query of about ``need`` rows, instead of rows for every candidate); near-duplicates
        come from one matrix product over the candidates' vectors.
        """
        ids, scores = cands.ids, cands.scores
        dups = self._near_duplicates(ids) if dedup else None
        kept: list[tuple[int, float]] = []
        kept_pos: set[int] = set()
        seen_sha: set[str] = set()
        pos, chunk = 0, need + (need // 4 + 5 if dedup else 0)
        while len(kept) < need and pos < len(ids):
            batch = [i for i in ids[pos : pos + chunk] if i not in figures]
            if batch:
                with timing.stage("metadata"):
                    figures.update(self.store.get_figures(batch))
            for p in range(pos, min(pos + chunk, len(ids))):
                fig = figures.get(ids[p])
                if fig is None:
                    continue
                if dups is not None:
                    sha = fig.get("sha256")
                    if (sha and sha in seen_sha) or not kept_pos.isdisjoint(dups[p]):
                        continue
                    if sha:
                        seen_sha.add(sha)
                    kept_pos.add(p)
                kept.append((ids[p], scores[p]))
                if len(kept) >= need:
                    break
            pos += chunk
            chunk *= 2
        return kept

    def _near_duplicates(self, ids: list[int]) -> list[tuple[int, ...]]:
        """Per candidate position, the better-ranked positions whose vector is a near-duplicate
        (cosine > ``dedup_threshold``); candidates without a vector have none."""
        with timing.stage("collapse"):
            vectors = self._vectors_or_none(ids)
            if vectors is None:
                return [()] * len(ids)
            has = np.any(vectors, axis=1)
            out: list[tuple[int, ...]] = [()] * len(ids)
            # Blocks of rows against all better-ranked rows: one matrix product each, memory
            # bounded by block x n (deep pages have thousands of candidates).
            for start in range(0, len(ids), _DUP_BLOCK):
                stop = min(start + _DUP_BLOCK, len(ids))
                close = (vectors[start:stop] @ vectors[:stop].T) > self.settings.dedup_threshold
                close &= has[start:stop, None] & has[None, :stop]
                rows, cols = np.nonzero(close)
                for row, col in zip(rows + start, cols, strict=True):
                    if col < row:  # only better-ranked (earlier) positions count
                        out[row] = (*out[row], int(col))
            return out

    def _collapse(
        self, ranked: list[tuple[int, float]], figures: dict[int, dict[str, Any]]
    ) -> list[tuple[int, float]]:
        """Drop results whose image equals, or nearly equals, a better-ranked one."""
        cands = _Candidates([i for i, _ in ranked], [s for _, s in ranked], True)
        return self._select(cands, len(ranked), True, figures)

    def _vectors_or_none(self, ids: list[int]) -> np.ndarray | None:
        """Unit vectors of the ids (rows of zeros for ids not in the index), or None."""
        if self.index is None or not ids or not self.vector_dedup:
            return None
        _rows, found = self.index.rows_for(np.asarray(ids, dtype=np.int64))
        vecs = np.zeros((len(ids), self.index.dim), np.float32)
        if found.any():
            present = np.asarray(ids, dtype=np.int64)[found]
            vecs[found] = np.asarray(self.index.vectors_for(present), np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)

    def _page(
        self, query: str, mode: str, k: int, offset: int, start: float, hits: list[SearchHit],
        match: MatchQuality | None = None,
    ) -> SearchPage:
        took = (time.perf_counter() - start) * 1000.0
        return SearchPage(query, mode, k, offset, self.index_version, round(took, 2), hits, match)


