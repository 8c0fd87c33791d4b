"""The search service: text, image, vector and similar-figure search over one index version.

Modes for text queries:

* ``dense``   - the query text is encoded by the CLIP text tower and looked up in the FAISS index;
* ``keyword`` - SQLite FTS5 BM25 over caption, label and article title;
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
"""

from __future__ import annotations

import dataclasses
import html
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from figsearch.core.config import Settings
from figsearch.fusion import (
    FusionConfig,
    SignalResult,
    dense_reliable,
    fuse,
    fusion_from_settings,
    vector_dedup_ok,
)
from figsearch.store import FigureFilter, FigureStore

MODES = ("hybrid", "dense", "keyword", "caption")
RRF_K = 60
PMC_ARTICLE_URL = "https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/"
_WORD = re.compile(r"\w+", re.UNICODE)
# Words too common to be worth highlighting in a caption.
_STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it of on or the to with without via vs".split()
)


class SearchInputError(ValueError):
    """A query the service refuses; the message says what is wrong (API: 4xx)."""


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
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
        rerank: bool = True, rerank_factor: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors_for(self, ids: Any) -> np.ndarray: ...

    def rows_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class SearchHit:
    """One result: the figure's store row plus rank, score and highlighted caption."""

    id: int
    rank: int
    score: float
    figure: dict[str, Any]
    caption_highlighted: str


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


# -- rank fusion, links, highlighting ------------------------------------------------------
def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of 1 / (k + rank), rank from 1.

    Returns (id, score) best first; ties keep the order of first appearance.
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[int(doc_id)] = scores.get(int(doc_id), 0.0) + 1.0 / (k + rank)
    order = {doc_id: i for i, doc_id in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))


def article_url(figure: dict[str, Any]) -> str | None:
    """PMC article page, or None for synthetic / non-PMC figures."""
    pmcid = figure.get("pmcid")
    if not pmcid or figure.get("source") == "synthetic" or not str(pmcid).upper().startswith("PMC"):
        return None
    return PMC_ARTICLE_URL.format(pmcid=pmcid)


def figure_url(figure: dict[str, Any]) -> str | None:
    """PMC figure page (``.../PMCxxxx/figure/<fig_id>/``), or None."""
    base = article_url(figure)
    return f"{base}figure/{figure['fig_id']}/" if base and figure.get("fig_id") else None


def stem(word: str) -> str:
    """A light English stemmer, enough to match plurals and -ing/-ed forms for highlighting."""
    w = word.lower()
    for suffix, replacement, min_len in (
        ("ies", "y", 5), ("sses", "ss", 5), ("ches", "ch", 5), ("shes", "sh", 5),
        ("xes", "x", 4), ("ing", "", 6), ("ed", "", 5), ("s", "", 4),
    ):
        if w.endswith(suffix) and len(w) >= min_len and not (suffix == "s" and w.endswith("ss")):
            return w[: len(w) - len(suffix)] + replacement
    return w


def query_terms(query: str) -> set[str]:
    """Distinct lower-case words of a query (as the keyword index sees them)."""
    return {w.lower() for w in _WORD.findall(query)}


def query_stems(query: str) -> set[str]:
    """Stems of the query's words, without stopwords and single letters."""
    return {stem(w) for w in _WORD.findall(query) if len(w) > 1 and w.lower() not in _STOPWORDS}


def highlight(caption: str, stems: set[str]) -> str:
    """HTML-escape ``caption`` and wrap words whose stem is a query stem in ``<mark>``."""
    if not stems:
        return html.escape(caption)
    parts, last = [], 0
    for m in _WORD.finditer(caption):
        if stem(m.group()) in stems:
            parts.append(html.escape(caption[last : m.start()]))
            parts.append(f"<mark>{html.escape(m.group())}</mark>")
            last = m.end()
    parts.append(html.escape(caption[last:]))
    return "".join(parts)


# -- the service ----------------------------------------------------------------------------
@dataclass
class _Candidates:
    ids: list[int]
    scores: list[float]
    exhausted: bool  # True when no deeper fetch can find more


