"""Build a FAISS index version and switch ``indexes/current`` to it atomically.

A build writes everything into ``indexes/.building-<version>/``, fsyncs, renames that
directory to ``indexes/<version>/`` and only then points ``current`` at it (a fresh symlink
renamed over the old one with ``os.replace``). A build that fails or is killed at any point
leaves ``current`` on the previous version; its leftovers are removed by the next build.
``indexes/.lock`` (a ``filelock.FileLock``) keeps two builds from running at once; the holder
writes who it is to ``indexes/.lock.holder`` for the message the other build prints.

The factory string comes from :func:`figsearch.index.choose_factory` unless given; the rule is
documented in docs/indexing.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from figsearch.datadir import BUILDING_PREFIX, fsync_path, list_versions
from figsearch.index import (
    CURRENT_LINK,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    choose_factory,
    current_version_dir,
    file_sha256,
)

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"
ADD_BATCH = 65_536
_held_locks: set[Path] = set()

#: Test/debug hook: called with a stage name ("trained", "written", "renamed", "switched").
StageHook = Callable[[str], None]
#: A build step writing more files into a version directory; what it returns joins the manifest.
AddFiles = Callable[[Path], dict[str, Any]]


class BuildLockedError(RuntimeError):
    """Another build holds ``indexes/.lock``."""


@contextlib.contextmanager
def index_lock(indexes_dir: Path) -> Iterator[None]:
    """Hold the exclusive build lock on ``indexes_dir`` (re-entrant within one process)."""
    indexes_dir.mkdir(parents=True, exist_ok=True)
    path = (indexes_dir / LOCK_FILE).resolve()
    if path in _held_locks:
        yield
        return
    lock = FileLock(path, blocking=False, thread_local=False)
    holder = path.with_name(HOLDER_FILE)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = holder.read_text().strip()
        except OSError:
            who = ""
        raise BuildLockedError(
            f"another index build is running on {indexes_dir} ({who or 'another process'}); "
            f"wait for it to finish (lock: {path})"
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat()}")
        _held_locks.add(path)
        yield
    finally:
        _held_locks.discard(path)
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


def new_version_name() -> str:
    """Sortable, unique version name: UTC timestamp (microseconds) + random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


