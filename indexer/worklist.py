"""The frozen work list of one embedding run: what each rank encodes, what is reused.

Written once, by the one process that can read the figure store (``figsearch index --prepare``,
or rank 0 before a barrier), into ``<work_dir>/worklist/``:

- ``ids.npy`` (int64), ``sha256.npy`` ((n, 32) uint8), ``paths.bin`` + ``path_offsets.npy``
  (UTF-8 image paths relative to the images directory, concatenated; item i is
  ``paths.bin[offsets[i]:offsets[i+1]]``, memory-mapped so a rank holds only what it reads):
  the figures to *encode*, in id order;
- ``reuse_ids.npy``, ``reuse_rows.npy``, ``reuse_sha256.npy``: figures whose image (sha256)
  is already in the previous index version built with the same model key; their vectors are
  copied from that version's ``vectors.npy`` at the merge instead of being encoded again;
- ``meta.json``: model key, block size, counts, the previous version and a digest of it all.

Ranks read only this directory and the images: they never open the SQLite store, so nodes
share nothing but a file system (or an object store mounted as one) holding images and work dir.

Work is dealt in *blocks* of ``block`` consecutive items (one encoder batch): block ``j`` goes
to rank ``j % world``. Every batch therefore holds the same images whatever the number of ranks,
which makes the merged vectors identical, bit for bit, to a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.index import MANIFEST_FILE, VECTORS_FILE, read_manifest, verify_files
from figsearch.store import FigureStore
from figsearch.version_data import SHA_FILE, sha_bytes

WORKLIST_DIR = "worklist"
META_FILE = "meta.json"
Row = tuple[int, str | None, str | None]  # (figure id, image path, sha256 hex)


@dataclass
class WorkList:
    """A loaded work list (see the module docstring)."""

    directory: Path
    ids: np.ndarray
    sha: np.ndarray
    path_blob: np.ndarray  # uint8, memory-mapped
    path_offsets: np.ndarray
    reuse_ids: np.ndarray
    reuse_rows: np.ndarray
    reuse_sha: np.ndarray
    meta: dict[str, Any]

    @property
    def digest(self) -> str:
        return str(self.meta["digest"])

    @property
    def block(self) -> int:
        return int(self.meta["block"])

    @property
    def previous_dir(self) -> Path | None:
        prev = self.meta.get("previous_dir")
        return Path(prev) if prev else None

    def blocks_for(self, rank: int, world: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of the blocks dealt to ``rank`` of ``world``."""
        n, block = len(self.ids), self.block
        for j, start in enumerate(range(0, n, block)):
            if j % world == rank:
                yield start, min(start + block, n)

    def path(self, i: int) -> str:
        """Image path of item ``i``."""
        return bytes(self.path_blob[self.path_offsets[i] : self.path_offsets[i + 1]]).decode()

    def rows(self, start: int, stop: int) -> list[Row]:
        """(id, path, None) rows of items [start, stop)."""
        return [(int(self.ids[i]), self.path(i), None) for i in range(start, stop)]

    def line(self) -> str:
        prev = self.meta.get("previous_version") or "none"
        return (f"worklist: {len(self.ids)} figures to encode, {len(self.reuse_ids)} reused from "
                f"version {prev}; {self.directory}")


def _previous_shas(previous: Path | None, model_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted S32 hashes, their rows) of a previous version built with ``model_key``."""
    if previous is None or not (previous / SHA_FILE).is_file():
        return None
    if read_manifest(previous).get("model_key") != model_key:
        return None
    sha = np.load(previous / SHA_FILE)
    keys = np.ascontiguousarray(sha).view("S32").ravel()
    order = np.argsort(keys, kind="stable")
    return keys[order], order.astype(np.int64)


def split_reuse(sha: np.ndarray, previous: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(mask of items whose sha256 is in the previous version, their rows there)."""
    rows = np.full(len(sha), -1, np.int64)
    if previous is None or len(sha) == 0 or len(previous[0]) == 0:
        return np.zeros(len(sha), bool), rows
    keys, prev_rows = previous
    want = np.ascontiguousarray(sha).view("S32").ravel()
    pos = np.searchsorted(keys, want).clip(0, len(keys) - 1)
    hit = (keys[pos] == want) & sha.any(axis=1)  # an all-zero hash means "unknown"
    rows[hit] = prev_rows[pos[hit]]
    return hit, rows


def _store_rows(store: FigureStore) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """(ids, (n, 32) sha256, UTF-8 paths) of every indexable figure image, in id order."""
    ids: list[np.ndarray] = [np.zeros(0, np.int64)]
    shas: list[bytes] = []
    paths: list[bytes] = []
    for batch in store.iter_figure_rows(with_images_only=True):
        ids.append(np.fromiter((r[0] for r in batch), np.int64, count=len(batch)))
        shas.append(b"".join(sha_bytes(r[2]) for r in batch))
        paths.extend((r[1] or "").encode() for r in batch)
    sha_arr = np.frombuffer(b"".join(shas), np.uint8).reshape(-1, 32)
    return np.concatenate(ids), sha_arr, paths