class SearchService:
    """Search over one (store, index, encoder); cheap to create, safe to share across threads."""

    def __init__(
        self, store: FigureStore, index: VectorIndex | None, encoder: TextImageEncoder | None,
        settings: Settings, captions: Any = None, fusion: FusionConfig | None = None,
    ) -> None:
        self.store = store
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
        self._allowed_cache: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def index_version(self) -> str:
        return self.index.version if self.index is not None else ""

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
        qvec = self._encode_text(query) if "dense" in use else None
        cvec = self._encode_caption_query(query) if "caption" in use else None

        def fetch(n: int) -> _Candidates:
            if mode == "keyword":
                return self._keyword(query, n, flt)
            if mode == "dense":
                return self._dense(qvec, n, flt)  # type: ignore[arg-type]
            if mode == "caption":
                return self._caption(cvec, n, flt)  # type: ignore[arg-type]
            depth = max(n, self.settings.fusion_depth)
            return self._fuse(self.signal_results(query, depth, flt, use, qvec, cvec))

        hits = self._collect(fetch, k, offset, dedup, query_stems(query))
        return self._page(query, mode, k, offset, start, hits)

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

        def fetch(n: int) -> _Candidates:
            cands = self._dense(qvec, n + len(excluded), flt)
            keep = [(i, s) for i, s in zip(cands.ids, cands.scores, strict=True) if i not in excluded]
            return _Candidates([i for i, _ in keep], [s for _, s in keep], cands.exhausted)

        hits = self._collect(fetch, k, offset, dedup, set())
        return self._page(label, "dense", k, offset, start, hits)

    def search_image(
        self, image: Any, k: int = 20, offset: int = 0, flt: FigureFilter | None = None,
        dedup: bool = True,
    ) -> SearchPage:
        """Search by example image (a decoded RGB PIL image)."""
        encoder = self._require_encoder()
        vector = encoder.encode_images([image])[0]
        return self.search_vector(vector, k, offset, flt, dedup, label="<image>")

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
        if self.index is None:
            raise SearchInputError("no index is loaded; run `figsearch index` first")
        return self.index

    def _require_encoder(self) -> TextImageEncoder:
        if self.encoder is None:
            raise SearchInputError("no model is loaded; dense and image search are unavailable")
        return self.encoder

    # -- candidate sources --------------------------------------------------------------
    def _encode_text(self, query: str) -> np.ndarray:
        vec = self._require_encoder().encode_texts([query])
        return np.asarray(vec, dtype=np.float32).reshape(1, -1)

    def _encode_caption_query(self, query: str) -> np.ndarray:
        if self.captions is None:
            raise SearchInputError(
                "caption search is unavailable: the index has no caption index "
                "(set FIGSEARCH_CAPTION_MODEL and rebuild with `figsearch index`)"
            )
        return np.asarray(self.captions.encode(query), np.float32).reshape(1, -1)

    def _caption(self, cvec: np.ndarray, n: int, flt: FigureFilter) -> _Candidates:
        return self._vector_search(self.captions.index, cvec, n, flt)

    def _dense(self, qvec: np.ndarray, n: int, flt: FigureFilter) -> _Candidates:
        return self._vector_search(self._require_index(), qvec, n, flt)

    def _vector_search(
        self, index: VectorIndex, qvec: np.ndarray, n: int, flt: FigureFilter
    ) -> _Candidates:
        allowed = None if flt.is_empty() else self._allowed_ids(flt)
        if allowed is not None and allowed.size == 0:
            return _Candidates([], [], True)
        n = max(1, min(n, index.ntotal))
        scores, ids = index.search(
            qvec, n, allowed_ids=allowed, rerank=self.settings.rerank,
            rerank_factor=self.settings.rerank_factor,
        )
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        exhausted = len(pairs) < n or n >= index.ntotal
        return _Candidates([i for i, _ in pairs], [s for _, s in pairs], exhausted)

    def _allowed_ids(self, flt: FigureFilter, max_entries: int = 32) -> np.ndarray:
        """``store.filtered_ids`` with a small LRU cache keyed by the filter's values."""
        key = dataclasses.astuple(flt)
        with self._cache_lock:
            if key in self._allowed_cache:
                self._allowed_cache.move_to_end(key)
                return self._allowed_cache[key]
        ids = self.store.filtered_ids(flt)
        with self._cache_lock:
            self._allowed_cache[key] = ids
            while len(self._allowed_cache) > max_entries:
                self._allowed_cache.popitem(last=False)
        return ids

    def _keyword(self, query: str, n: int, flt: FigureFilter, widen: bool = True) -> _Candidates:
        """BM25 candidates: the best ``n`` figures containing every query word when there are
        that many, else (``widen``) the best ``n`` containing any of them.

        The all-words query is selective and cheap; the any-word query scores every figure
        that contains any one word (slow for common words on millions of captions), so it
        only runs when the first finds fewer than ``n``. Hybrid search does not widen: there
        the dense ranking already supplies the partial matches.
        """
        rows: list[tuple[int, float]] = []
        single_word = len(query_terms(query)) <= 1
        if not single_word:
            rows = self.store.keyword_search(query, n, flt, match_all=True)
        if len(rows) < n and (widen or single_word):
            rows = self.store.keyword_search(query, n, flt)
        return _Candidates([i for i, _ in rows], [s for _, s in rows], len(rows) < n)

    def signal_results(
        self, query: str, n: int, flt: FigureFilter, signals: Sequence[str],
        qvec: np.ndarray | None = None, cvec: np.ndarray | None = None,
    ) -> dict[str, SignalResult]:
        """Each named signal's top ``n`` for the query; vector signals also score the other
        signals' candidates exactly (``extra``). Used by hybrid search and by tuning."""
        out: dict[str, SignalResult] = {}
        vector_signals: dict[str, tuple[VectorIndex, np.ndarray]] = {}
        if "keyword" in signals:
            c = self._keyword(query, n, flt)
            out["keyword"] = SignalResult(c.ids, c.scores, floor=0.0, exhausted=c.exhausted)
        if "caption" in signals:
            cvec = cvec if cvec is not None else self._encode_caption_query(query)
            vector_signals["caption"] = (self.captions.index, cvec)
        if "dense" in signals:
            qvec = qvec if qvec is not None else self._encode_text(query)
            vector_signals["dense"] = (self._require_index(), qvec)
        for name, (index, vec) in vector_signals.items():
            c = self._vector_search(index, vec, n, flt)
            out[name] = SignalResult(c.ids, c.scores, exhausted=c.exhausted)
        union = {i for r in out.values() for i in r.ids}
        for name, (index, vec) in vector_signals.items():
            out[name].extra = _exact_scores(index, vec, sorted(union - set(out[name].ids)))
        return out

    def _fuse(self, results: dict[str, SignalResult]) -> _Candidates:
        fused = fuse(results, self.fusion)
        exhausted = all(r.exhausted for r in results.values())
        return _Candidates([i for i, _ in fused], [s for _, s in fused], exhausted)

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
        stems: set[str],
    ) -> list[SearchHit]:
        """Fetch deeper until ``offset + k`` distinct results exist or candidates run out."""
        need = offset + k
        n = need * 2 + 10
        while True:
            cands = fetch(n)
            figures = self.store.get_figures(cands.ids)
            kept = [(i, s) for i, s in zip(cands.ids, cands.scores, strict=True) if i in figures]
            if dedup:
                kept = self._collapse(kept, figures)
            if len(kept) >= need or cands.exhausted or n >= 8 * need + 1000:
                break
            n *= 2
        return [
            SearchHit(i, offset + r + 1, s, figures[i], highlight(figures[i]["caption"] or "", stems))
            for r, (i, s) in enumerate(kept[offset:need])
        ]

    def _collapse(
        self, ranked: list[tuple[int, float]], figures: dict[int, dict[str, Any]]
    ) -> list[tuple[int, float]]:
        """Drop results whose image equals, or nearly equals, a better-ranked one."""
        vectors = self._vectors_or_none([i for i, _ in ranked])
        seen_sha: set[str] = set()
        kept: list[tuple[int, float]] = []
        kept_vecs: list[np.ndarray] = []
        threshold = self.settings.dedup_threshold
        for pos, (fid, score) in enumerate(ranked):
            sha = figures[fid].get("sha256")
            if sha and sha in seen_sha:
                continue
            vec = vectors[pos] if vectors is not None else None
            if vec is not None and np.any(vec) and kept_vecs:
                if float(np.max(np.stack(kept_vecs) @ vec)) > threshold:
                    continue
            if sha:
                seen_sha.add(sha)
            if vec is not None and np.any(vec):
                kept_vecs.append(vec)
            kept.append((fid, score))
        return kept

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
        self, query: str, mode: str, k: int, offset: int, start: float, hits: list[SearchHit]
    ) -> SearchPage:
        took = (time.perf_counter() - start) * 1000.0
        return SearchPage(query, mode, k, offset, self.index_version, round(took, 2), hits)


def _exact_scores(index: VectorIndex, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
    """Inner products of the query with the stored vectors of ``ids`` (ids not indexed: none)."""
    if not ids:
        return {}
    arr = np.asarray(ids, np.int64)
    _rows, found = index.rows_for(arr)
    if not found.any():
        return {}
    present = arr[found]
    scores = np.asarray(index.vectors_for(present), np.float32) @ qvec.reshape(-1)
    return {int(i): float(s) for i, s in zip(present, scores, strict=True)}
