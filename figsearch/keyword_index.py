"""Keyword search with dynamic pruning: a tantivy BM25 index per index version.

FTS5's ``ORDER BY bm25(...) LIMIT k`` scores and sorts *every* caption that matches the query,
and an any-word query matches nearly every caption as soon as one of its words is common: at 1 M
real-language captions a query took ~1.2 s and grew linearly with the corpus (issue #23).
Tantivy (the Rust engine behind Quickwit; Python bindings ``tantivy``) ranks with block-max
WAND: it skips posting blocks whose best possible score cannot enter the top k, so the cost
follows k and the rare words of a query, not the number of matches.

The index lives *inside* a version directory, ``<version>/keyword/``, built from the store when
the version is built (:func:`write_keyword_index`) or derived from the previous version's by a
nightly delta (:func:`update_keyword_index`), so it is versioned, swapped, replicated and
hot-reloaded with the vector indexes; SQLite stays the source of truth. A version without one
(built before this module) is served by the store's FTS5 table, as before.

Text analysis (one analyzer, :data:`ANALYZER`, for indexing, queries and highlights): split on
anything that is not a letter or digit, drop tokens over 40 characters, lower-case, fold
diacritics to ASCII, Snowball English stemming (Porter2; FTS5's was the original Porter) - the
equivalent of the store's ``porter unicode61 remove_diacritics 2``. Queries also drop English
stopwords ("the", "of", "in" ...), unless nothing else is left: those words match almost every
caption and add almost nothing to BM25 (their IDF is near zero), but forced the old engine, and
would force any engine, to visit every caption.

Fields: ``text``, the figure's whole text (caption, label, article title, in-figure text) as one
field, and each of those four alone (``caption``, ``label``, ``title``, ``ocr``); a query's score
is BM25 over ``text`` plus, per field, its BM25 there times ``Settings.keyword_weights`` (default:
none). One BM25 over the whole text normalises by the figure's whole length, as FTS5 did;
per-field BM25 alone punished figures with long in-figure text (a field most figures lack has a
short average length) and lost 0.03-0.05 MRR on the real-figure queries, while the whole text
beat FTS5 on both splits (docs/scale.md). A boosted field clause would add 0.002 keyword MRR on
the dev split (title 0.3; the default mode ties) but takes block-max WAND's pure term disjunction
away: 38 instead of 24 ms p50 at 15 M figures. ``id`` (the figure id, a fast
field read without touching stored documents); and the filter fields ``year``, ``journal``
(lower-cased), ``license`` (class) and ``pmcid``, which narrow a selective filter inside the
engine (:meth:`KeywordIndex.search`).

Shards: tantivy ranks one segment at a time on one thread, and a common-word query at 15 M
figures took 24 ms p50 there. A big index is written as ``shard-NN/`` sub-indexes (a figure goes
to shard ``id % n``; :func:`auto_shards`: one per :data:`SHARD_FIGURES` figures, at most one per
core of the building machine) that a query searches at once on a thread pool - tantivy releases
the GIL while it searches - merging their top lists by score: 14.7 instead of 24 ms p50 at 15 M
(docs/scale.md). Each shard scores with its own BM25 statistics (document frequencies, average
length), so figures within a few % of each other may swap: at 15 M the two-shard top 20 holds
97.6 % of the one-shard top 20 (a recall floor against exact BM25 is tested). An index under ``SHARD_FIGURES`` is one
shard in ``keyword/`` itself, as versions built before shards were.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tantivy
from tqdm import tqdm

from figsearch.datadir import fsync_tree
from figsearch.faults import maybe_crash
from figsearch.licenses import COMMERCIAL_CLASSES
from figsearch.sorted_ids import kept, sorted_union
from figsearch.store import FTS_COLUMNS, FigureFilter, FigureStore

KEYWORD_DIR = "keyword"
IDS_FILE = "ids.npy"  # inside KEYWORD_DIR: the sorted figure ids the index holds
#: How far before the previous build's store read a delta looks again (clock steps, a
#: transaction committed with an earlier stamp): re-reading too much costs only a few adds.
SINCE_MARGIN = timedelta(hours=1)
TEXT_FIELDS = FTS_COLUMNS  # caption, label, title, ocr
WHOLE_TEXT = "text"
#: BM25 weight of the whole text and of each field alone (``Settings.keyword_weights``).
DEFAULT_WEIGHTS: dict[str, float] = {WHOLE_TEXT: 1.0, "caption": 0.0, "label": 0.0,
                                     "title": 0.0, "ocr": 0.0}
ANALYZER = "figsearch"
MAX_QUERY_TERMS = 32
#: A filter passing at least this share of figures is applied after ranking (over-fetch, then
#: keep the allowed hits); a narrower one also narrows inside the engine, where tantivy
#: intersects the text query with the filter's postings.
BROAD_FILTER = 0.25
OVERFETCH_GROWTH = 4
WRITER_HEAP = 256_000_000
BUILD_BATCH = 5_000
#: Figures per keyword shard when the build picks the count (``Settings.keyword_shards`` 0).
SHARD_FIGURES = 2_000_000
MAX_SHARDS = 16
SHARD_DIR = "shard-{:02d}"
_MARK_OPEN, _MARK_CLOSE = "<mark>", "</mark>"
ENGINE = f"tantivy {getattr(tantivy, '__version__', '')}".strip()
#: What tantivy's simple tokenizer calls a token: a run of letters and digits.
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def _analyzer(stopwords: bool) -> Any:
    builder = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
               .filter(tantivy.Filter.remove_long(40))
               .filter(tantivy.Filter.lowercase())
               .filter(tantivy.Filter.ascii_fold()))
    if stopwords:
        builder = builder.filter(tantivy.Filter.stopword("english"))
    return builder.filter(tantivy.Filter.stemmer("english")).build()


_INDEX_ANALYZER = _analyzer(stopwords=False)
_QUERY_ANALYZER = _analyzer(stopwords=True)


def query_terms(query: str) -> list[str]:
    """The analysed terms a query searches for: stems without stopwords (all stems when the
    query is made of stopwords only), first occurrence order, at most 32."""
    terms = _QUERY_ANALYZER.analyze(query) or _INDEX_ANALYZER.analyze(query)
    return list(dict.fromkeys(terms))[:MAX_QUERY_TERMS]


def analyse(text: str) -> list[str]:
    """The index's tokens of a text (what a field holds)."""
    return list(_INDEX_ANALYZER.analyze(text))


