"""Columnar filter metadata of an index version: filters without a SQL scan on the query path.

Building a filter's allowed-id set with ``FigureStore.filtered_ids`` scans the store: 43-53 s
and up to 580 MB for one broad filter at 5 M figures (bench/results/filter_ids.json). Instead,
every version directory holds ``columns/``: one ``.npy`` file per filterable attribute of the
live (non-retracted) figures, in figure-id order, read with ``np.load(mmap_mode="r")``:

==================  ========  ==============================================================
file                dtype     meaning
==================  ========  ==============================================================
``ids.npy``         int64     figure ids, sorted (row ``i`` of every other column is ``ids[i]``)
``year.npy``        int16     the article's year; 0 = unknown (NULL)
``journal.npy``     int32     code of SQLite's ``lower(journal)`` in ``vocab.json`` ["journal"]
``license.npy``     int8      code of the license class in ``vocab.json`` ["license_class"]
``figure_type.npy`` int8      code of the figure type in ``vocab.json`` ["figure_type"]; -1 none
``article.npy``     int32     the article's row id (the ``pmcid`` filter: one point query
                              looks the pmcid up, then a comparison)
``has_image.npy``   bool      whether the figure has an image
``rights.npy``      int8      the figure's own rights: 1 reusable, 0 not (a third-party
                              statement, or its own license is not open), -1 its article's
                              license decides (no own license, no statement). Optional:
                              versions written before it answer ``reusable`` through SQL
``first_version``   int16     code of the version that first served the figure, in
                              ``vocab.json`` ["first_version"] (the version history,
                              :mod:`figsearch.arrivals`). Optional: versions written before it
                              cannot answer feeds
==================  ========  ==============================================================

A filter (:class:`~figsearch.store.FigureFilter`) is evaluated by :meth:`VersionColumns.allowed`
as a few vectorised comparisons (milliseconds at 15 M rows) into an :class:`AllowedSet`, whose
semantics equal ``FigureFilter.sql()``: retracted articles' figures are absent from the columns,
a journal matches case-insensitively as SQLite's (ASCII-only) ``lower()`` does, commercial use
is a license class in ``COMMERCIAL_CLASSES``, ``reusable`` is ``rights == 1`` or
(``rights == -1`` and the article's class in ``REUSABLE_CLASSES``), an unknown year passes no year bound. Figure types
come from the version's own ``figure_types.npy`` when it has one (what
:class:`figsearch.version_data.VersionedStore` filters by), else from the store's
``figures.figure_type`` column. Versions without ``columns/`` fall back to the SQL path.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.arrivals import code_dtype, first_versions
from figsearch.datadir import fsync_path
from figsearch.licenses import COMMERCIAL_CLASSES
from figsearch.rights import REUSABLE_CLASSES
from figsearch.sorted_ids import sorted_unique
from figsearch.store import FigureFilter, FigureStore

COLUMNS_DIR = "columns"
VOCAB_FILE = "vocab.json"
FORMAT = 1
#: column name -> dtype, in the order the files are written
COLUMNS: dict[str, Any] = {
    "ids": np.int64, "year": np.int16, "journal": np.int32, "license": np.int8,
    "figure_type": np.int8, "article": np.int32, "has_image": np.bool_, "rights": np.int8,
    "first_version": np.int16,
}
#: columns a version may lack (written before they existed): filters needing them use SQL
#: (``first_version``: no SQL form; a feed over such a version is refused)
OPTIONAL_COLUMNS = frozenset({"rights", "first_version"})
READ_CHUNK = 100_000  # rows a fetch holds as Python tuples (~15 MB)
ALLOWED_CACHE_SIZE = 16  # filters whose allowed sets (and their per-index row masks) are kept
#: :meth:`AllowedSet.contains` looks up to this many ids by binary search in the column ids
#: (~0.3 us each at 15 M) instead of building the bitmap by figure id (20-35 ms at 15 M): a
#: query tests a few thousand (keyword hits, post-filtered candidates, passages' figures)
LOOKUP_IDS_MAX = 100_000


# -- the allowed set ---------------------------------------------------------------------------
def bit_test(bits: np.ndarray, ids: Any) -> np.ndarray:
    """bool per id: its bit in a little-endian packed bitmap (``np.packbits(...,
    bitorder="little")``); ids outside the bitmap: False."""
    arr = np.asarray(ids, np.int64)
    nbits = len(bits) * 8
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= nbits):
        inside = (arr >= 0) & (arr < nbits)
        out = np.zeros(arr.shape, bool)
        out[inside] = bit_test(bits, arr[inside])
        return out
    if arr.size * 16 > nbits:  # many ids: unpacking once and gathering is cheaper
        return np.unpackbits(bits, bitorder="little").view(bool)[arr]
    return ((bits[arr >> 3] >> (arr & 7).astype(np.uint8)) & 1).astype(bool)


def _by_id_bits(base_ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Packed bitmap by figure id of ``base_ids`` (sorted) where ``mask`` (None: all)."""
    size = int(base_ids[-1]) + 1 if len(base_ids) else 0
    by_id = np.zeros(size, bool)
    by_id[base_ids] = True if mask is None else mask
    return np.packbits(by_id, bitorder="little")


