"""Versioned FAISS indexes: the factory-string rule and the read side used by search.

A version directory (``<data_dir>/indexes/<version>/``) holds:

- ``index.faiss`` — the FAISS index over *row positions* 0..n-1 (inner product on
  L2-normalised vectors),
- ``ids.npy`` — int64 figure ids, sorted ascending; row ``i`` of the index is figure ``ids[i]``,
- ``vectors.npy`` — the float16 vectors in the same row order, read row by row
  (:class:`RowFile`) for exact re-ranking of compressed (SQ/PQ) candidates and for
  :meth:`SearchIndex.vectors_for`,
- ``manifest.json`` — model spec/key, dim, count, factory string, build time, checksums.

``indexes/current`` is a symlink to the live version, switched atomically by the builder
(:mod:`indexer.build`). This module only reads.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import mmap
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from figsearch import timing
from figsearch.columns import AllowedSet, bit_test
from figsearch.datadir import MANIFEST_FILE
from figsearch.sorted_ids import compact_ids, find_sorted, sorted_unique

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
CURRENT_LINK = "current"

#: Below this many points a flat (exact) index is both fastest to build and fast enough to search.
FLAT_MAX = 50_000
#: From this many points on, the IVF lists hold SQ8 codes (1 byte per dimension) re-ranked from
#: the float16 vectors instead of float32 vectors: 1M x 512-d float32 lists are 2 GiB that every
#: worker maps and, query after query, pulls into its resident memory (issue 15: server RSS
#: <= 1 GB at 1M); SQ8 needs no training and re-ranking keeps recall@10 >= 0.98.
SQ8_MIN = 500_000
#: From this many points on, OPQ + IVF65536/HNSW + PQ (the faiss guideline for 10M-100M).
HUGE_MIN = 10_000_000
#: Allowed subsets at most this large are searched exactly (brute force over their vectors).
EXACT_SUBSET_MAX = 20_000
#: An exact plan finds its rows from the allowed set's ids (a binary search each) when the set
#: holds at most this many figures; a larger set that has few rows in this index (a filter on
#: what the index lacks) takes them from the row mask instead.
EXACT_FROM_IDS_MAX = 8 * EXACT_SUBSET_MAX
SUBSET_CACHE_SIZE = 8  # allowed-id sets whose rows and FAISS selector are kept
#: Exactly searched subsets keep their float16 vectors, up to this many bytes per index (the
#: most recently used first): reading 16 k scattered rows of a 15 M-row vectors.npy from the
#: page cache takes 30-50 ms (a page fault or a read per row), scoring them 2 ms, and a narrow
#: filter repeats query after query (bench/results/vector_scale_15m.json). 48 MiB holds three
#: full subsets of 512-d rows.
EXACT_VECTORS_BYTES = 48 << 20
#: Allowed sets holding at least this share of an index's rows are post-filtered: an
#: unfiltered search fetches deeper (by 1/selectivity) and keeps the allowed hits, no selector.
#: bench/filter_plans.py (200k x 64, nprobe 32, one thread) found the IDSelectorBitmap search
#: as fast or faster at every share it tried, 0.1 % to 90 %: IVF2048,SQ8 0.51 vs 0.63 ms p50 at
#: 90 %, 0.47 vs 0.72 ms at 40 %; IVF2048,Flat 0.20 vs 0.21 ms at 40 %, equal at 60 %. A bitmap
#: bit test per scanned code costs less than the deeper heap and re-ranking, so only sets of
#: nearly every row skip the selector. Indexes that refuse selectors post-filter at any share.
POSTFILTER_MIN = 0.95
#: The image index's share of ``index_memory_gb``, the budget for all of a version's codes; the
#: caption indexes (whole captions and their passages, split by count) take the rest. At 15 M
#: figures the default 4 GiB gives the image index 32-byte codes and the caption indexes 32 (two
#: passages a figure) or 16 (3.25, the JATS corpus): 2.1-2.4 GB of codes, inside the 4 GB server
#: RSS goal with the models (docs/scale.md); at 1 M every index keeps SQ8.
IMAGE_BUDGET_SHARE = 0.25
#: PQ bytes/vector tried, largest first. Capped at 64: longer codes slow the scan, and exact
#: re-ranking recovers the precision instead.
#: efSearch for plain HNSW indexes (faiss's default of 16 loses recall on clustered data).
HNSW_EF_SEARCH = 128
#: faiss's bundled type stubs lack the SearchParameters keyword constructors used here.
_faiss: Any = faiss
_PQ_M_CHOICES = (64, 48, 32, 16, 8, 4)


class IndexLoadError(RuntimeError):
    """An index version is missing, incomplete or corrupt."""


class IndexModelMismatch(IndexLoadError):
    """The index was built with another model than the one asked to query it."""


# -- locating versions ------------------------------------------------------------------------
def current_version_dir(indexes_dir: str | Path) -> Path | None:
    """The version directory ``indexes/current`` points to, or None when there is none."""
    link = Path(indexes_dir) / CURRENT_LINK
    if not link.exists():
        return None
    target = link.resolve()
    return target if (target / MANIFEST_FILE).is_file() else None


# -- the factory rule --------------------------------------------------------------------------
def _pow2_near(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def ivf_lists(n: int) -> int:
    """IVF list count: a power of two near 4·sqrt(n), the low end of faiss's 4–16·sqrt(n), with
    >= 39 points per centroid available for training.

    The low end because the coarse k-means costs (50 points per list) x lists x dim per
    iteration, i.e. grows as lists²: 8·sqrt(n) = 8192 lists at 1M is 34 TFLOP over 10
    iterations, 4x the 4096 lists whose training took 102 s on 2 shared CPU cores, while 32
    probes of 4096 lists still find 0.998 of the exact top 10 (bench/index_build.py)."""
    k = _pow2_near(4 * math.sqrt(n))
    while k > 1 and n < 39 * k:
        k //= 2
    return max(k, 1)


def image_budget(memory_gb: float) -> float:
    """The image index's part (GiB) of a version's memory budget (:data:`IMAGE_BUDGET_SHARE`)."""
    return memory_gb * IMAGE_BUDGET_SHARE


def caption_budget(memory_gb: float) -> float:
    """The caption indexes' part (GiB) of a version's memory budget: what the image's leaves."""
    return memory_gb - image_budget(memory_gb)