# -- training and adding ----------------------------------------------------------------------
def normalise(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def training_size(n: int, factory: str) -> int:
    """Training sample: ~50 points per IVF list (never under faiss's 39, so the 2 M cap rises
    with the list count: 2.56 M at 65,536 lists) and >= 20k for PQ codebooks, capped at n."""
    from indexer.gpu import MIN_POINTS_PER_LIST

    match = re.search(r"IVF(\d+)", factory)
    lists = int(match.group(1)) if match else 0
    want = max(50 * lists, 20_000 if "PQ" in factory else 0)
    return min(n, want, max(2_000_000, MIN_POINTS_PER_LIST * lists))


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from ``factory``, without the polysemous training faiss's
    factory turns on for every IVF-PQ codec.

    Polysemous training permutes each sub-quantizer's centroids so that Hamming distances
    between codes follow their distances; only a search with ``polysemous_ht`` set uses that,
    and ours never does. It costs about a second per sub-quantizer whatever the size of the
    index (IVF32,PQ16 over 2,000 vectors: 15.5 s with it, 0.6 s without, on this 2-core
    machine), and leaves the set of centroids, hence every distance, as it is."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    codec = faiss.downcast_index(ivf) if ivf is not None else faiss.downcast_index(index)
    if hasattr(codec, "do_polysemous_training"):
        codec.do_polysemous_training = False
    return index


def train_index(factory: str, vectors: np.ndarray, device: str | None = None, seed: int = 0,
                size: int | None = None) -> faiss.Index:
    """An index from ``factory`` (inner product), trained on a random sample of ``size``
    (default :func:`training_size`): with the coarse k-means in torch on ``device`` (a GPU, or
    ``"cpu"``), or by faiss on the CPU when ``device`` is None."""
    from indexer.gpu import train_index_faiss, train_index_on_device

    n, dim = vectors.shape
    index = new_index(factory, dim)
    if index.is_trained:
        return index
    size = min(n, size or training_size(n, factory))
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    sample = normalise(vectors[sample_rows])
    if device is None:
        train_index_faiss(index, sample)
    else:
        train_index_on_device(index, sample, device)
    return index


def add_in_batches(index: faiss.Index, vectors: np.ndarray, batch: int = ADD_BATCH,
                   progress: bool = True) -> None:
    """Add rows 0..n-1 of ``vectors`` (normalised on the fly) to ``index``."""
    n = len(vectors)
    with tqdm(total=n, desc="index add", unit="vec", disable=not progress) as bar:
        for start in range(0, n, batch):
            chunk = normalise(vectors[start : start + batch])
            index.add(chunk)
            bar.update(len(chunk))


# -- writing a version ------------------------------------------------------------------------
def combine_add_files(*callbacks: AddFiles | None) -> AddFiles | None:
    """One ``add_files`` step running ``callbacks`` in order (None ones skipped; None when none
    is left), their manifest entries merged; two steps writing the same manifest key is an
    error, not a silent overwrite."""
    steps = [c for c in callbacks if c is not None]
    if not steps:
        return None

    def add_files(version_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in steps:
            entries = step(version_dir)
            clash = set(entries) & set(out)
            if clash:
                raise ValueError(f"two add_files steps write manifest key(s) {sorted(clash)}")
            out.update(entries)
        return out

    return add_files


_fsync_path = fsync_path  # the name the indexer's modules use


def _checksums(version_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {
        name: {"size": (version_dir / name).stat().st_size, "sha256": file_sha256(version_dir / name)}
        for name in names
    }


def _validate_inputs(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(ids) > 1 and (np.diff(ids) == 0).any():
        dup = ids[1:][np.diff(ids) == 0][:5].tolist()
        raise ValueError(f"duplicate figure ids in build input: {dup}")
    vectors = normalise(vectors[order]).astype(np.float16)
    if not np.isfinite(vectors).all():
        raise ValueError("build input contains non-finite vectors")
    return vectors, ids


def _row_files_in_id_order(row_files: dict[str, np.ndarray], ids: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """Per-row arrays put in the sorted-id order the version's rows use."""
    order = np.argsort(np.asarray(ids, np.int64), kind="stable")
    out = {}
    for name, arr in row_files.items():
        if len(arr) != len(ids) or not re.fullmatch(r"[A-Za-z0-9_]+\.npy", name):
            raise ValueError(f"row file {name!r}: {len(arr)} rows for {len(ids)} ids")
        out[name] = np.asarray(arr)[order]
    return out


def write_version_files(tmp_dir: Path, vectors: np.ndarray, ids: np.ndarray, factory: str,
                        device: str | None, hook: StageHook | None,
                        train_size: int | None = None) -> dict[str, float]:
    """Train + fill the index and write index/ids/vectors into ``tmp_dir``; returns the seconds
    of each stage (``train``, ``add``, ``write``) and their ``total``."""
    t0 = time.perf_counter()
    index = train_index(factory, vectors, device=device, size=train_size)
    if hook:
        hook("trained")
    t1 = time.perf_counter()
    add_in_batches(index, vectors)
    t2 = time.perf_counter()
    # Through a Python file, not a path: faiss's own file writer only prints a failed close
    # (the last buffered block on a full disk) and carries on, leaving a truncated index that
    # the checksums would then bless. Python raises on every failed write and on close.
    with open(tmp_dir / INDEX_FILE, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    np.save(tmp_dir / IDS_FILE, ids)
    np.save(tmp_dir / VECTORS_FILE, vectors)
    t3 = time.perf_counter()
    return {"train": round(t1 - t0, 3), "add": round(t2 - t1, 3), "write": round(t3 - t2, 3),
            "total": round(t3 - t0, 3)}


def training_device(use_gpu: bool | str | None) -> str | None:
    """Torch device for the coarse k-means (None: faiss on the CPU) from None/True/False, an
    auto|on|off mode, or a torch device name ("cuda:1"; "cpu" runs the torch k-means on CPU)."""
    from indexer.gpu import GPU_TRAINING_MODES, check_faiss_install, resolve_training_device

    check_faiss_install()  # two faiss wheels sharing one module: say so before any work
    if isinstance(use_gpu, str) and use_gpu.lower() not in GPU_TRAINING_MODES:
        import torch

        return str(torch.device(use_gpu))  # a bad name raises a clear RuntimeError
    mode = {None: "auto", True: "on", False: "off"}.get(use_gpu, use_gpu)  # type: ignore[arg-type]
    return resolve_training_device(str(mode))


def build_version(
    indexes_dir: Path, vectors: np.ndarray, ids: np.ndarray, *, model_spec: str, model_key: str,
    factory: str | None = None, memory_gb: float = 16.0, keep: int = 3,
    use_gpu: bool | str | None = None, extra: dict[str, Any] | None = None,
    hook: StageHook | None = None, activate: bool = True, train_size: int | None = None,
    row_files: dict[str, np.ndarray] | None = None,
    add_files: AddFiles | None = None,
) -> Path:
    """Build a new index version from (vectors, figure ids), switch ``current``, prune old ones.

    ``use_gpu`` picks where the coarse k-means runs (:func:`indexer.gpu.resolve_training_device`):
    None or ``"auto"`` = on CUDA when there is one, True or ``"on"`` = on CUDA or an error,
    False or ``"off"`` = faiss on the CPU; a torch device name (``"cuda:1"``, ``"cpu"``) runs the
    torch k-means there.

    Returns the new version directory. On any exception ``current`` is untouched. With
    ``activate=False`` the version is written but ``current`` is left for the caller to switch
    (after validating) with :func:`activate_version`. ``row_files`` are per-row arrays aligned
    with ``ids`` (e.g. :mod:`figsearch.version_data`'s image hashes and figure types), saved as
    ``<name>`` in id order and checksummed with the rest. ``add_files`` writes more files into the
    version (e.g. the caption index) before its manifest; what it returns joins the manifest.
    """
    indexes_dir = Path(indexes_dir)
    rows = _row_files_in_id_order(row_files or {}, np.asarray(ids))
    vectors, ids = _validate_inputs(np.asarray(vectors), np.asarray(ids))
    n, dim = vectors.shape
    factory = factory or choose_factory(n, dim, memory_gb)
    device = training_device(use_gpu)
    with index_lock(indexes_dir):
        remove_stale_builds(indexes_dir)
        version = new_version_name()
        tmp_dir = indexes_dir / f"{BUILDING_PREFIX}{version}"
        tmp_dir.mkdir(parents=True)
        stages = write_version_files(tmp_dir, vectors, ids, factory, device, hook, train_size)
        for name, arr in rows.items():
            np.save(tmp_dir / name, arr)
        manifest = {
            "version": version, "model_spec": model_spec, "model_key": model_key, "dim": dim,
            "count": n, "factory": factory, "metric": "inner_product",
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": stages["total"], "build_stages_s": stages,
            "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "gpu": bool(device and device.startswith("cuda")),
            "training": f"torch k-means on {device}" if device and "IVF" in factory
                        else "faiss cpu",
            "training_size": min(n, train_size or training_size(n, factory)),
            "checksums": _checksums(tmp_dir, [INDEX_FILE, IDS_FILE, VECTORS_FILE, *rows]),
            **(extra or {}),
            **(add_files(tmp_dir) if add_files else {}),
        }
        (tmp_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE, *rows, MANIFEST_FILE):
            _fsync_path(tmp_dir / name)
        final = publish_version(indexes_dir, tmp_dir, version, keep=keep, activate=activate,
                                hook=hook)
    log.info("index version %s: %d vectors, %s, %.1fs (train %.1f, add %.1f, write %.1f)",
             version, n, factory, stages["total"], stages["train"], stages["add"], stages["write"])
    return final


def build_text_version(
    indexes_dir: Path, add_files: AddFiles, *, keep: int = 3,
    activate: bool = True, extra: dict[str, Any] | None = None,
) -> Path:
    """A version without an image index (``"kind": "text"``): keyword and caption search only,
    e.g. while the demo's image model is still training. Same locking, rename and switch as
    :func:`build_version`."""
    indexes_dir = Path(indexes_dir)
    indexes_dir.mkdir(parents=True, exist_ok=True)
    with index_lock(indexes_dir):
        remove_stale_builds(indexes_dir)
        version = new_version_name()
        tmp_dir = indexes_dir / f"{BUILDING_PREFIX}{version}"
        tmp_dir.mkdir(parents=True)
        manifest = {
            "version": version, "kind": "text", "model_spec": None, "model_key": None,
            "dim": None, "count": 0, "factory": None,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}), **add_files(tmp_dir),
        }
        (tmp_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        _fsync_path(tmp_dir / MANIFEST_FILE)
        return publish_version(indexes_dir, tmp_dir, version, keep=keep, activate=activate)


def publish_version(indexes_dir: Path, tmp_dir: Path, version: str, *, keep: int,
                    activate: bool, hook: StageHook | None = None) -> Path:
    """Rename a fully written (and fsynced) ``.building-`` directory into place, durably, and
    make it current unless ``activate`` is False (call with the lock held). The hook sees
    ``written``, ``renamed`` and :func:`activate_version`'s ``switched``."""
    if hook:
        hook("written")
    final = indexes_dir / version
    os.rename(tmp_dir, final)
    _fsync_path(indexes_dir)
    if hook:
        hook("renamed")
    if activate:
        activate_version(indexes_dir, final, keep, hook)
    return final


def activate_version(indexes_dir: Path, version_dir: Path, keep: int,
                     hook: StageHook | None = None) -> None:
    """Make ``version_dir`` current, then prune old versions beyond ``keep``."""
    with index_lock(indexes_dir):
        switch_current(indexes_dir, version_dir)
        if hook:
            hook("switched")
        prune_versions(indexes_dir, keep)


def switch_current(indexes_dir: Path, version_dir: Path) -> None:
    """Point ``indexes/current`` at ``version_dir`` atomically (symlink + rename)."""
    tmp_link = indexes_dir / f".current-{secrets.token_hex(4)}"
    os.symlink(version_dir.name, tmp_link)
    os.replace(tmp_link, indexes_dir / CURRENT_LINK)
    _fsync_path(indexes_dir)


def remove_stale_builds(indexes_dir: Path) -> None:
    """Delete leftovers of killed builds (call with the lock held)."""
    for p in indexes_dir.iterdir():
        if p.name.startswith(BUILDING_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".current-") and p.is_symlink():
            p.unlink(missing_ok=True)


def prune_versions(indexes_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest versions besides ``current``; returns those deleted."""
    current = current_version_dir(indexes_dir)
    others = [p for p in list_versions(indexes_dir) if current is None or p.resolve() != current]
    doomed = others[: max(len(others) - max(keep, 0), 0)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