@dataclass(frozen=True)
class IndexMap:
    """How one index's rows line up with a version's column rows (both sorted by figure id).

    ``same``: the index holds exactly the columns' figures, so a row mask is the column mask.
    Otherwise ``in_index`` (packed, per column row) marks the column rows the index holds and
    ``found`` (packed, per index row; None when all are) the index rows the columns hold: a
    row mask is ``mask[in_index]`` placed at ``found``, a compress instead of a gather by id.
    """

    index_ids: np.ndarray  # held: its id() keys the cache
    same: bool
    in_index: np.ndarray | None = None
    found: np.ndarray | None = None
    n_columns: int = 0
    words: np.ndarray | None = None  # ``in_index``'s buffer as little-endian uint64 words
    ranks: np.ndarray | None = None  # per word: the column rows before it that the index holds

    @classmethod
    def build(cls, column_ids: np.ndarray, index_ids: np.ndarray) -> IndexMap:
        cols = np.asarray(column_ids)
        if len(cols) == len(index_ids) and np.array_equal(cols, index_ids):
            return cls(index_ids, True, n_columns=len(cols))
        if not len(cols):
            return cls(index_ids, False, np.zeros(0, np.uint8),
                       np.packbits(np.zeros(len(index_ids), bool)), 0)
        pos = np.searchsorted(cols, index_ids).clip(0, len(cols) - 1)
        found = cols[pos] == index_ids
        in_index = np.zeros(len(cols), bool)
        in_index[pos[found]] = True
        packed = np.packbits(in_index, bitorder="little")
        buffer = np.zeros(-(-len(packed) // 8) * 8, np.uint8)  # zero-padded to whole words
        buffer[:len(packed)] = packed
        words = buffer.view("<u8")
        counts = np.bitwise_count(words).astype(np.int64)
        return cls(index_ids, False, buffer[:len(packed)],
                   None if found.all() else np.packbits(found, bitorder="little"), len(cols),
                   words, np.cumsum(counts) - counts)

    def row_mask(self, column_mask: np.ndarray) -> np.ndarray:
        """bool per index row from a bool mask over the column rows."""
        if self.same:
            return column_mask
        assert self.in_index is not None
        in_index = np.unpackbits(self.in_index, count=self.n_columns, bitorder="little")
        picked = column_mask[in_index.view(bool)]
        if self.found is None:
            return picked
        out = np.zeros(len(self.index_ids), bool)
        out[np.unpackbits(self.found, count=len(self.index_ids),
                          bitorder="little").view(bool)] = picked
        return out

    def rows_of(self, column_rows: np.ndarray) -> np.ndarray | None:
        """The index rows of sorted column rows, those the index lacks dropped: a column row's
        index row is its rank among the index's column rows (a prefix popcount over
        ``in_index``), so no figure id is read. None when the index also holds figures the
        columns lack (ranks would not be its rows: look the ids up instead)."""
        if self.same:
            return column_rows
        if self.found is not None or self.words is None or self.ranks is None:
            return None
        assert self.in_index is not None
        held = column_rows[bit_test(self.in_index, column_rows)]
        word, bit = held >> 6, (held & 63).astype(np.uint64)
        below = (np.uint64(1) << bit) - np.uint64(1)
        return self.ranks[word] + np.bitwise_count(self.words[word] & below).astype(np.int64)

    def count(self, packed_mask: np.ndarray | None) -> int:
        """How many index rows a packed column mask (None: all rows) lets through: one AND
        and popcount of packed bits, no row mask (index rows outside the columns are figures
        no filter passes, so they never count)."""
        if self.same:
            return len(self.index_ids) if packed_mask is None else \
                int(np.bitwise_count(packed_mask).sum())
        assert self.in_index is not None
        held = self.in_index if packed_mask is None else self.in_index & packed_mask
        return int(np.bitwise_count(held).sum())


class AllowedSet:
    """The figures passing one filter: count, sorted ids (lazy), vectorised membership.

    Made from a mask over a version's column rows (:meth:`VersionColumns.allowed`) or from a
    sorted id array (:meth:`from_ids`, the SQL fallback). :meth:`contains` looks a few
    ids up by binary search in the base ids; many ids at once read a bitmap indexed by figure
    id (max id + 1 bits, packed: 1.9 MB at 15 M; built on such a first call, 20-35 ms at
    15 M), one gather each. :meth:`row_mask` of an index comes from the column mask through
    the index's :class:`IndexMap` (a compress, or nothing at all when the index holds every
    column row) and is kept per index, packed (n/8 bytes); :meth:`count_in` counts an index's
    allowed rows without it. The column mask is kept packed too. Safe to share across threads.
    """

    def __init__(self, base_ids: np.ndarray, mask: np.ndarray | None, total: int,
                 count: int | None = None, columns: VersionColumns | None = None) -> None:
        """``base_ids`` sorted unique figure ids; ``mask`` which of them pass (None: all);
        ``columns`` the version whose rows ``base_ids`` are (for its index maps)."""
        self._base = base_ids
        self._columns = columns
        self.total = int(total)
        self.count = int(np.count_nonzero(mask) if count is None and mask is not None
                         else len(base_ids) if count is None else count)
        self._ids: np.ndarray | None = None if mask is not None else np.asarray(base_ids, np.int64)
        self._column_rows: np.ndarray | None = None
        self._bits: np.ndarray | None = None
        self._mask = None if mask is None else np.packbits(mask, bitorder="little")
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_ids(cls, ids: Any, total: int | None = None) -> AllowedSet:
        """A set over sorted unique figure ids (e.g. ``FigureStore.filtered_ids``)."""
        arr = np.asarray(ids, np.int64).ravel()
        arr = sorted_unique(arr)
        return cls(arr, None, len(arr) if total is None else total)

    @classmethod
    def empty(cls, total: int = 0) -> AllowedSet:
        return cls(np.zeros(0, np.int64), None, total)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"AllowedSet(count={self.count}, total={self.total})"

    @property
    def selectivity(self) -> float:
        """count / total (1.0 for an empty universe)."""
        return self.count / self.total if self.total else 1.0

    def _column_mask(self) -> np.ndarray:
        """bool per base id (unpacked from the packed mask)."""
        if self._mask is None:
            return np.ones(len(self._base), bool)
        return np.unpackbits(self._mask, count=len(self._base), bitorder="little").view(bool)

    @property
    def ids(self) -> np.ndarray:
        """Sorted int64 figure ids of the set (computed on first use, then kept)."""
        if self._ids is None:
            self._ids = np.asarray(self._base[self._column_mask()], np.int64)
        return self._ids

    def bits(self) -> np.ndarray:
        """The membership bitmap by figure id, little-endian packed (``bit_test`` reads it)."""
        if self._bits is None:
            self._bits = _by_id_bits(self._base, None if self._mask is None
                                     else self._column_mask())
        return self._bits

    def contains(self, ids: Any) -> np.ndarray:
        """bool per figure id: whether it is in the set (ids outside the universe: False).
        Up to :data:`LOOKUP_IDS_MAX` ids are looked up in the sorted base ids unless the
        bitmap by id exists already; more build it (once) and read it."""
        arr = np.asarray(ids, np.int64)
        if self._bits is None and arr.size <= LOOKUP_IDS_MAX:
            return self._look_up(arr)
        return bit_test(self.bits(), arr)

    def _look_up(self, ids: np.ndarray) -> np.ndarray:
        """bool per id by binary search in the base ids, then the id's bit of the mask."""
        if not len(self._base):
            return np.zeros(ids.shape, bool)
        pos = np.searchsorted(self._base, ids).clip(0, len(self._base) - 1)
        found = np.asarray(self._base[pos] == ids)
        if self._mask is not None:
            found &= bit_test(self._mask, pos)
        return found

    def rows_in(self, index_ids: np.ndarray) -> np.ndarray | None:
        """Sorted row numbers of the set's figures in an index whose figure ids are
        ``index_ids``, from the set's column rows and the index's map (no figure id read:
        the memory-mapped id column costs ~40 ms of page faults at 15 M on its first read);
        None when the set has no columns or the map cannot say (then find its ids)."""
        if self._columns is None:
            return None
        rows = self._columns.index_map(index_ids).rows_of(self.column_rows)
        return None if rows is None else rows.astype(np.int64, copy=False)

    @property
    def column_rows(self) -> np.ndarray:
        """Sorted column rows of the set (from the packed mask on first use, then kept: exact
        plans ask for them, and those are for sets of at most ``EXACT_FROM_IDS_MAX``)."""
        if self._column_rows is None:
            self._column_rows = np.arange(len(self._base), dtype=np.int64) \
                if self._mask is None else np.flatnonzero(self._column_mask())
        return self._column_rows

    def count_in(self, index_ids: np.ndarray) -> int:
        """Allowed rows of one index whose figure ids are ``index_ids``: from the packed column
        mask and the index's map when the set has columns (no row mask built), else from the
        row mask (:meth:`row_bits`)."""
        hit = self._cached_rows(index_ids)
        if hit is not None:
            return hit[1]
        if self._columns is None:
            return self.row_bits(index_ids)[1]
        return self._columns.index_map(index_ids).count(self._mask)

    def row_bits(self, index_ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(packed row mask, allowed rows) of one index whose figure ids are ``index_ids``,
        cached per index (the cache holds ``index_ids``: its id() cannot be reused meanwhile)."""
        hit = self._cached_rows(index_ids)
        if hit is not None:
            return hit
        index_map = None if self._columns is None else self._columns.index_map(index_ids)
        if index_map is not None and index_map.same:
            # the index holds every column row: its row mask is the (packed) column mask
            packed = self._mask if self._mask is not None else \
                np.packbits(np.ones(len(index_ids), bool), bitorder="little")
            entry = (index_ids, packed, self.count)
        else:
            mask = index_map.row_mask(self._column_mask()) if index_map is not None \
                else self.contains(index_ids)
            entry = (index_ids, np.packbits(mask, bitorder="little"),
                     int(np.count_nonzero(mask)))
        with self._lock:
            self._rows[id(index_ids)] = entry
        return entry[1], entry[2]

    def _cached_rows(self, index_ids: np.ndarray) -> tuple[np.ndarray, int] | None:
        """(packed row mask, allowed rows) of the index already made, or None."""
        with self._lock:
            hit = self._rows.get(id(index_ids))
        return (hit[1], hit[2]) if hit is not None and hit[0] is index_ids else None

    def row_mask(self, index_ids: np.ndarray) -> np.ndarray:
        """bool per row of one index whose figure ids are ``index_ids`` (cached packed per
        index, :meth:`row_bits`; unpacked per call)."""
        bits, _count = self.row_bits(index_ids)
        return np.unpackbits(bits, count=len(index_ids), bitorder="little").view(bool)


# -- reading the store -------------------------------------------------------------------------
def sql_lower(value: str) -> str:
    """``value`` lower-cased exactly as the store's SQLite ``lower()`` does (ASCII only, unless
    the library was built with ICU), by asking the same library."""
    conn = sqlite3.connect(":memory:")
    try:
        return str(conn.execute("SELECT lower(?)", (value,)).fetchone()[0])
    finally:
        conn.close()


def _codes(values: Sequence[Any], vocab: dict[str, int]) -> np.ndarray:
    """Codes of string values in ``vocab`` (new values appended); None -> -1."""
    return np.fromiter((-1 if v is None else vocab.setdefault(v, len(vocab)) for v in values),
                       np.int64, count=len(values))


def _code_dtype(dtype: Any, vocab: dict[str, int]) -> Any:
    """``dtype`` or a wider integer when the vocabulary outgrows it."""
    info = np.iinfo(dtype)
    if len(vocab) <= info.max:
        return dtype
    return np.int16 if len(vocab) <= np.iinfo(np.int16).max else np.int32


def _read_articles(raw: sqlite3.Connection, chunk: int) -> dict[str, Any]:
    """Per-article arrays indexed by article id: year, journal / license codes, live flag."""
    max_id = int(raw.execute("SELECT coalesce(max(id), 0) FROM articles").fetchone()[0])
    year = np.zeros(max_id + 1, np.int16)
    journal = np.full(max_id + 1, -1, np.int32)
    license_ = np.full(max_id + 1, -1, np.int64)
    live = np.zeros(max_id + 1, bool)
    journals: dict[str, int] = {}
    licenses: dict[str, int] = {}
    last = -1
    while True:
        rows = raw.execute(
            "SELECT id, coalesce(year, 0), lower(journal), license_class, retracted "
            "FROM articles WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            break
        ids, years, jn, lc, retracted = zip(*rows, strict=True)
        aid = np.asarray(ids, np.int64)
        year[aid] = np.clip(np.asarray(years, np.int64), -32768, 32767)
        journal[aid] = _codes(jn, journals)
        license_[aid] = _codes(lc, licenses)
        live[aid] = ~np.asarray(retracted, bool)
        last = int(aid[-1])
    return {"year": year, "journal": journal, "license": license_, "live": live,
            "journals": journals, "licenses": licenses}


# The figure's own rights as -1/0/1 (see the module doc): REUSABLE_SQL's per-figure half.
_RIGHTS_CASE = ("CASE WHEN coalesce(third_party, '') != '' THEN 0 "
                "WHEN rights_license_class IS NULL THEN -1 "
                f"WHEN rights_license_class IN ({', '.join('?' * len(REUSABLE_CLASSES))}) THEN 1 "
                "ELSE 0 END")


def _read_figures(raw: sqlite3.Connection, chunk: int, with_types: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             dict[str, int]]:
    """(ids, article ids, has_image, store figure-type codes, rights, type vocab) of every
    figure."""
    types: dict[str, int] = {}
    if with_types:
        names = [r[0] for r in raw.execute(
            "SELECT DISTINCT figure_type FROM figures WHERE figure_type IS NOT NULL "
            "ORDER BY figure_type")]
        types = {str(n): i for i, n in enumerate(names)}
    # figure types as integers in SQL (few distinct values): every column read is numeric
    case = ("CASE figure_type " + " ".join(f"WHEN ? THEN {i}" for i in range(len(types)))
            + " ELSE -1 END") if types else "-1"
    sql = (f"SELECT id, article_id, has_image, {case}, {_RIGHTS_CASE} FROM figures "
           "WHERE id > ? ORDER BY id LIMIT ?")
    reusable = sorted(REUSABLE_CLASSES)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    last = -1
    while True:
        rows = raw.execute(sql, (*types, *reusable, last, chunk)).fetchall()
        if not rows:
            break
        arr = np.fromiter(itertools.chain.from_iterable(rows), np.int64,
                          count=5 * len(rows)).reshape(-1, 5)
        del rows
        # compact per chunk (15 bytes a figure, not 40): the build's peak memory at 15 M
        parts.append((arr[:, 0].copy(), arr[:, 1].astype(np.int32), arr[:, 2].astype(bool),
                      arr[:, 3].astype(np.int16), arr[:, 4].astype(np.int8)))
        last = int(arr[-1, 0])
    if not parts:
        empty = np.zeros(0, np.int64)
        return (empty, empty.astype(np.int32), empty.astype(bool), empty.astype(np.int16),
                empty.astype(np.int8), types)
    cols = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    parts.clear()
    return cols[0], cols[1], cols[2], cols[3], cols[4], types


def _version_types(version_dir: Path, type_names: Sequence[str], ids: np.ndarray) -> np.ndarray:
    """Figure-type codes of ``ids`` from the version's own ``figure_types.npy`` (-1: none,
    including figures the version's image index does not hold)."""
    from figsearch.index import IDS_FILE
    from figsearch.version_data import TYPES_FILE

    out = np.full(len(ids), -1, np.int64)
    v_ids = np.load(version_dir / IDS_FILE)
    v_codes = np.load(version_dir / TYPES_FILE)
    if len(ids) and len(v_ids):
        pos = np.searchsorted(ids, v_ids).clip(0, len(ids) - 1)
        found = ids[pos] == v_ids
        out[pos[found]] = v_codes[found]
    if len(type_names) and out.max(initial=-1) >= len(type_names):
        raise ValueError(f"{version_dir}: figure-type codes beyond its {len(type_names)} labels")
    return out




def write_columns(store: FigureStore, version_dir: Path, *,
                  type_names: Sequence[str] | None = None,
                  chunk: int = READ_CHUNK) -> dict[str, Any]:
    """Write ``<version_dir>/columns/`` from the store (one read snapshot, raw SQL in id-order
    chunks, no ORM objects) and fsync it; returns ``{"columns": {...}}`` for the manifest.

    ``type_names`` (the version's ``figure_type_labels``) says that figure types come from the
    version's ``figure_types.npy`` + ``ids.npy``, already written in ``version_dir``; without it
    they come from the store's ``figures.figure_type``. Usable as (part of) a build's
    ``add_files``: ``functools.partial(write_columns, store, type_names=names)``.
    """
    start = time.perf_counter()
    version_dir = Path(version_dir)
    from figsearch.version_data import TYPES_FILE

    use_version_types = type_names is not None and (version_dir / TYPES_FILE).is_file()
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("BEGIN")  # one snapshot (WAL) for articles and figures
        try:
            art = _read_articles(raw, chunk)
            ids, aid, has_image, ftype, rights, types = _read_figures(
                raw, chunk, not use_version_types)
        finally:
            raw.execute("ROLLBACK")
    live = art["live"][aid]
    ids, aid, has_image, ftype = ids[live], aid[live], has_image[live], ftype[live]
    rights = rights[live]
    if use_version_types:
        assert type_names is not None
        types = {str(n): i for i, n in enumerate(type_names)}
        ftype = _version_types(version_dir, type_names, ids)
    journals, licenses = art["journals"], art["licenses"]
    arrived, history = first_versions(version_dir, ids)
    arrays = {
        "ids": ids, "year": art["year"][aid], "journal": art["journal"][aid],
        "license": art["license"][aid].astype(_code_dtype(np.int8, licenses)),
        "figure_type": ftype.astype(_code_dtype(np.int8, types)),
        "article": aid.astype(np.int32), "has_image": has_image, "rights": rights,
        "first_version": arrived.astype(code_dtype(len(history))),
    }
    out_dir = version_dir / COLUMNS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    for name, arr in arrays.items():
        want = COLUMNS[name] if name not in ("license", "figure_type", "first_version") \
            else arr.dtype
        path = out_dir / f"{name}.npy"
        np.save(path, np.ascontiguousarray(arr, dtype=want))
        files[path.name] = path.stat().st_size
    vocab = {"format": FORMAT, "count": int(len(ids)),
             "max_id": int(ids[-1]) if len(ids) else -1,
             "journal": _vocab_list(journals), "license_class": _vocab_list(licenses),
             "figure_type": _vocab_list(types),
             "figure_types_from": "version" if use_version_types else "store",
             "first_version": history}
    (out_dir / VOCAB_FILE).write_text(json.dumps(vocab))
    files[VOCAB_FILE] = (out_dir / VOCAB_FILE).stat().st_size
    for name in files:
        fsync_path(out_dir / name)
    fsync_path(out_dir)
    return {"columns": {"count": int(len(ids)), "files": files,
                        "figure_types_from": vocab["figure_types_from"],
                        "seconds": round(time.perf_counter() - start, 3)}}


def _vocab_list(vocab: dict[str, int]) -> list[str]:
    out = [""] * len(vocab)
    for name, code in vocab.items():
        out[code] = name
    return out


# -- the read side -----------------------------------------------------------------------------
class VersionColumns:
    """The memory-mapped columns of one version; :meth:`allowed` evaluates a filter."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], vocab: dict[str, Any],
                 store: FigureStore | None = None) -> None:
        self.path = path
        self.store = store  # for the pmcid filter's one point query
        self._a = arrays
        self.vocab = vocab
        self._codes = {name: {v: i for i, v in enumerate(vocab[name])}
                       for name in ("journal", "license_class", "figure_type")}
        self._cache: OrderedDict[tuple[Any, ...], AllowedSet] = OrderedDict()
        self._maps: dict[int, IndexMap] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, version_dir: str | Path, store: FigureStore | None = None
             ) -> VersionColumns | None:
        """The version's columns, or None for a version built without them."""
        path = Path(version_dir) / COLUMNS_DIR
        if not (path / VOCAB_FILE).is_file():
            return None
        vocab = json.loads((path / VOCAB_FILE).read_text())
        if int(vocab.get("format", 0)) != FORMAT:
            return None  # written by another format: the SQL path still answers
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in COLUMNS
                  if name not in OPTIONAL_COLUMNS or (path / f"{name}.npy").is_file()}
        n = int(vocab["count"])
        bad = {name: len(arr) for name, arr in arrays.items() if len(arr) != n}
        if bad:
            from figsearch.index import IndexLoadError

            raise IndexLoadError(f"{path}: columns of {bad} rows, vocab says {n} (truncated?)")
        return cls(path, arrays, vocab, store)

    @property
    def count(self) -> int:
        return len(self._a["ids"])

    @property
    def history(self) -> list[dict[str, str]] | None:
        """The version history of the ``first_version`` column (oldest first, this version
        last; :mod:`figsearch.arrivals`), or None for a version written without it."""
        history = self.vocab.get("first_version")
        return list(history) if "first_version" in self._a and isinstance(history, list) \
            else None

    @property
    def ids(self) -> np.ndarray:
        """Sorted figure ids of the live figures (memory-mapped)."""
        return self._a["ids"]

    def column(self, name: str) -> np.ndarray:
        """One memory-mapped column (see :data:`COLUMNS`)."""
        return self._a[name]

    def index_map(self, index_ids: np.ndarray) -> IndexMap:
        """How an index's rows (figure ids ``index_ids``, sorted) line up with the columns'
        rows; built once per index (one ``searchsorted``: call :meth:`prepare` when the index
        loads, so no filter's first use pays it)."""
        key = id(index_ids)
        with self._lock:
            hit = self._maps.get(key)
        if hit is not None and hit.index_ids is index_ids:
            return hit
        built = IndexMap.build(self.ids, index_ids)
        with self._lock:
            self._maps[key] = built
        return built

    def prepare(self, *index_ids: np.ndarray) -> None:
        """Build the index maps of these indexes now (load time) instead of at a first filter."""
        for ids in index_ids:
            self.index_map(ids)

    def allowed(self, flt: FigureFilter) -> AllowedSet:
        """The figures passing ``flt`` (same semantics as ``FigureFilter.sql()``), cached in a
        small LRU keyed by the filter's values."""
        key = dataclasses.astuple(flt)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        result = self._evaluate(flt)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > ALLOWED_CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    def needs_sql(self, flt: FigureFilter) -> bool:
        """Whether :meth:`allowed` answers ``flt`` through the store's SQL (a scan): the
        reusable filter on a version written before the rights column."""
        return flt.reusable_only and "rights" not in self._a

    def cached(self, flt: FigureFilter) -> AllowedSet | None:
        """``flt``'s allowed set when the cache holds it (nothing is computed)."""
        with self._lock:
            return self._cache.get(dataclasses.astuple(flt))

    def _evaluate(self, flt: FigureFilter) -> AllowedSet:
        a, n = self._a, self.count
        tests: list[Any] = []  # callables giving a bool mask, cheapest first
        codes = self._codes
        if flt.journal:
            code = codes["journal"].get(sql_lower(flt.journal))
            if code is None:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda code=code: a["journal"] == code)
        if flt.license_class:
            code = codes["license_class"].get(flt.license_class)
            if code is None:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda code=code: a["license"] == code)
        if flt.commercial_only:
            wanted = [codes["license_class"][c] for c in sorted(COMMERCIAL_CLASSES)
                      if c in codes["license_class"]]
            if not wanted:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda: _any_equal(a["license"], wanted))
        if flt.reusable_only:
            open_codes = [codes["license_class"][c] for c in sorted(REUSABLE_CLASSES)
                          if c in codes["license_class"]]
            if self.needs_sql(flt):  # a version written before the rights column
                return self._from_sql(flt)
            tests.append(lambda: _reusable(a["rights"], a["license"], open_codes))
        if flt.figure_type:
            code = codes["figure_type"].get(flt.figure_type)
            if code is None:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda code=code: a["figure_type"] == code)
        if flt.pmcid:
            articles = self._article_ids(flt.pmcid)
            if not articles:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda: _any_equal(a["article"], articles))
        if flt.first_versions is not None:
            if self.history is None:
                raise ValueError(f"{self.path}: no first_version column (a version built "
                                 "before feeds); rebuild the index to answer feeds")
            names = {h["version"]: i for i, h in enumerate(self.history)}
            arrived = [names[v] for v in flt.first_versions if v in names]
            if not arrived:
                return AllowedSet(self.ids, np.zeros(n, bool), n, 0, self)
            tests.append(lambda: np.isin(a["first_version"], arrived))
        if flt.year_from is not None:
            lo = int(flt.year_from)
            tests.append(lambda: _year_test(a["year"], lo, ">="))
        if flt.year_to is not None:
            hi = int(flt.year_to)
            tests.append(lambda: _year_test(a["year"], hi, "<="))
        if not tests:
            return AllowedSet(self.ids, np.ones(n, bool), n, columns=self)
        mask = tests[0]()
        for test in tests[1:]:
            np.logical_and(mask, test(), out=mask)
        return AllowedSet(self.ids, mask, n, columns=self)

    def _from_sql(self, flt: FigureFilter) -> AllowedSet:
        """``flt`` answered by the store's SQL (a filter this version has no column for),
        as a set over this version's rows."""
        if self.store is None:
            raise ValueError("this version has no rights column: the reusable filter needs "
                             "VersionColumns.load(..., store=...)")
        ids = self.ids
        wanted = self.store.filtered_ids(flt)
        return AllowedSet(ids, np.isin(ids, wanted, assume_unique=True), self.count,
                          columns=self)

    def _article_ids(self, pmcid: str) -> list[int]:
        """Row ids of the articles with this pmcid (one indexed point query)."""
        if self.store is None:
            raise ValueError("the pmcid filter needs VersionColumns.load(..., store=...)")
        with self.store.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            return [int(r[0]) for r in raw.execute(
                "SELECT id FROM articles WHERE pmcid = ?", (pmcid,))]