def pq_code_size(n: int, dim: int, memory_gb: float) -> int:
    """Largest PQ sub-quantizer count ``m`` (bytes per vector) that divides ``dim`` and whose
    codes + 8-byte ids for ``n`` vectors fit in ~70% of the memory budget."""
    budget = memory_gb * 2**30 * 0.7 / max(n, 1) - 8
    for m in _PQ_M_CHOICES:
        if dim % m == 0 and m <= budget and m <= dim:
            return m
    return next((m for m in reversed(_PQ_M_CHOICES) if dim % m == 0), 1)


#: The coarse quantizer of IVF indexes from 4096 lists on (:func:`coarse_quantizer`).
HNSW_COARSE = "HNSW32_SQfp16"


def coarse_quantizer(lists: int) -> str:
    """The IVF part of a factory: from 4096 lists on, an HNSW graph finds a query's lists,
    over centroids kept in float16. The centroids are in every worker's own memory (65536 x
    512 float32 = 128 MiB for the 15 M image index, 96 MiB for each 384-d caption index);
    float16 halves that, and at 15 M the probed lists agreed 0.993 and the top 100 0.996 with
    the float32 quantizer's, the quantizer searching in 0.40 ms instead of 0.66."""
    return f"IVF{lists}({HNSW_COARSE})" if lists >= 4096 else f"IVF{lists}"


def choose_factory(n: int, dim: int, memory_gb: float) -> str:
    """The faiss factory string for ``n`` vectors of ``dim`` under a memory budget (GiB).

    ====================  =============================================================
    n                     factory
    ====================  =============================================================
    < 50k                 ``Flat`` (exact)
    50k – 500k, fits      ``IVF{k},Flat`` (k < 4096) or ``IVF{k}(HNSW32_SQfp16),Flat``
                          (k >= 4096) when float32 vectors take <= 50% of the budget
    500k – 10M, fits      ``{coarse},SQ8`` when 1 byte/dim takes <= 50% of the budget
    50k – 10M, too big    ``{coarse},PQ{m}`` (m = PQ bytes/vector from the budget)
    >= 10M                ``OPQ{m},IVF65536(HNSW32_SQfp16),PQ{m}`` (``IVF262144`` from 100M)
    ====================  =============================================================

    ``{coarse}`` is :func:`coarse_quantizer`'s: ``IVF{k}`` below 4096 lists, else
    ``IVF{k}(HNSW32_SQfp16)``. ``k`` is a power of two near 4·sqrt(n), halved until n >= 39·k
    (faiss's minimum training points per centroid): 100k -> 1024, 1M -> 4096 lists. Re-ranking
    with the stored float16 vectors restores the precision SQ8 and PQ lose (see
    docs/indexing.md).
    """
    if n < FLAT_MAX:
        return "Flat"
    if n >= HUGE_MIN:
        k = 262144 if n >= 100_000_000 else 65536
        m = pq_code_size(n, dim, memory_gb)
        return f"OPQ{m},{coarse_quantizer(k)},PQ{m}"
    k = ivf_lists(n)
    coarse = coarse_quantizer(k)
    half_budget = memory_gb * 2**30 * 0.5
    if n < SQ8_MIN and n * dim * 4 <= half_budget:
        return f"{coarse},Flat"
    if n >= SQ8_MIN and n * dim <= half_budget:
        return f"{coarse},SQ8"
    return f"{coarse},PQ{pq_code_size(n, dim, memory_gb)}"