def schema() -> Any:
    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("id", indexed=True, fast=True)
    for name in (WHOLE_TEXT, *TEXT_FIELDS):
        sb.add_text_field(name, tokenizer_name=ANALYZER, index_option="freq")
    sb.add_integer_field("year", indexed=True, fast=True)
    for name in ("journal", "license", "pmcid"):
        sb.add_text_field(name, tokenizer_name="raw", index_option="basic")
    return sb.build()


def _open(path: Path, create: bool = False) -> Any:
    index = tantivy.Index(schema(), path=str(path), reuse=not create)
    index.register_tokenizer(ANALYZER, _INDEX_ANALYZER)
    return index


def auto_shards(figures: int, cores: int | None = None) -> int:
    """How many shards a keyword index of ``figures`` gets: one per :data:`SHARD_FIGURES`, but
    no more than the cores that search them at once (more would only queue)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, MAX_SHARDS, math.ceil(figures / SHARD_FIGURES)))


def shard_paths(root: Path, shards: int) -> list[Path]:
    """The sub-index folders of a keyword index with ``shards`` shards (one: ``root`` itself)."""
    if shards < 1:
        raise ValueError(f"a keyword index needs at least one shard, got {shards}")
    return [root] if shards == 1 else [root / SHARD_DIR.format(i) for i in range(shards)]


def shard_count(root: Path) -> int:
    """The shards of the keyword index in ``root`` (0: there is none)."""
    if (root / "meta.json").exists():
        return 1
    return len(list(root.glob("shard-*/meta.json")))


class ShardWriters:
    """One tantivy writer per shard; a figure lives in shard ``id % n``, so a delta finds it."""

    def __init__(self, paths: Sequence[Path], create: bool) -> None:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
        self.indexes = [_open(path, create) for path in paths]
        threads = 2 if len(paths) == 1 else 1
        heap = max(WRITER_HEAP // len(paths), 16_000_000 * threads)
        self.writers = [ix.writer(heap_size=heap, num_threads=threads) for ix in self.indexes]

    def _of(self, fid: int) -> Any:
        return self.writers[int(fid) % len(self.writers)]

    def add(self, row: Sequence[Any]) -> None:
        self._of(row[0]).add_document(_document(row))

    def delete(self, fid: int) -> None:
        self._of(fid).delete_documents_by_term("id", int(fid))

    def commit(self, fault: str | None = None) -> None:
        """Commit every shard (then ``fault``, the crash-test point), then let merges finish."""
        for writer in self.writers:
            writer.commit()
        if fault:
            maybe_crash(fault)
        for writer in self.writers:
            writer.wait_merging_threads()

    def count(self) -> int:
        for index in self.indexes:
            index.reload()
        return sum(int(index.searcher().num_docs) for index in self.indexes)


# -- building -----------------------------------------------------------------------------------
#: Live figures with what the keyword index holds; ``{where}`` narrows (ids), ordered by id.
_ROWS_SQL = (
    "SELECT f.id, f.caption, f.label, a.title, o.text, a.year, a.journal, a.license_class, "
    "a.pmcid FROM figures f JOIN articles a ON a.id = f.article_id "
    "LEFT JOIN figure_ocr o ON o.sha256 = f.sha256 WHERE a.retracted = 0 AND {where} "
    "ORDER BY f.id LIMIT ?"
)


def _document(row: Sequence[Any]) -> Any:
    fid, caption, label, title, ocr, year, journal, license_class, pmcid = row
    doc = tantivy.Document(id=int(fid))
    texts = (("caption", caption), ("label", label), ("title", title), ("ocr", ocr))
    for name, value in texts:
        if value:
            doc.add_text(name, str(value))
    whole = "\n".join(str(v) for _, v in texts if v)
    if whole:
        doc.add_text(WHOLE_TEXT, whole)
    if year:
        doc.add_integer("year", int(year))
    for name, value in (("journal", (journal or "").lower()), ("license", license_class),
                        ("pmcid", pmcid)):
        if value:
            doc.add_text(name, str(value))
    return doc


def iter_store_rows(store: FigureStore, ids: Sequence[int] | None = None,
                    batch: int = BUILD_BATCH) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of keyword-index rows: every live figure in id order, or only ``ids``."""
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        if ids is not None:
            wanted = sorted({int(i) for i in ids})
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                where = f"f.id IN ({','.join('?' * len(chunk))})"
                yield list(raw.execute(_ROWS_SQL.format(where=where), [*chunk, len(chunk)]))
            return
        last = -1
        while True:
            rows = list(raw.execute(_ROWS_SQL.format(where="f.id > ?"), [last, batch]))
            if not rows:
                return
            yield rows
            last = int(rows[-1][0])