def _reusable(rights: np.ndarray, license_: np.ndarray, open_codes: Sequence[int]
              ) -> np.ndarray:
    """The ``reusable`` filter: the figure's own rights say so (1), or it has none (-1) and
    its article's license class is one of ``open_codes``."""
    mask = np.asarray(rights == 1)
    if open_codes:
        inherit = np.asarray(rights == -1)
        np.logical_and(inherit, _any_equal(license_, open_codes), out=inherit)
        np.logical_or(mask, inherit, out=mask)
    return mask


def _any_equal(col: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``col`` equals any of a few values (faster than np.isin for a handful)."""
    mask = col == values[0]
    for v in values[1:]:
        np.logical_or(mask, col == v, out=mask)
    return mask


def _year_test(year: np.ndarray, bound: int, op: str) -> np.ndarray:
    """``year >= bound`` / ``year <= bound`` where unknown years (0) never pass (SQL NULL)."""
    info = np.iinfo(year.dtype)
    if op == ">=":
        if bound > info.max:
            return np.zeros(len(year), bool)
        mask = np.asarray(year >= max(bound, info.min))
        if bound <= 0:
            np.logical_and(mask, year != 0, out=mask)
    else:
        if bound < info.min:
            return np.zeros(len(year), bool)
        mask = np.asarray(year <= min(bound, info.max))
        if bound >= 0:
            np.logical_and(mask, year != 0, out=mask)
    return mask