def is_compressed(factory: str) -> bool:
    """Whether the index stores lossy codes (then exact re-ranking helps)."""
    codec = factory.split(",")[-1]
    return codec.startswith(("PQ", "SQ", "RQ", "LSQ", "RaBitQ"))


# -- checksums ------------------------------------------------------------------------------
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_files(version_dir: Path, checksums: dict[str, Any], full_hash: bool) -> None:
    """Raise :class:`IndexLoadError` when a listed file is missing or differs in size (or hash)."""
    for name, info in checksums.items():
        path = version_dir / name
        if not path.is_file():
            raise IndexLoadError(f"index version {version_dir.name}: file {name} is missing")
        size = path.stat().st_size
        if size != int(info["size"]):
            raise IndexLoadError(
                f"index version {version_dir.name}: {name} is {size} bytes, "
                f"manifest says {info['size']} (truncated or replaced)"
            )
        if full_hash and file_sha256(path) != info["sha256"]:
            raise IndexLoadError(f"index version {version_dir.name}: {name} checksum mismatch")


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """The parsed manifest of a version directory (IndexLoadError if absent or unreadable)."""
    path = version_dir / MANIFEST_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise IndexLoadError(f"{version_dir} is not an index version (no {MANIFEST_FILE})") from None
    except (OSError, ValueError) as exc:
        raise IndexLoadError(f"{path}: unreadable manifest ({exc})") from exc