def _live_count(store: FigureStore) -> int:
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        return int(raw.execute("SELECT count(*) FROM figures f JOIN articles a ON "
                               "a.id = f.article_id WHERE a.retracted = 0").fetchone()[0])


def write_keyword_index(store: FigureStore, version_dir: Path, progress: bool = True,
                        shards: int = 0) -> dict[str, Any]:
    """Index every live figure of ``store`` into ``<version_dir>/keyword/``; returns the
    manifest entry. ``shards`` 0 lets :func:`auto_shards` choose. Usable as (part of) a build's
    ``add_files``: the version directory is still the build's temporary one, so a crash leaves
    nothing that is served."""
    start = time.perf_counter()
    read_at = store_time(datetime.now(timezone.utc))
    out = Path(version_dir) / KEYWORD_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = _live_count(store)
    shards = shards or auto_shards(total)
    writers = ShardWriters(shard_paths(out, shards), create=True)
    n, ids = 0, []
    bar = tqdm(total=total, unit="fig", desc="keyword index", disable=not progress)
    for rows in iter_store_rows(store):
        for row in rows:
            writers.add(row)
        ids.append(np.fromiter((r[0] for r in rows), np.int64, count=len(rows)))
        n += len(rows)
        bar.update(len(rows))
        maybe_crash("keyword-batch")
    bar.close()
    writers.commit()
    np.save(out / IDS_FILE, np.concatenate(ids) if ids else np.zeros(0, np.int64))
    fsync_tree(out)
    seconds = time.perf_counter() - start
    print(f"keyword index: {n} figures in {shards} shard(s) in {seconds:.1f} s "
          f"({n / seconds if seconds > 0 else 0.0:.0f} figures/s)")
    return {"keyword": {"engine": ENGINE, "count": n, "shards": shards,
                        "analyzer": "simple, remove_long 40, lowercase, ascii_fold, "
                                    "stemmer english; queries drop english stopwords",
                        "store_read_at": read_at, "build_seconds": round(seconds, 3)}}