def _digest(meta: dict[str, Any], arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:24]


def write_worklist(store: FigureStore, work_dir: Path, model_key: str, previous: Path | None,
                   block: int) -> WorkList:
    """Freeze what to encode and what to reuse from ``previous`` into ``work_dir/worklist``.

    An identical existing work list is kept (so a rerun resumes its shards); a different one
    is replaced and the work dir's old shards are removed with it.
    """
    ids, sha, paths = _store_rows(store)
    reuse, rows = split_reuse(sha, _previous_shas(previous, model_key))
    todo = ~reuse
    meta: dict[str, Any] = {
        "model_key": model_key, "block": max(int(block), 1), "encode": int(todo.sum()),
        "reuse": int(reuse.sum()),
        "previous_version": previous.name if previous is not None else None,
        "previous_dir": str(previous) if previous is not None else None,
    }
    todo_paths = [p for p, t in zip(paths, todo, strict=True) if t]
    offsets = np.zeros(len(todo_paths) + 1, np.int64)
    np.cumsum([len(p) for p in todo_paths], out=offsets[1:])
    arrays = {"ids.npy": ids[todo], "sha256.npy": sha[todo], "reuse_ids.npy": ids[reuse],
              "reuse_rows.npy": rows[reuse], "reuse_sha256.npy": sha[reuse],
              "path_offsets.npy": offsets}
    blob = b"".join(todo_paths)
    meta["digest"] = _digest(meta, [*arrays.values(), np.frombuffer(blob, np.uint8)])
    final = Path(work_dir) / WORKLIST_DIR
    for leftover in Path(work_dir).glob(".worklist-*"):  # from a process killed while writing
        shutil.rmtree(leftover, ignore_errors=True)
    if final.is_dir() and _read_meta(final).get("digest") == meta["digest"]:
        return load_worklist(work_dir)
    _clear_work_dir(Path(work_dir))
    tmp = Path(work_dir) / f".worklist-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    for name, arr in arrays.items():
        np.save(tmp / name, arr)
    (tmp / "paths.bin").write_bytes(blob)
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    os.replace(tmp, final)
    return load_worklist(work_dir)


def _clear_work_dir(work_dir: Path) -> None:
    """Remove shards, plans and the work list of an earlier, different run."""
    if not work_dir.is_dir():
        return
    for p in work_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((directory / META_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def load_worklist(work_dir: Path) -> WorkList:
    """The work list in ``work_dir`` (RuntimeError saying how to make one when absent)."""
    directory = Path(work_dir) / WORKLIST_DIR
    meta = _read_meta(directory)
    if not meta:
        raise RuntimeError(
            f"no work list in {work_dir}; run `figsearch index --prepare` (or plain "
            "`figsearch index`, whose rank 0 writes it) first"
        )
    ids = np.load(directory / "ids.npy")
    offsets = np.load(directory / "path_offsets.npy")
    size = (directory / "paths.bin").stat().st_size
    if len(offsets) != len(ids) + 1 or offsets[-1] != size:
        raise RuntimeError(f"work list {directory}: paths do not match its {len(ids)} ids")
    blob = (np.memmap(directory / "paths.bin", np.uint8, mode="r") if size
            else np.zeros(0, np.uint8))  # an empty file cannot be memory-mapped
    return WorkList(
        directory, ids, np.load(directory / "sha256.npy"), blob, offsets,
        np.load(directory / "reuse_ids.npy"), np.load(directory / "reuse_rows.npy"),
        np.load(directory / "reuse_sha256.npy"), meta,
    )


def reused_vectors(wl: WorkList) -> np.ndarray:
    """float16 vectors of the reused figures, read from the previous version."""
    if len(wl.reuse_ids) == 0:
        return np.zeros((0, 0), np.float16)
    prev = wl.previous_dir
    if prev is None or not (prev / MANIFEST_FILE).is_file():
        raise RuntimeError(
            f"the work list reuses vectors of index version {wl.meta.get('previous_version')}, "
            f"which is gone ({prev}); run `figsearch index --prepare` again"
        )
    verify_files(prev, read_manifest(prev).get("checksums", {}), full_hash=False)
    vectors = np.load(prev / VECTORS_FILE, mmap_mode="r")
    order = np.argsort(wl.reuse_rows, kind="stable")  # read the memory map front to back
    out = np.empty((len(order), vectors.shape[1]), np.float16)
    out[order] = vectors[wl.reuse_rows[order]]
    return out