# -- search parameters with selectors ------------------------------------------------------------
def _search_params(index: faiss.Index, sel: Any, nprobe: int) -> Any:
    """SearchParameters carrying an id selector, shaped for the index type (None if unsupported)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = _search_params(index.index, sel, nprobe)
        if inner is None:
            return None
        params = _faiss.SearchParametersPreTransform()
        params.index_params = inner
        params._keep = inner  # keep the SWIG object alive while params lives
        return params
    if isinstance(index, faiss.IndexIVF):
        return _faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, index.nlist))
    if isinstance(index, faiss.IndexHNSW):
        return _faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    if isinstance(index, (faiss.IndexFlat, faiss.IndexPQ, faiss.IndexScalarQuantizer)):
        return _faiss.SearchParameters(sel=sel)
    return None


def no_list_prefetch(index: Any) -> bool:
    """Turn off the prefetch threads of a memory-mapped IVF index's lists; True if it had any.

    faiss opens the lists of an index read with ``IO_FLAG_MMAP`` as ``OnDiskInvertedLists``,
    which start 32 threads on every search to read the probed lists ahead. The lists are in
    the page cache that the workers share; starting the threads cost more than the search
    itself: 1.96 ms per query instead of 0.32 ms (50 k vectors, ``IVF1024,Flat``, nprobe 32).
    """
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return False
    lists: Any = faiss.downcast_InvertedLists(ivf.invlists)  # type: ignore[arg-type]
    if not getattr(lists, "prefetch_nthread", 0):
        return False
    lists.prefetch_nthread = 0
    return True


def advise_random(path: Path) -> int:
    """``madvise(MADV_RANDOM)`` and ``madvise(MADV_NOHUGEPAGE)`` on this process's mappings of
    ``path``; returns how many mappings took both.

    Used on the memory-mapped index file, whose probed lists are scattered: random advice stops
    a fault reading ``read_ahead_kb`` (8 MiB on the bench machine) around it, and no huge pages
    stops it mapping a 2 MiB page-cache folio as one PMD (``FilePmdMapped`` in smaps). It does
    not stop kernel 6.18 mapping a whole large folio page by page, which is why the re-rank
    vectors are read, not mapped (:class:`RowFile`). Linux only; elsewhere (or when libc
    refuses) nothing happens.
    """
    advices = [getattr(mmap, name, None) for name in ("MADV_RANDOM", "MADV_NOHUGEPAGE")]
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    target, done = str(Path(path).resolve()), 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if None in advices or len(fields) < 6 or fields[5] != target:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        done += all(libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice)
                    == 0 for advice in advices)
    return done


class RowFile:
    """The rows of a C-order 2-D ``.npy`` file, read with ``preadv`` into the result: one call
    per run of consecutive rows, nothing mapped.

    Re-ranking reads a thousand scattered rows per query (k = 100, ten candidates each) and
    an exact subset up to 20,000 on a filter's first use. A mapping held for the index's life
    keeps every faulted page in the worker's RSS (a 2 MiB folio per row on a freshly written
    file: 287 MiB of a 1 M-row file after one query; issue 15: RSS <= 1 GB at 1 M), and a
    mapping made for each read pays a page fault per scattered row: 6.3-7.5 ms per 1,000 rows
    from the page cache, 52-88 ms per 15,000, against 2.3-2.7 ms and 29-37 ms with ``preadv``
    (1 M and 15 M rows, bench/results/row_reads.json). A freshly written file's 2 MiB folios
    had made the faults cheap, but pages read back from disk come in smaller folios.
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            major, _minor = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: expected a C-order 2-D array, got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        if path.stat().st_size < self.offset + self.shape[0] * self.row_bytes:
            raise ValueError(f"{path}: shorter than its {self.shape} header says (truncated)")
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        """Rows by an int, slice or array of row numbers (shape ``rows.shape + (dim,)``)."""
        idx = np.arange(self.shape[0])[rows] if isinstance(rows, slice) \
            else np.asarray(rows, np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row out of range 0..{self.shape[0] - 1}")
        fd = self._fd
        if fd is None:
            raise ValueError("RowFile is closed")
        out = np.empty((*idx.shape, self.shape[1]), self.dtype)
        flat = idx.ravel()
        if not flat.size or not self.row_bytes:
            return out
        view = out.reshape(flat.size, self.shape[1]).data.cast("B")
        # runs of consecutive rows (slices, sorted dense sets) are one read each
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        starts = np.r_[0, breaks]
        size = self.row_bytes
        # byte ranges in ``out`` and offsets in the file, as Python ints for the loop below:
        # re-ranking reads ~1,000 single rows a query, so the loop is kept to one preadv a run
        begins, stops = (starts * size).tolist(), (np.r_[breaks, flat.size] * size).tolist()
        offsets = (flat[starts] * size + self.offset).tolist()
        preadv = os.preadv
        for begin, stop, offset in zip(begins, stops, offsets, strict=True):
            into = view[begin:stop]
            if preadv(fd, [into], offset) != stop - begin:  # a short read: read the rest
                self._read(fd, into, offset)
        return out

    def _read(self, fd: int, into: memoryview, offset: int) -> None:
        """Fill ``into`` from the file at ``offset`` (a read returns at most ~2 GiB)."""
        while len(into):
            got = os.preadv(fd, [into], offset)
            if got <= 0:
                raise ValueError(f"{self.path}: ended before its header's {self.shape} rows")
            into, offset = into[got:], offset + got

    def close(self) -> None:
        """Close the file (reads then fail)."""
        fd = getattr(self, "_fd", None)  # None too when __init__ raised before opening
        if fd is not None:
            self._fd = None
            os.close(fd)

    def __del__(self) -> None:
        self.close()


#: torch's ``at::internal::GRAIN_SIZE``: element-wise operations on fewer elements never go
#: parallel.
_TORCH_GRAIN = 32768


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Stored float16 rows as float32 (other dtypes: ``np.asarray``).

    numpy converts float16 one element at a time (0.75 ms for 1,000 rows of 384 on this
    machine, 20x the inner products that follow); torch's vectorised conversion takes 0.03 ms
    in one call, 0.06 ms in the chunks below.
    torch is used when the process has already imported it (the API and the builders have),
    never imported for this. Both are exact for every finite value and infinity (torch quiets
    a signalling NaN; stored vectors are finite).
    """
    torch = sys.modules.get("torch")
    if rows.dtype != np.float16 or torch is None or not rows.flags.writeable:
        return np.asarray(rows, np.float32)
    rows = np.ascontiguousarray(rows)
    out = np.empty(rows.shape, np.float32)
    flat_in, flat_out = rows.reshape(-1), out.reshape(-1)
    # Chunks under torch's grain size run inline in the calling thread: a larger copy would
    # run in parallel, and torch gives every request thread that does so an OpenMP team of
    # its own, which slows the model thread's every operation (figsearch.api.batching).
    for start in range(0, flat_in.size, _TORCH_GRAIN):
        chunk = slice(start, start + _TORCH_GRAIN)
        torch.from_numpy(flat_out[chunk]).copy_(torch.from_numpy(flat_in[chunk]))
    return out


def _nlist(index: faiss.Index) -> int | None:
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else None


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (score, row) pairs in descending score; -1 rows sort last."""
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    kk = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, have = rows.shape
    if have >= k:
        return scores[:, :k], rows[:, :k]
    s = np.full((n, k), -np.inf, np.float32)
    r = np.full((n, k), -1, np.int64)
    s[:, :have], r[:, :have] = scores, rows
    return s, r


class ExactRows:
    """Stored rows scored exactly by FAISS, without a float32 copy: float16 rows are the codes
    of a ``QT_fp16`` scalar quantizer (decoded with SIMD as it scores), float32 rows those of an
    ``IndexFlatIP``. An exact subset's 15,000 rows of 512 dims score in 0.7-0.9 ms; numpy's
    float16 conversion and product took 15-20 ms (and more for the first touch of its 30 MB
    temporary), every query."""

    def __init__(self, rows: np.ndarray) -> None:
        n, dim = rows.shape
        if rows.dtype == np.float16:
            index: Any = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                    faiss.METRIC_INNER_PRODUCT)
        else:
            index, rows = faiss.IndexFlatIP(dim), np.asarray(rows, np.float32)
        raw = np.ascontiguousarray(rows).view(np.uint8).reshape(-1)
        index.codes.resize(raw.size)
        if raw.size:
            faiss.rev_swig_ptr(index.codes.data(), raw.size)[:] = raw  # one memcpy
        index.ntotal = n
        self.index = index
        self.nbytes = int(raw.size)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row positions) of the best ``k`` rows per query, best first (-1: none)."""
        scores, found = self.index.search(np.ascontiguousarray(q, np.float32), k)
        return np.where(found >= 0, scores, -np.inf).astype(np.float32), found.astype(np.int64)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """(queries, rows) inner products of every query with every row."""
        n, q = len(self), np.atleast_2d(q)
        out = np.full((len(q), n), -np.inf, np.float32)
        if not n:
            return out
        scores, found = self.search(q, n)
        hit = found >= 0
        out[np.nonzero(hit)[0], found[hit]] = scores[hit]
        return out


@dataclass
class _Subset:
    """An allowed set seen from one index: its plan and what the plan reads - the allowed
    rows (exact), a FAISS selector over the packed row mask (bitmap), a test of candidate
    rows (postfilter). Made from an :class:`AllowedSet` (:meth:`of_allowed`), only the bitmap
    plan builds the row mask (a compress of every row, 20-35 ms at 15 M): an exact plan finds
    its few rows by their rank in the index's map of the columns (or, without one, by binary
    search of their ids), a post-filter tests candidates by figure id."""

    size: int  # index rows
    count: int  # allowed rows
    plan: str  # "exact" | "bitmap" | "postfilter"
    selector: Any = None
    source: Any = None  # the AllowedSet this came from (keeps its id() from being reused)
    index_ids: np.ndarray | None = None  # the index's figure ids (tests rows by id; no mask)
    packed: np.ndarray | None = None  # little-endian packed bool per index row, once made
    rows: np.ndarray | None = None  # the allowed row numbers, once made
    vectors: ExactRows | None = None  # "exact" plans: the allowed rows' vectors, once read

    @classmethod
    def plan_for(cls, bits: np.ndarray, size: int, count: int, source: Any = None) -> _Subset:
        """The plan of a packed row mask ``bits`` with ``count`` allowed rows."""
        if count <= EXACT_SUBSET_MAX:
            sub = cls(size, count, "exact", source=source, packed=bits)
            sub.allowed_rows()
            return sub
        if count >= POSTFILTER_MIN * size:
            return cls(size, count, "postfilter", source=source, packed=bits)
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # type: ignore[attr-defined]
        return cls(size, count, "bitmap", selector, source, packed=bits)

    @classmethod
    def of_allowed(cls, allowed: AllowedSet, index_ids: np.ndarray) -> _Subset:
        """The plan of an allowed set over an index whose figure ids are ``index_ids``,
        counted from packed bits; the row mask is built only for a bitmap plan (or an exact
        one whose set is much larger than the rows it has in this index). An exact plan's
        rows come from the set's column rows (:meth:`AllowedSet.rows_in`): its ids would be
        read from the memory-mapped id column, whose first read costs ~40 ms at 15 M."""
        size = len(index_ids)
        count = allowed.count_in(index_ids)
        if count <= EXACT_SUBSET_MAX and allowed.count <= EXACT_FROM_IDS_MAX:
            rows = allowed.rows_in(index_ids)
            if rows is None:
                positions, found = find_sorted(index_ids, allowed.ids)
                rows = positions[found]
            return cls(size, count, "exact", source=allowed, index_ids=index_ids, rows=rows)
        if count > EXACT_SUBSET_MAX and count >= POSTFILTER_MIN * size:
            return cls(size, count, "postfilter", source=allowed, index_ids=index_ids)
        bits, count = allowed.row_bits(index_ids)
        return cls.plan_for(bits, size, count, allowed)

    @property
    def bits(self) -> np.ndarray:
        """The packed row mask (what IDSelectorBitmap reads), made on first use."""
        if self.packed is None:
            assert self.source is not None and self.index_ids is not None
            self.packed = self.source.row_bits(self.index_ids)[0]
        return self.packed

    def allowed_rows(self) -> np.ndarray:
        """Row numbers of the allowed set (computed on first use)."""
        if self.rows is None:
            mask = np.unpackbits(self.bits, count=self.size, bitorder="little").view(bool)
            self.rows = np.flatnonzero(mask).astype(np.int64)
        return self.rows

    def test(self, rows: np.ndarray) -> np.ndarray:
        """bool per row number: allowed (-1 and other out-of-range rows: False)."""
        if self.packed is not None or self.index_ids is None:
            return bit_test(self.bits, rows)
        valid = (rows >= 0) & (rows < self.size)
        out = np.zeros(rows.shape, bool)
        out[valid] = self.source.contains(self.index_ids[rows[valid]])
        return out


class SearchIndex:
    """One loaded index version: FAISS index + id map + float16 vectors read on demand."""

    def __init__(
        self, version_dir: Path, manifest: dict[str, Any], index: faiss.Index,
        ids: np.ndarray, vectors: RowFile | np.ndarray, nprobe: int,
    ) -> None:
        self.version_dir = version_dir
        self.version: str = str(manifest.get("version", version_dir.name))
        self.manifest = manifest
        self.index = index
        self.ids = ids
        self.vectors = vectors
        self.nprobe = nprobe
        self.factory: str = str(manifest.get("factory", ""))
        self.compressed = is_compressed(self.factory)
        # Filters repeat (the same license/year subset query after query): keep the rows and
        # the FAISS selector of the last few allowed-id sets instead of rebuilding them.
        self._subsets: OrderedDict[Any, _Subset] = OrderedDict()
        self._subsets_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def load(cls, version_dir: str | Path, nprobe: int = 32, full_hash: bool = False,
             mmap_index: bool = False) -> SearchIndex:
        """Open a version directory, checking file sizes (and hashes if ``full_hash``)."""
        version_dir = Path(version_dir).resolve()
        manifest = read_manifest(version_dir)
        verify_files(version_dir, manifest.get("checksums", {}), full_hash)
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap_index else 0
        try:
            index = faiss.read_index(str(version_dir / INDEX_FILE), flags)
            ids = np.load(version_dir / IDS_FILE)
            vectors = RowFile(version_dir / VECTORS_FILE)
        except (OSError, RuntimeError, ValueError) as exc:
            raise IndexLoadError(f"index version {version_dir.name}: cannot read ({exc})") from exc
        if mmap_index:
            advise_random(version_dir / INDEX_FILE)  # probed lists: scattered too
            no_list_prefetch(index)
        if not (index.ntotal == len(ids) == len(vectors) == int(manifest["count"])):
            raise IndexLoadError(
                f"index version {version_dir.name}: inconsistent counts (index {index.ntotal}, "
                f"ids {len(ids)}, vectors {len(vectors)}, manifest {manifest['count']})"
            )
        if index.ntotal and vectors.shape[1] != index.d:
            raise IndexLoadError(f"index version {version_dir.name}: vector dim mismatch")
        out = cls(version_dir, manifest, index, compact_ids(ids), vectors, nprobe)
        out.set_nprobe(nprobe)
        return out

    def set_nprobe(self, nprobe: int) -> None:
        """Lists probed per query (IVF indexes; no-op for others)."""
        self.nprobe = nprobe
        try:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
        except RuntimeError:
            pass  # not an IVF index
        hnsw = faiss.downcast_index(self.index)
        if isinstance(hnsw, faiss.IndexHNSW):
            hnsw.hnsw.efSearch = max(hnsw.hnsw.efSearch, HNSW_EF_SEARCH)
        ivf = faiss.try_extract_index_ivf(self.index)
        quantizer = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
        if isinstance(quantizer, faiss.IndexHNSW):
            # An HNSW coarse quantizer must look at more candidates than the lists it returns,
            # else the nprobe "nearest" lists are not the nearest (faiss's default is 16).
            quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, HNSW_EF_SEARCH, 2 * nprobe)

    def check_model(self, model_key: str, dim: int) -> None:
        """Refuse to query with a model other than the one the index was built with."""
        built_key = self.manifest.get("model_key")
        if dim != self.dim or model_key != built_key:
            raise IndexModelMismatch(
                f"index version {self.version} was built with model {built_key!r} "
                f"(spec {self.manifest.get('model_spec')!r}, dim {self.dim}); the loaded model is "
                f"{model_key!r} (dim {dim}). Load that model or rebuild the index with "
                f"`figsearch index --model <spec>`."
            )

    # -- id <-> row ---------------------------------------------------------------------------
    def rows_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found mask) of figure ids in this index."""
        return find_sorted(self.ids, ids)

    def vectors_for(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """float32 vectors of the given figure ids (KeyError naming ids not in the index)."""
        rows, found = self.rows_for(np.asarray(ids, np.int64))
        if not found.all():
            missing = np.asarray(ids, np.int64).ravel()[~found][:10].tolist()
            raise KeyError(f"figure ids not in index {self.version}: {missing}")
        return as_float32(self.vectors[rows])

    def exact_scores(self, qvec: np.ndarray, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(the ids found in the index, in the given order; their exact inner products with
        the query from the stored vectors, scored by FAISS as :meth:`_rerank` scores)."""
        arr = np.asarray(ids, np.int64).ravel()
        rows, found = self.rows_for(arr)
        if not found.any():
            return arr[:0], np.zeros(0, np.float32)
        return arr[found], ExactRows(self.vectors[rows[found]]).scores(qvec.reshape(1, -1))[0]

    def scores_for(self, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Exact inner products of the query with the stored vectors of ``ids`` (ids not in
        the index: none)."""
        present, scores = self.exact_scores(qvec, ids)
        return {int(i): float(s) for i, s in zip(present, scores, strict=True)}

    def contains(self, figure_id: int) -> bool:
        """Whether a figure id is in this index."""
        return bool(self.rows_for(np.array([figure_id]))[1][0])

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | AllowedSet | None = None,
        rerank: bool = True, rerank_factor: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, figure ids) per query, padded with score -inf / id -1.

        ``allowed_ids`` (an id array or a :class:`~figsearch.columns.AllowedSet`) restricts
        results to those figures, planned by how many of this index's rows pass: at most
        ``EXACT_SUBSET_MAX`` are scored exactly from the stored vectors; at least
        ``POSTFILTER_MIN`` of the rows are post-filtered (deeper unfiltered search, allowed hits
        kept); in between a FAISS ``IDSelectorBitmap`` (n/8 bytes) with ever wider probes.
        Every plan falls back to exact search so k results come back whenever k exist.
        Compressed indexes fetch ``rerank_factor·k`` candidates re-scored with exact vectors.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != index dim {self.dim}")
        if k <= 0 or self.ntotal == 0:
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), max(k, 0))
        fetch = k * max(rerank_factor, 1) if (rerank and self.compressed) else k
        with timing.stage("search"):
            if allowed_ids is None:
                scores, rows = self._search_rows(q, fetch, None)
            else:
                sub = self._subset(allowed_ids)
                if sub.plan == "exact":
                    scores, rows = self._exact_subset(q, k, sub.allowed_rows(),
                                                      self._subset_vectors(sub))
                    fetch = k  # already exact
                elif sub.plan == "postfilter":
                    scores, rows = self._postfilter(q, fetch, sub)
                else:
                    scores, rows = self._filtered(q, fetch, sub)
        if fetch > k:
            with timing.stage("rerank"):
                scores, rows = self._rerank(q, rows, k)
        scores, rows = _pad(*_top_k(scores, rows, k), k)
        ids = np.where(rows >= 0, self.ids[rows.clip(0)], -1)
        return scores.astype(np.float32), ids.astype(np.int64)

    def plan(self, allowed_ids: np.ndarray | AllowedSet) -> str:
        """How a search restricted to ``allowed_ids`` runs: exact | bitmap | postfilter."""
        return self._subset(allowed_ids).plan

    def has_plan(self, allowed: AllowedSet) -> bool:
        """Whether the plan of this allowed set is made and cached (nothing is computed)."""
        with self._subsets_lock:
            hit = self._subsets.get(("set", id(allowed)))
        return hit is not None and hit.source is allowed

    def prepare(self, allowed_ids: np.ndarray | AllowedSet) -> str:
        """Make what a search restricted to ``allowed_ids`` reads before it runs: the plan
        (:meth:`plan`) and, for an exact plan whose vectors the index keeps, the allowed rows'
        stored vectors. The service calls it while the query is encoded and the keyword index
        searched: a filter's first use at 15 M reads 15,000 scattered rows per index (~35 ms,
        ``preadv`` per row), which then overlaps that work instead of following it."""
        sub = self._subset(allowed_ids)
        if sub.plan == "exact" and sub.vectors is None and \
                sub.count * self._kept_row_bytes() <= EXACT_VECTORS_BYTES:
            self._subset_vectors(sub)
        return sub.plan

    def _kept_row_bytes(self) -> int:
        """Bytes an exact subset keeps per row (:class:`ExactRows`: float16 as stored, any
        other type as float32)."""
        dim = int(self.vectors.shape[1]) if len(self.vectors.shape) > 1 else self.dim
        return dim * (2 if self.vectors.dtype == np.float16 else 4)

    def _search_rows(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        scores, rows = self.index.search(q, k, params=params) if params else self.index.search(q, k)
        return scores, rows.astype(np.int64)

    def _subset(self, allowed: np.ndarray | AllowedSet) -> _Subset:
        """The row mask and plan (with its FAISS selector) of an allowed set, cached: filters
        repeat query after query."""
        if isinstance(allowed, AllowedSet):
            key: Any = ("set", id(allowed))
        else:
            allowed = np.asarray(allowed, np.int64).ravel()
            key = hashlib.blake2b(allowed.tobytes(), digest_size=16).digest()
        with self._subsets_lock:
            hit = self._subsets.get(key)
            if hit is not None and (not isinstance(allowed, AllowedSet) or hit.source is allowed):
                self._subsets.move_to_end(key)
                return hit
        if isinstance(allowed, AllowedSet):
            entry = _Subset.of_allowed(allowed, self.ids)
        else:
            rows, found = self.rows_for(sorted_unique(allowed))
            mask = np.zeros(self.ntotal, bool)
            mask[rows[found]] = True
            entry = _Subset.plan_for(np.packbits(mask, bitorder="little"), self.ntotal,
                                     int(found.sum()))
        with self._subsets_lock:
            self._subsets[key] = entry
            while len(self._subsets) > SUBSET_CACHE_SIZE:
                self._subsets.popitem(last=False)
        return entry

    def _subset_vectors(self, sub: _Subset) -> ExactRows:
        """The stored vectors of an exact subset's rows, read once and kept with the subset
        while the index's kept vectors stay within :data:`EXACT_VECTORS_BYTES` (older
        subsets' vectors are let go first; a let-go subset reads them again when used)."""
        vectors = sub.vectors
        if vectors is not None:
            return vectors
        vectors = ExactRows(self.vectors[sub.allowed_rows()])
        with self._subsets_lock:
            sub.vectors = vectors
            kept = [s for s in self._subsets.values() if s.vectors is not None]
            total = sum(s.vectors.nbytes for s in kept if s.vectors is not None)
            for old in kept:  # least recently used first
                if total <= EXACT_VECTORS_BYTES:
                    break
                if old is not sub and old.vectors is not None:
                    total -= old.vectors.nbytes
                    old.vectors = None
            if total > EXACT_VECTORS_BYTES:
                sub.vectors = None  # larger than the budget alone: read per query
        return vectors

    def _exact_subset(self, q: np.ndarray, k: int, rows: np.ndarray,
                      vectors: ExactRows | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``q`` over ``rows`` by exact scores, best first (``vectors``: those rows,
        when already read)."""
        if len(rows) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scorer = vectors if vectors is not None else ExactRows(self.vectors[rows])
        scores, found = scorer.search(q, min(k, len(rows)))
        return scores, np.where(found >= 0, rows[found.clip(0)], -1)

    def _exact_short(self, q: np.ndarray, fetch: int, scores: np.ndarray, got: np.ndarray,
                     sub: _Subset) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the allowed rows for every query still short of allowed hits."""
        want = min(fetch, sub.count)
        short = np.nonzero((got >= 0).sum(1) < want)[0]
        if len(short):
            scores, got = _pad(scores, got, fetch)
            scores[short], got[short] = _pad(
                *self._exact_subset(q[short], fetch, sub.allowed_rows()), fetch)
        return scores, got

    def _filtered(self, q: np.ndarray, fetch: int, sub: _Subset) -> tuple[np.ndarray, np.ndarray]:
        """Selector search; IVF probes more lists until each query has enough allowed hits,
        over-fetch where selectors are unsupported, exact search for any query still short."""
        want = min(fetch, sub.count)
        nlist = _nlist(self.index)
        nprobe = self.nprobe
        result = None
        while (params := _search_params(self.index, sub.selector, nprobe)) is not None:
            try:
                result = self._search_rows(q, fetch, params)
            except RuntimeError:
                break  # this index type refuses selectors
            if nlist is None or nprobe >= nlist or ((result[1] >= 0).sum(1) >= want).all():
                break
            nprobe = min(nlist, nprobe * 4)
        if result is None:
            result = self._postfilter(q, fetch, sub)
        return self._exact_short(q, fetch, *result, sub)

    def _postfilter(self, q: np.ndarray, fetch: int, sub: _Subset) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered search fetching ``fetch / selectivity`` (x1.5) candidates, allowed ones
        kept; deeper (and, when an IVF's probed lists run out, more lists) until each query
        has ``fetch`` allowed hits; exact search for any query still short."""
        want = min(fetch, sub.count)
        nlist = _nlist(self.index)
        nprobe = self.nprobe
        share = max(sub.count / max(self.ntotal, 1), 1e-9)
        depth = min(self.ntotal, max(fetch, int(fetch / share * 1.5) + 1))
        while True:
            params = _search_params(self.index, None, nprobe) if nlist is not None else None
            scores, got = self._search_rows(q, depth, params)
            ok = sub.test(got)
            short = ok.sum(axis=1) < want
            if not short.any():
                break
            ran_out = bool((got[short] < 0).any())  # the probed lists held fewer than depth
            if ran_out and nlist is not None and nprobe < nlist:
                nprobe = min(nlist, nprobe * 4)
            elif depth < self.ntotal and not ran_out:
                depth = min(self.ntotal, depth * 4)
            else:
                break
        # the best ``fetch`` allowed candidates only: re-ranking reads a stored vector for each
        scores, got = _top_k(np.where(ok, scores, -np.inf), np.where(ok, got, -1), fetch)
        return self._exact_short(q, fetch, scores, got, sub)

    def _rerank(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the candidates from the stored vectors: each distinct row
        read once and scored against every query by FAISS (:class:`ExactRows`: float16 rows
        decoded with SIMD as they are scored), then picked per (query, candidate). Per 1,000
        candidates of 512 dims at 15 M, the numpy float16 conversion took 1.0-1.5 ms and
        pairing copies of the query and candidate rows (``einsum``) 2.3 ms."""
        valid = rows >= 0
        uniq, inverse = np.unique(rows[valid], return_inverse=True)
        scores = np.full(rows.shape, -np.inf, np.float32)
        if len(uniq):
            table = ExactRows(self.vectors[uniq]).scores(q)
            scores[valid] = table[np.nonzero(valid)[0], inverse]
        return _top_k(scores, rows, k)