def _link_or_copy(src: Path, dst: Path) -> None:
    """Segment files are immutable: a hard link shares them with the previous version (a later
    merge or delete there only removes its own link); anything else is copied."""
    if src.suffix in {".json", ".lock"} or src.name.startswith("."):
        shutil.copy2(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def update_keyword_index(previous_version_dir: Path, version_dir: Path, store: FigureStore,
                         removed_ids: Sequence[int], upserted_ids: Sequence[int],
                         progress: bool = False) -> dict[str, Any]:
    """Derive ``<version_dir>/keyword/`` from the previous version's keyword index: delete
    ``removed_ids`` and ``upserted_ids``, then add the upserted figures as the store has them
    now, each in its own shard. The previous version's files are never written (new segments
    and delete files are new files; its meta.json is copied). Returns the manifest entry."""
    start = time.perf_counter()
    read_at = store_time(datetime.now(timezone.utc))
    src = Path(previous_version_dir) / KEYWORD_DIR
    shards = shard_count(src)
    if not shards:
        raise FileNotFoundError(f"{previous_version_dir} has no keyword index to update; "
                                "build one with `figsearch index`")
    out = Path(version_dir) / KEYWORD_DIR
    shutil.rmtree(out, ignore_errors=True)
    for old, new in zip(shard_paths(src, shards), shard_paths(out, shards), strict=True):
        new.mkdir(parents=True, exist_ok=True)
        for p in old.iterdir():
            if p.is_file() and not p.name.endswith(".lock") and p.name != IDS_FILE:
                _link_or_copy(p, new / p.name)
    writers = ShardWriters(shard_paths(out, shards), create=False)
    gone = {int(i) for i in removed_ids} | {int(i) for i in upserted_ids}
    for fid in tqdm(sorted(gone), unit="fig", desc="keyword deletes", disable=not progress):
        writers.delete(fid)
    maybe_crash("keyword-deleted")
    added: list[int] = []
    for rows in iter_store_rows(store, list(upserted_ids)):
        for row in rows:
            writers.add(row)
        added.extend(int(r[0]) for r in rows)
    writers.commit(fault="keyword-committed")
    prev_ids = _ids_of(Path(previous_version_dir))
    keep = kept(prev_ids, np.fromiter(gone, np.int64, count=len(gone)))
    np.save(out / IDS_FILE, sorted_union(prev_ids[keep], np.asarray(added, np.int64)))
    fsync_tree(out)
    count = writers.count()
    seconds = time.perf_counter() - start
    return {"keyword": {"engine": ENGINE, "count": count, "shards": shards,
                        "store_read_at": read_at,
                        "delta": {"removed": len(set(removed_ids)), "upserted": len(added),
                                  "from": Path(previous_version_dir).name},
                        "build_seconds": round(seconds, 3)}}


def store_time(when: datetime) -> str:
    """A UTC time as the store keeps ``ingested_at`` / ``ocr_at`` (SQLAlchemy's SQLite
    DateTime text), so the two compare as strings."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _ids_of(version_dir: Path) -> np.ndarray:
    return np.load(Path(version_dir) / KEYWORD_DIR / IDS_FILE)


def _live_ids(store: FigureStore) -> np.ndarray:
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        rows = raw.execute("SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
                           "WHERE a.retracted = 0 ORDER BY f.id").fetchall()
    return np.fromiter((r[0] for r in rows), np.int64, count=len(rows))


def changed_since(store: FigureStore, since: str) -> np.ndarray:
    """Live figures whose indexed text may have changed since ``since`` (a store time): their
    article was (re)ingested then or later, or their image's in-figure text was (re)read."""
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        rows = raw.execute(
            "SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
            "WHERE a.retracted = 0 AND (a.ingested_at >= ? OR f.sha256 IN "
            "(SELECT sha256 FROM figure_ocr WHERE ocr_at >= ?))", [since, since]).fetchall()
    return np.unique(np.fromiter((r[0] for r in rows), np.int64, count=len(rows)))


def write_or_update_keyword_index(store: FigureStore, version_dir: Path,
                                  previous_dir: Path | None = None, progress: bool = True,
                                  shards: int = 0) -> dict[str, Any]:
    """The keyword index of a new version: a delta from ``previous_dir``'s (figures gone from
    the store, new ones, and those whose article was re-ingested or whose in-figure text was
    re-read since that index read the store) when it has one, else built in full with
    ``shards`` shards (0: :func:`auto_shards`; a delta keeps the previous version's)."""
    prev_entry: dict[str, Any] = {}
    if previous_dir is not None and (Path(previous_dir) / "manifest.json").is_file():
        prev_entry = json.loads((Path(previous_dir) / "manifest.json").read_text()).get(
            "keyword") or {}
    if (previous_dir is None or not prev_entry.get("store_read_at")
            or not (Path(previous_dir) / KEYWORD_DIR / IDS_FILE).is_file()):
        return write_keyword_index(store, version_dir, progress, shards)
    read = datetime.strptime(str(prev_entry["store_read_at"]), "%Y-%m-%d %H:%M:%S.%f")
    since = store_time((read - SINCE_MARGIN).replace(tzinfo=timezone.utc))
    prev_ids, live = _ids_of(Path(previous_dir)), _live_ids(store)
    removed = np.setdiff1d(prev_ids, live, assume_unique=True)
    upserted = np.union1d(np.setdiff1d(live, prev_ids, assume_unique=True),
                          changed_since(store, since))
    return update_keyword_index(previous_dir, version_dir, store, removed.tolist(),
                                upserted.tolist(), progress)


# -- searching ----------------------------------------------------------------------------------
def all_words_then_any(search: Callable[[bool], list[tuple[int, float]]], n: int, *,
                       single_word: bool, widen: bool) -> list[tuple[int, float]]:
    """The keyword signal's plan for either engine: ``search(match_all)``'s best ``n`` figures
    holding every word when there are that many (a selective query), else - with ``widen``, or
    for a one-word query - those holding any word."""
    rows: list[tuple[int, float]] = []
    if not single_word:
        rows = search(True)
    if len(rows) < n and (widen or single_word):
        rows = search(False)
    return rows


class AllowedIds(Protocol):
    """What a filter lets through (:class:`figsearch.columns.AllowedSet`)."""

    count: int

    @property
    def selectivity(self) -> float: ...

    def contains(self, ids: np.ndarray) -> np.ndarray: ...


@cache
def _search_pool() -> ThreadPoolExecutor:
    """The threads that search a sharded index's shards at once (one per core)."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="keyword")


class KeywordIndex:
    """One version's tantivy index (one or more shards): BM25 top-k with pruning, filters,
    highlights."""

    def __init__(self, path: Path, indexes: Sequence[Any],
                 manifest: Mapping[str, Any] | None = None) -> None:
        if not indexes:
            raise ValueError(f"{path}: a keyword index needs at least one shard")
        self.path = path
        self.indexes = list(indexes)
        self.schema = self.indexes[0].schema
        self.searchers = [index.searcher() for index in self.indexes]
        self.count = sum(int(s.num_docs) for s in self.searchers)
        self.manifest = dict(manifest or {})

    @classmethod
    def open(cls, path: str | Path, manifest: Mapping[str, Any] | None = None,
             ) -> KeywordIndex | None:
        """The keyword index in folder ``path`` (its shards), or None when there is none."""
        path = Path(path)
        shards = shard_count(path)
        if not shards:
            return None
        return cls(path, [_open(p) for p in shard_paths(path, shards)], manifest)

    @classmethod
    def load(cls, version_dir: str | Path) -> KeywordIndex | None:
        """The version's keyword index, or None for a version built without one."""
        manifest: dict[str, Any] = {}
        mf = Path(version_dir) / "manifest.json"
        if mf.exists():
            manifest = json.loads(mf.read_text()).get("keyword", {})
        return cls.open(Path(version_dir) / KEYWORD_DIR, manifest)

    # -- queries -------------------------------------------------------------------------------
    def _term(self, field: str, term: str, weight: float) -> Any:
        q = tantivy.Query.term_query(self.schema, field, term)
        return q if weight == 1.0 else tantivy.Query.boost_query(q, weight)

    def text_query(self, terms: Sequence[str], match_all: bool,
                   weights: Mapping[str, float] | None = None) -> Any:
        """Any-word: one flat disjunction of (term, field) clauses, the shape block-max WAND
        prunes; all-words: each term (in any field) required. ``weights``: see
        :data:`DEFAULT_WEIGHTS`."""
        merged = {**DEFAULT_WEIGHTS, **(weights or {})}
        fields = [(f, float(w)) for f, w in merged.items() if float(w) > 0]
        should = tantivy.Occur.Should
        if not match_all or len(terms) == 1:
            return tantivy.Query.boolean_query(
                [(should, self._term(f, t, w)) for t in terms for f, w in fields])
        if merged[WHOLE_TEXT] <= 0:  # "every word somewhere" still means the whole text
            fields.append((WHOLE_TEXT, 0.0))
        return tantivy.Query.boolean_query([
            (tantivy.Occur.Must,
             tantivy.Query.boolean_query([(should, self._term(f, t, w)) for f, w in fields]))
            for t in terms])

    def filter_clauses(self, flt: FigureFilter) -> list[Any]:
        """The filter's fields the engine holds, as unscored clauses (figure types are not
        among them: they belong to the version's image model, and are checked after)."""
        out = []
        if flt.year_from is not None or flt.year_to is not None:
            out.append(tantivy.Query.range_query(
                self.schema, "year", tantivy.FieldType.Integer, flt.year_from, flt.year_to,
                use_inverted_index=True))
        if flt.journal:
            out.append(tantivy.Query.term_query(self.schema, "journal", flt.journal.lower()))
        if flt.license_class:
            out.append(tantivy.Query.term_query(self.schema, "license", flt.license_class))
        if flt.commercial_only:
            out.append(tantivy.Query.term_set_query(self.schema, "license",
                                                    sorted(COMMERCIAL_CLASSES)))
        if flt.pmcid:
            out.append(tantivy.Query.term_query(self.schema, "pmcid", flt.pmcid))
        return [tantivy.Query.const_score_query(q, 0.0) for q in out]

    def top(self, query: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(figure ids, scores) of the best ``n`` documents, best first (ties: lower id), the
        shards searched at once."""
        if len(self.searchers) == 1:
            return _top_of(self.searchers[0], query, n)
        parts = list(_search_pool().map(lambda s: _top_of(s, query, n), self.searchers))
        ids = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        order = np.lexsort((ids, -scores))[:n]
        return ids[order], scores[order]

    def search(self, query: str, n: int, match_all: bool = False,
               weights: Mapping[str, float] | None = None, allowed: AllowedIds | None = None,
               flt: FigureFilter | None = None, terms: Sequence[str] | None = None,
               ) -> list[tuple[int, float]]:
        """The best ``n`` figures for ``query`` (or its analysed ``terms``): [(figure id,
        BM25 score)], best first.

        ``allowed`` (what the filter ``flt`` lets through) is always checked on the hits, so the
        filter means exactly what the version's filter columns say; a selective one (under
        :data:`BROAD_FILTER` of the figures) also narrows inside the engine, a broad one is
        applied to a deeper top list, deepened until ``n`` hits pass or none are left.
        """
        terms = query_terms(query) if terms is None else list(terms)
        if not terms or n <= 0:
            return []
        q = self.text_query(terms, match_all, weights)
        if allowed is None:
            ids, scores = self.top(q, n)
            return list(zip(ids.tolist(), scores.tolist(), strict=True))
        if allowed.count == 0:
            return []
        narrow = self.filter_clauses(flt) if flt is not None and \
            allowed.selectivity < BROAD_FILTER else []
        if narrow:
            q = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, q), *((tantivy.Occur.Must, c) for c in narrow)])
            depth = n
        else:
            depth = max(n, math.ceil(n / max(allowed.selectivity, 1e-9) * 1.2))
        depth = min(depth, max(self.count, 1))
        while True:
            ids, scores = self.top(q, depth)
            keep = allowed.contains(ids)
            if keep.sum() >= n or len(ids) < depth or depth >= self.count:
                break
            depth = min(depth * OVERFETCH_GROWTH, self.count)
        return list(zip(ids[keep][:n].tolist(), scores[keep][:n].tolist(), strict=True))

    def ranked(self, query: str, n: int, weights: Mapping[str, float] | None = None,
               allowed: AllowedIds | None = None, flt: FigureFilter | None = None,
               widen: bool = True, common_share: float = 0.0) -> list[tuple[int, float]]:
        """The keyword signal's candidates: the best ``n`` figures holding every query word
        when there are that many (a selective intersection), else - with ``widen``, or for a
        one-word query - the best ``n`` holding any of them (with ``common_share``, found by
        the query's less common words: :meth:`any_word_search`)."""
        def search(match_all: bool) -> list[tuple[int, float]]:
            if match_all:
                return self.search(query, n, True, weights, allowed, flt)
            return self.any_word_search(query, n, weights, allowed, flt, common_share)

        return all_words_then_any(search, n, single_word=len(query_terms(query)) <= 1,
                                  widen=widen)

    def common_terms(self, terms: Sequence[str], share: float) -> set[str]:
        """The terms held by more than ``share`` of the figures' whole texts (document
        frequency over every shard)."""
        if share <= 0 or not self.count:
            return set()
        limit = share * self.count
        return {t for t in terms
                if sum(int(s.doc_freq(WHOLE_TEXT, t)) for s in self.searchers) > limit}

    def any_word_search(self, query: str, n: int, weights: Mapping[str, float] | None = None,
                        allowed: AllowedIds | None = None, flt: FigureFilter | None = None,
                        common_share: float = 0.0) -> list[tuple[int, float]]:
        """The best ``n`` figures holding any query word. With ``common_share`` > 0 the
        candidates are the best ``n`` by the words held by at most that share of figures
        (when the query has both kinds), then scored exactly by every word.

        Why: block-max WAND skips little of a disjunction of words that each match a fifth of
        the corpus, so those words cost most of an any-word query at 15 M figures while
        adding little to a figure's rank (their IDF is low); Lucene's ``cutoff_frequency``
        leaves them out the same way. Scores stay the exact BM25 of every word, so fusion
        sees what the full query would give each candidate; what can change is which
        figures are candidates (those held up only by common words)."""
        terms = query_terms(query)
        common = self.common_terms(terms, common_share) if len(terms) > 1 else set()
        rare = [t for t in terms if t not in common]
        if not common or not rare:
            return self.search(query, n, False, weights, allowed, flt)
        found = self.search(query, n, False, weights, allowed, flt, terms=rare)
        return self.rescored(terms, [fid for fid, _ in found], weights)

    def rescored(self, terms: Sequence[str], ids: Sequence[int],
                 weights: Mapping[str, float] | None = None) -> list[tuple[int, float]]:
        """``ids`` scored by the any-word query of ``terms`` (exact BM25, every shard's own
        statistics), best first (ties: lower id)."""
        if not ids:
            return []
        q = tantivy.Query.boolean_query([
            (tantivy.Occur.Must, self.text_query(terms, False, weights)),
            (tantivy.Occur.Must, tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(self.schema, "id", [int(i) for i in ids]), 0.0))])
        out_ids, scores = self.top(q, len(ids))
        return list(zip(out_ids.tolist(), scores.tolist(), strict=True))

    # -- highlights ----------------------------------------------------------------------------
    def highlights(self, query: str, figures: Mapping[int, Mapping[str, Any]],
                   snippet_tokens: int = 16) -> dict[int, tuple[str, str]]:
        """{id: (caption HTML, in-figure text snippet HTML)}: escaped text with the words the
        query searched for (same analysis: stems, folded diacritics) wrapped in ``<mark>``; the
        snippet is the window of ``snippet_tokens`` words with most matches, "" when none.
        Costs what the page's own text costs, whatever the corpus size."""
        terms = set(query_terms(query))
        out: dict[int, tuple[str, str]] = {}
        if not terms:
            return out
        for fid, fig in figures.items():
            caption = str(fig.get("caption") or "")
            ocr = str(fig.get("ocr_text") or "")
            out[int(fid)] = (mark(caption, terms), ocr_snippet(ocr, terms, snippet_tokens))
        return out


def _top_of(searcher: Any, query: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard's best ``n``: (figure ids from the ``id`` fast field, BM25 scores)."""
    hits = searcher.search(query, int(n), count=False).hits
    if not hits:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ids = np.asarray(searcher.fast_field_values("id", [a for _, a in hits]), np.int64)
    return ids, np.asarray([s for s, _ in hits], np.float64)


@lru_cache(maxsize=1024)
def _stemmed(text: str) -> tuple[tuple[int, int, str], ...]:
    """Word spans of ``text`` with each word's stem (as the index analyses it). Cached: a result
    page's captions are analysed for its highlights and again for its explanations."""
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
    stems = _INDEX_ANALYZER.analyze(text)
    if len(stems) != len(spans):  # long words dropped, or a script split differently
        stems = [(_INDEX_ANALYZER.analyze(text[s:e]) or [""])[0] for s, e in spans]
    return tuple((s, e, stem) for (s, e), stem in zip(spans, stems, strict=True))


def _matches(text: str, terms: set[str]) -> list[tuple[int, int, bool]]:
    """Word spans of ``text`` with whether each word's stem is one of ``terms``."""
    return [(s, e, stem in terms) for s, e, stem in _stemmed(text)]


def matched_words(text: str, terms: set[str]) -> dict[str, str]:
    """{stem: the first word of ``text`` with that stem, as written} for the words whose stem
    is one of ``terms`` (what a search result's explanation shows)."""
    out: dict[str, str] = {}
    for s, e, stem in _stemmed(text or ""):
        if stem in terms and stem not in out:
            out[stem] = text[s:e]
    return out


def _render(text: str, spans: Sequence[tuple[int, int, bool]], start: int, end: int) -> str:
    parts, pos = [], start
    for s, e, hit in spans:
        if not hit or s < start or e > end:
            continue
        parts.append(html.escape(text[pos:s]))
        parts.append(f"{_MARK_OPEN}{html.escape(text[s:e])}{_MARK_CLOSE}")
        pos = e
    parts.append(html.escape(text[pos:end]))
    return "".join(parts)


def mark(text: str, terms: set[str]) -> str:
    """HTML of ``text`` with the words whose stem is in ``terms`` in ``<mark>``."""
    if not text:
        return ""
    return _render(text, _matches(text, terms), 0, len(text))


def ocr_snippet(text: str, terms: set[str], tokens: int = 16) -> str:
    """The ``tokens``-word window of ``text`` with the most matching words (the first such),
    marked, with "…" where text was cut; "" when no word matches."""
    spans = _matches(text, terms) if text else []
    hits = [i for i, (_, _, hit) in enumerate(spans) if hit]
    if not hits:
        return ""
    best, best_n = 0, -1
    for first in hits:
        lo = max(0, min(first, len(spans) - tokens))
        n = sum(1 for h in hits if lo <= h < lo + tokens)
        if n > best_n:
            best, best_n = lo, n
    window = spans[best : best + tokens]
    start = 0 if best == 0 else window[0][0]
    end = len(text) if best + tokens >= len(spans) else window[-1][1]
    body = _render(text, spans, start, end)
    return ("…" if start > 0 else "") + body + ("…" if end < len(text) else "")
