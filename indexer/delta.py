"""Apply a nightly delta to an index version without re-training (issue #23).

A full build trains a new FAISS index and fills it from every vector: hours at 15 M figures.
When the current version was built with the same model, the same factory family and the
change is small (:data:`MAX_DELTA_FRACTION` of its rows, counted since the last full
training), :func:`indexer.indexing.build_from_worklist` builds the next version from the
previous one instead:

1. *Work out the delta* against the previous version: figures no longer indexable (removed,
   retracted, image now unreadable) and figures whose image hash changed are dropped; new and
   changed figures are added with their new vectors (encoded, or copied from the previous
   version when an identical image is already there). Captions likewise, by a hash of the
   embedded text kept per row (``captions/text_sha.npy``).
2. *Apply it* to every :class:`~figsearch.index.SearchIndex` directory of the version (the
   image index, ``captions/``, ``captions/passages/``) with :func:`apply_index_delta`: the
   previous version's trained FAISS index is read, ``remove_ids`` drops the gone rows, the
   remaining labels are renumbered in place in the inverted lists and the new vectors are
   added with ``add_with_ids``: no training. ``ids.npy``, ``vectors.npy`` and the row files
   are rewritten by copying the previous version's rows run by run.

Layout choice: the read side is unchanged. Labels stay *row numbers* and ``ids.npy`` stays
sorted, so :func:`figsearch.sorted_ids.find_sorted` lookups, the row-aligned files
(:mod:`figsearch.version_data`) and readers of older versions all keep working. The price is
that a delete or an insert in the middle shifts the rows after it: the labels of the kept
vectors are renumbered (one gather over the n int64 labels, in place in the index read into
memory) and ``vectors.npy`` is rewritten rather than hardlinked. Both are linear in file size
(a sequential copy), not in training; ``bench/delta.py`` measures them.

Nothing of the previous version is written: its files are only read (the index is read into
memory and written to the new directory), so replicas and the serving process may keep
reading them. The new version is built in ``indexes/.building-<version>/``, renamed into place
and only then (and, from ``figsearch rebuild``, only after validation) made current, exactly as
a full build: a crash at any point leaves ``current`` on the previous version, and a rerun
removes the leftovers and redoes the delta.

Other per-version data (a keyword index, filter columns, ...) plug in through
:func:`register_version_writer`: each writer gets a :class:`VersionContext` (the previous
version directory or None for a full build, the new temporary directory, the store, the removed
and the added-or-changed figure ids) and writes its files into the new directory before the
manifest; what it returns joins the manifest under its name.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from figsearch.datadir import fsync_tree
from figsearch.index import (
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    read_manifest,
    verify_files,
)
from figsearch.sorted_ids import find_sorted, kept, sorted_union

log = logging.getLogger(__name__)

#: A delta larger than this share of the previous version's rows (counted cumulatively since
#: the index was last trained) is built in full: the trained centroids and codebooks drift
#: away from the data as it changes, and a retrain now and then keeps recall where it was.
MAX_DELTA_FRACTION = 0.2
COPY_BYTES = 16 << 20  # bytes per write of a row file (a longer run is written in steps)
#: The per-row text hash of a caption index: first 16 bytes of its caption-cache key.
TEXT_SHA_FILE = "text_sha.npy"


class DeltaNotApplicable(RuntimeError):
    """The previous version cannot take this delta (the caller builds in full instead)."""


# -- the registry of other per-version writers ------------------------------------------------
@dataclass(frozen=True)
class VersionContext:
    """What a per-version writer gets.

    ``previous_dir`` is None for a full build (write everything from the store); otherwise the
    writer may copy or hardlink its previous files (never modify them) and apply the change:
    ``removed_ids`` left the version (gone from the store, retracted, or no longer indexable
    at all), ``upserted_ids`` are new or changed (image or caption text). Changes the two
    indexes do not see (e.g. only an article's licence) are not in ``upserted_ids``: a writer
    whose data depends on more fields diffs them itself (``store`` is open)."""

    previous_dir: Path | None
    version_dir: Path
    store: Any
    removed_ids: np.ndarray
    upserted_ids: np.ndarray


VersionWriter = Callable[[VersionContext], "dict[str, Any] | None"]
_WRITERS: dict[str, VersionWriter] = {}


def register_version_writer(name: str, writer: VersionWriter) -> None:
    """Run ``writer`` in every build (full and delta) before the manifest is written; its
    result, when not None, goes into the manifest as ``name``. Registering a name again
    replaces the writer (modules may be reloaded)."""
    _WRITERS[name] = writer


def unregister_version_writer(name: str) -> None:
    """Forget a writer (tests)."""
    _WRITERS.pop(name, None)


def run_version_writers(ctx: VersionContext) -> dict[str, Any]:
    """Every registered writer, in registration order; their manifest entries."""
    out: dict[str, Any] = {}
    for name, writer in list(_WRITERS.items()):
        result = writer(ctx)
        if result is not None:
            out[name] = result
    return out


# -- one SearchIndex directory ---------------------------------------------------------------
@dataclass
class IndexDelta:
    """The change to one SearchIndex directory: ``remove_ids`` (figure ids, or passage keys)
    of the previous version to drop (removed *and* changed rows), and the rows to add (new and
    changed) with their vectors and row-file values. ``prev_row_maps`` transform a previous
    row file's values before they are copied (e.g. figure-type codes renumbered)."""

    remove_ids: np.ndarray
    add_ids: np.ndarray
    add_vectors: np.ndarray
    add_rows: dict[str, np.ndarray] = field(default_factory=dict)
    prev_row_maps: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Distinct ids touched (a changed row counts once)."""
        return int(len(sorted_union(self.remove_ids, self.add_ids)))


def family(factory: str) -> str:
    """A factory string with its sizes taken out (``IVF4096_HNSW32,SQ8`` -> ``IVF_HNSW,SQ``):
    a delta keeps the previous version's trained index, whose list count was chosen for the
    size it was trained at. How an HNSW coarse quantizer stores its centroids is not part of
    it: a version built before they were float16 (``IVF4096_HNSW32``) still takes deltas, and
    the next full build brings the smaller quantizer."""
    return re.sub(r"\d+", "", re.sub(r"\(HNSW(\d*)_SQfp16\)", r"_HNSW\1", factory))


def row_file_names(manifest: dict[str, Any]) -> list[str]:
    """The per-row files of a version besides its ids and vectors (checksummed ``*.npy``)."""
    return [n for n in manifest.get("checksums", {})
            if n.endswith(".npy") and "/" not in n and n not in (IDS_FILE, VECTORS_FILE)]


def _runs(old_rows: np.ndarray, new_rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(old start, new start, length) of the maximal runs where consecutive kept rows stay
    consecutive in both versions: the copy is a few memcpys per change, not a gather."""
    if len(old_rows) == 0:
        return []
    breaks = np.flatnonzero((np.diff(old_rows) != 1) | (np.diff(new_rows) != 1)) + 1
    starts = np.r_[0, breaks]
    ends = np.r_[breaks, len(old_rows)]
    return [(int(old_rows[s]), int(new_rows[s]), int(e - s)) for s, e in zip(starts, ends,
                                                                              strict=True)]


def _write_rows(path: Path, prev: np.ndarray, runs: list[tuple[int, int, int]],
                add_rows: np.ndarray, add_values: np.ndarray) -> dict[str, Any]:
    """Write the new version's ``.npy`` row file in file order - the previous version's kept
    rows run by run, the delta's rows between them - hashing the bytes as they are written.

    Returns its checksum entry (``size``, ``sha256``), so the build need not read the file
    back: at 15 M figures a version's vectors are 15 GB (37 GB more for caption passages),
    and the read-back took 20 s of a night's 155 (``bench/results/delta_15m_sorted.json``)."""
    n = sum(length for _, _, length in runs) + len(add_rows)
    sha = hashlib.sha256()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(prev.dtype), "fortran_order": False,
        "shape": (n, *prev.shape[1:])})
    row_bytes = max(1, prev.dtype.itemsize * int(np.prod(prev.shape[1:], dtype=np.int64)))
    step = max(1, COPY_BYTES // row_bytes)
    size, done, added = 0, 0, 0  # bytes written, rows written, delta rows written

    def write(block: Any) -> None:
        nonlocal size
        view = np.ascontiguousarray(block).reshape(-1).view(np.uint8).data
        fh.write(view)
        sha.update(view)
        size += view.nbytes

    with open(path, "wb") as fh:
        write(np.frombuffer(header.getvalue(), np.uint8))
        for old, new, length in [*runs, (0, n, 0)]:  # the last: the delta rows after every run
            upto = int(np.searchsorted(add_rows, new))
            if upto > added:  # the delta rows before this run fill the gap up to it exactly
                if add_rows[added] != done or add_rows[upto - 1] != new - 1:
                    raise RuntimeError(f"{path.name}: rows {done}..{new - 1} are not the "
                                       "delta's")
                for off in range(added, upto, step):
                    write(add_values[off : min(upto, off + step)].astype(prev.dtype))
                done, added = new, upto
            if done != new:
                raise RuntimeError(f"{path.name}: row {done} is neither kept nor added")
            for off in range(0, length, step):
                write(prev[old + off : old + min(length, off + step)])
            done += length
        fh.flush()
    if added != len(add_rows) or done != n:
        raise RuntimeError(f"{path.name}: wrote {done} of {n} rows")
    return {"size": size, "sha256": sha.hexdigest()}


def relabel_ivf(index: faiss.Index, old_to_new: np.ndarray) -> int:
    """Renumber the labels of every inverted list of ``index`` through ``old_to_new`` (in
    place; the index must have been read into memory, not memory-mapped). Returns how many."""
    ivf = faiss.extract_index_ivf(index)
    invlists: Any = ivf.invlists  # faiss's stubs lack release_ids
    done = 0
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if not n:
            continue
        ptr = invlists.get_ids(lst)
        labels = faiss.rev_swig_ptr(ptr, n)
        new = old_to_new[labels]
        if (new < 0).any():
            raise RuntimeError(f"inverted list {lst} still holds a removed row")
        labels[:] = new
        invlists.release_ids(lst, ptr)
        done += n
    return done


def _normalised16(vectors: np.ndarray) -> np.ndarray:
    from indexer.build import normalise

    out = normalise(np.asarray(vectors, np.float32)).astype(np.float16)
    if not np.isfinite(out).all():
        raise ValueError("delta input contains non-finite vectors")
    return out


def apply_index_delta(prev_dir: Path, new_dir: Path, delta: IndexDelta) -> dict[str, Any]:
    """Write the SearchIndex files of ``new_dir`` (index, ids, vectors, row files) from those
    of ``prev_dir`` and ``delta``, without re-training. ``prev_dir`` is only read.

    Returns ``{"count", "dim", "factory", "checksums", "stages_s", "removed", "added"}``.
    Raises :class:`DeltaNotApplicable` when the previous index cannot be updated in place
    (an index type without ``remove_ids`` that needs training)."""
    from indexer.build import _checksums, add_in_batches, new_index, normalise

    t0 = time.perf_counter()
    prev_dir, new_dir = Path(prev_dir), Path(new_dir)
    manifest = read_manifest(prev_dir)
    verify_files(prev_dir, manifest.get("checksums", {}), full_hash=False)
    names = row_file_names(manifest)
    if set(names) != set(delta.add_rows):
        raise DeltaNotApplicable(f"{prev_dir}: row files {sorted(names)}, the delta brings "
                                 f"{sorted(delta.add_rows)}")
    prev_ids = np.load(prev_dir / IDS_FILE)
    prev_vec = np.load(prev_dir / VECTORS_FILE, mmap_mode="r")
    dim = int(manifest["dim"])

    add_ids = np.asarray(delta.add_ids, np.int64)
    order = np.argsort(add_ids, kind="stable")
    add_ids = add_ids[order]
    if len(add_ids) > 1 and (np.diff(add_ids) == 0).any():
        raise ValueError("duplicate ids in the delta")
    add_vec = (_normalised16(np.asarray(delta.add_vectors).reshape(-1, dim)[order])
               if len(add_ids) else np.zeros((0, dim), np.float16))
    keep = kept(prev_ids, delta.remove_ids)
    kept_ids = prev_ids[keep]
    if find_sorted(kept_ids, add_ids)[1].any():
        raise ValueError("the delta adds ids the previous version keeps (a changed row must "
                         "be removed too)")
    new_ids = sorted_union(kept_ids, add_ids)  # sorted: rows of the new version
    old_to_new = np.full(len(prev_ids), -1, np.int64)
    old_to_new[keep] = np.searchsorted(new_ids, kept_ids)
    add_new_rows = np.searchsorted(new_ids, add_ids)
    runs = _runs(np.flatnonzero(keep), old_to_new[keep])
    t1 = time.perf_counter()

    # vectors and row files: the kept rows copied run by run, the new ones put in their rows
    streamed = {VECTORS_FILE: _write_rows(new_dir / VECTORS_FILE, prev_vec, runs, add_new_rows,
                                          add_vec)}
    np.save(new_dir / IDS_FILE, new_ids)
    for name in names:
        prev = np.load(prev_dir / name)
        if name in delta.prev_row_maps:
            prev = delta.prev_row_maps[name](prev)
        values = np.asarray(delta.add_rows[name])[order]
        if len(values) != len(add_ids):
            raise ValueError(f"row file {name}: {len(values)} values for {len(add_ids)} ids")
        streamed[name] = _write_rows(new_dir / name, prev, runs, add_new_rows, values)
    t2 = time.perf_counter()

    # the FAISS index: remove, renumber, add; no training
    index = faiss.read_index(str(prev_dir / INDEX_FILE))
    if index.ntotal != len(prev_ids):
        raise DeltaNotApplicable(f"{prev_dir}: index holds {index.ntotal}, ids {len(prev_ids)}")
    if faiss.try_extract_index_ivf(index) is not None:
        gone = np.flatnonzero(~keep).astype(np.int64)
        if len(gone):
            removed = index.remove_ids(faiss.IDSelectorBatch(gone))
            if removed != len(gone):
                raise RuntimeError(f"faiss removed {removed} of {len(gone)} rows")
        relabel_ivf(index, old_to_new)
        if len(add_ids):
            index.add_with_ids(normalise(add_vec), add_new_rows)
    else:
        factory = str(manifest["factory"])
        index = new_index(factory, dim)
        if not index.is_trained:
            raise DeltaNotApplicable(f"{factory} supports no removal and needs training")
        # Flat / HNSW: no training; filled from the new vectors (exactly what a full build adds)
        add_in_batches(index, np.load(new_dir / VECTORS_FILE, mmap_mode="r"), progress=False)
    if index.ntotal != len(new_ids):
        raise RuntimeError(f"delta index holds {index.ntotal} vectors, expected {len(new_ids)}")
    t3 = time.perf_counter()
    with open(new_dir / INDEX_FILE, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    del index
    checksums = {**_checksums(new_dir, [INDEX_FILE, IDS_FILE]), **streamed}
    t4 = time.perf_counter()
    stages = {"plan": round(t1 - t0, 3), "copy": round(t2 - t1, 3), "faiss": round(t3 - t2, 3),
              "write": round(t4 - t3, 3), "total": round(t4 - t0, 3)}
    log.info("delta %s -> %s: -%d +%d rows, %s", prev_dir.name, new_dir.name,
             int((~keep).sum()), len(add_ids), stages)
    return {"count": len(new_ids), "dim": dim, "factory": manifest["factory"],
            "checksums": checksums, "stages_s": stages,
            "removed": int((~keep).sum()), "added": len(add_ids),
            "touched": int(len(sorted_union(prev_ids[~keep], add_ids)))}


def write_sub_manifest(prev_dir: Path, new_dir: Path, result: dict[str, Any], version: str,
                       drop: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """``manifest.json`` of a delta-built SearchIndex directory: the previous one's (model,
    factory, training; less the keys in ``drop``) with the new version, count, checksums, the
    delta's record and ``extra``."""
    from datetime import datetime, timezone

    manifest = read_manifest(prev_dir)
    for key in drop:
        manifest.pop(key, None)
    history = delta_history(manifest, result["touched"])
    manifest.update({
        "version": version, "count": result["count"], "checksums": result["checksums"],
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": result["stages_s"]["total"], "build_stages_s": result["stages_s"],
        "delta": {**history, "previous_version": manifest.get("version", prev_dir.name),
                  "removed": result["removed"], "added": result["added"]},
        **extra,
    })
    (new_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def delta_history(manifest: dict[str, Any], changed: int) -> dict[str, Any]:
    """The training record carried from version to version: which version last trained the
    index, its size then, and the rows changed by deltas since (this one included)."""
    prior = manifest.get("delta") or {}
    return {
        "trained_version": prior.get("trained_version", manifest.get("version")),
        "trained_count": int(prior.get("trained_count", manifest.get("count", 0))),
        "changed_since_training": int(prior.get("changed_since_training", 0)) + int(changed),
    }


def delta_allowed(manifest: dict[str, Any], changed: int, *, model_key: str, dim: int,
                  factory: str) -> str | None:
    """None when a delta of ``changed`` rows may be applied to a version with ``manifest``
    for an index the size rule would build as ``factory``; else why not (logged)."""
    if manifest.get("kind") == "text":
        return "the previous version has no image index"
    if manifest.get("model_key") != model_key or int(manifest.get("dim") or 0) != dim:
        return "the previous version was built with another model"
    if family(str(manifest.get("factory"))) != family(factory):
        return f"factory family changes ({manifest.get('factory')} -> {factory})"
    history = delta_history(manifest, changed)
    base = max(history["trained_count"], 1)
    if history["changed_since_training"] > MAX_DELTA_FRACTION * base:
        return (f"{history['changed_since_training']} rows changed since the index was trained "
                f"on {base} (over {MAX_DELTA_FRACTION:.0%})")
    return None


# -- a whole version ---------------------------------------------------------------------------
def build_delta_version(
    indexes_dir: Path, prev_dir: Path, delta: IndexDelta, *, keep: int = 3,
    extra: Callable[[Path], dict[str, Any]] | None = None,
    add_files: Callable[[Path], dict[str, Any]] | None = None,
    hook: Callable[[str], None] | None = None, activate: bool = True,
) -> Path:
    """A new version = ``prev_dir`` + ``delta`` (image index), written, renamed and (with
    ``activate``) switched exactly as :func:`indexer.build.build_version` does.

    ``extra(tmp_dir)`` runs once the image index of the new version is written (it may read
    it) and ``add_files(tmp_dir)`` after it (the caption index, the registered writers); what
    they return joins the manifest. Hook stages: ``applied`` (image index written), then
    ``written``, ``renamed`` and ``switched`` as in a full build."""
    from indexer.build import (
        BUILDING_PREFIX,
        index_lock,
        new_version_name,
        publish_version,
        remove_stale_builds,
    )

    indexes_dir, prev_dir = Path(indexes_dir), Path(prev_dir).resolve()
    with index_lock(indexes_dir):
        remove_stale_builds(indexes_dir)
        version = new_version_name()
        tmp_dir = indexes_dir / f"{BUILDING_PREFIX}{version}"
        tmp_dir.mkdir(parents=True)
        result = apply_index_delta(prev_dir, tmp_dir, delta)
        if hook:
            hook("applied")
        more = extra(tmp_dir) if extra else {}
        more.update(add_files(tmp_dir) if add_files else {})
        # what the previous build said of itself and this one may not say again
        # (registered writers' entries included: a writer that returns nothing this time
        # must not leave its previous entry behind)
        stale = ("captions", "unreadable", "indexable", "reused", "encoded", "dense_check",
                 *_WRITERS)
        write_sub_manifest(prev_dir, tmp_dir, result, version, drop=stale, **more)
        fsync_tree(tmp_dir)
        final = publish_version(indexes_dir, tmp_dir, version, keep=keep, activate=activate,
                                hook=hook)
    log.info("index version %s from %s by delta: %d vectors (-%d +%d), %.1fs", version,
             prev_dir.name, result["count"], result["removed"], result["added"],
             result["stages_s"]["total"])
    return final
