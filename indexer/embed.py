"""Embed every stored figure image: reader -> mapper -> writer (clip-retrieval style).

- **reader** (:func:`read_figure_rows`, :class:`FigureImageDataset`, :func:`decode_batches`):
  streams (id, image_path, sha256) rows of this rank's slice from the store; DataLoader worker
  processes read the stored file, decode it with :func:`figsearch.imaging.open_image` and run
  ``encoder.preprocess``. Unreadable images come back as failures with a reason.
- **mapper** (:func:`encode_batch`): ``encoder.encode_pixels`` -> float16 vectors.
- **writer** (:class:`ShardWriter`): float16 ``.npy`` vectors + int64 ids per shard, written
  atomically; a ``.done.json`` marker written last makes a shard finished, so a rerun after a
  crash skips it.

Vectors are cached in the store by (sha256, model_key): unchanged images are never re-encoded.
Under ``torchrun`` (RANK / WORLD_SIZE) each rank embeds the figures with ``id % world == rank``
and rank 0 merges every rank's shards after a barrier (gloo).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from figsearch.faults import maybe_crash
from figsearch.imaging import ImageError, open_image, safe_image_path
from figsearch.store import FigureStore

log = logging.getLogger(__name__)
Row = tuple[int, str | None, str | None]  # (figure id, image path, sha256)
SHARD_SIZE = 10_000


@dataclass
class EmbedSummary:
    """Counts of one embedding run."""

    figures: int = 0
    cached: int = 0
    encoded: int = 0
    failed: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    elapsed_s: float = 0.0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def add(self, other: EmbedSummary) -> None:
        for name in ("figures", "cached", "encoded", "failed", "shards_done", "shards_skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)

    def line(self) -> str:
        rate = self.figures / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"embed: {self.figures} figures ({self.cached} cached, {self.encoded} encoded, "
            f"{self.failed} unreadable); {self.shards_done} shards written, "
            f"{self.shards_skipped} resumed; {self.elapsed_s:.1f} s, {rate:.1f} figures/s"
        )


@dataclass
class DistInfo:
    """This process's place under torchrun (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


# -- reader -----------------------------------------------------------------------------------
def read_figure_rows(store: FigureStore, dist: DistInfo | None = None) -> Iterator[Row]:
    """This rank's (id, image_path, sha256) rows, in id order (id modulo world size)."""
    dist = dist or DistInfo()
    for batch in store.iter_figure_rows(with_images_only=True):
        for row in batch:
            if row[0] % dist.world == dist.rank:
                yield row


class FigureImageDataset(torch.utils.data.Dataset):
    """Decodes + preprocesses stored figure images; items are (id, pixels | None, reason)."""

    def __init__(self, rows: Sequence[Row], images_dir: Path, preprocess: Callable[[Any], Any],
                 max_pixels: int) -> None:
        self.rows = list(rows)
        self.images_dir = Path(images_dir)
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        fig_id, rel, _sha = self.rows[i]
        try:
            if not rel:
                raise ImageError("no stored image path")
            data = safe_image_path(self.images_dir, rel).read_bytes()
            return fig_id, self.preprocess(open_image(data, self.max_pixels)), ""
        except (ImageError, OSError, ValueError, RuntimeError) as exc:
            return fig_id, None, f"{type(exc).__name__}: {exc}"


def collate_figures(items: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack the decoded images; failures travel beside them with their reasons."""
    ok = [(i, px) for i, px, _ in items if px is not None]
    failures = [(i, reason) for i, px, reason in items if px is None]
    pixels = torch.stack([px for _, px in ok]) if ok else None
    return [i for i, _ in ok], pixels, failures


def decode_batches(
    rows: Sequence[Row], images_dir: Path, preprocess: Callable[[Any], Any], batch_size: int,
    num_workers: int, max_pixels: int,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """(ids, pixel batch | None, failures) batches decoded by DataLoader worker processes."""
    dataset = FigureImageDataset(rows, images_dir, preprocess, max_pixels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_figures,
        persistent_workers=False,
    )
    yield from loader


# -- mapper -----------------------------------------------------------------------------------
def encode_batch(encoder: Any, pixels: Any) -> np.ndarray:
    """float16 L2-normalised embeddings of a preprocessed pixel batch."""
    return np.asarray(encoder.encode_pixels(pixels), np.float32).astype(np.float16)


# -- writer -----------------------------------------------------------------------------------
def _ids_digest(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Writes shards ``shard-r<rank>-<n>.{vectors,ids}.npy`` + ``.done.json`` into work_dir."""

    def __init__(self, work_dir: Path, rank: int = 0) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank

    def name(self, shard_no: int) -> str:
        return f"shard-r{self.rank:03d}-{shard_no:06d}"

    def _marker(self, name: str) -> Path:
        return self.work_dir / f"{name}.done.json"

    def is_done(self, shard_no: int, planned_ids: Sequence[int]) -> bool:
        """Finished earlier for exactly these figure ids (same store state)."""
        marker = self._marker(self.name(shard_no))
        if not marker.is_file():
            return False
        return bool(json.loads(marker.read_text()).get("planned") == _ids_digest(planned_ids))

    def write(self, shard_no: int, planned_ids: Sequence[int], ids: np.ndarray,
              vectors: np.ndarray, failures: list[tuple[int, str]]) -> str:
        """Write one finished shard atomically (vectors, ids, then the marker)."""
        name = self.name(shard_no)
        _atomic_save(self.work_dir / f"{name}.vectors.npy", np.asarray(vectors, np.float16))
        _atomic_save(self.work_dir / f"{name}.ids.npy", np.asarray(ids, np.int64))
        marker = {"planned": _ids_digest(planned_ids), "count": int(len(ids)),
                  "failures": [[int(i), r] for i, r in failures]}
        tmp = self._marker(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, self._marker(name))
        return name

    def write_plan(self, names: list[str]) -> None:
        """The shard names this rank produced in this run (what the merge reads)."""
        tmp = self.work_dir / f"plan-r{self.rank:03d}.json.tmp"
        tmp.write_text(json.dumps(names))
        os.replace(tmp, self.work_dir / f"plan-r{self.rank:03d}.json")


def merge_shards(work_dir: Path, world: int = 1) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(ids, float16 vectors, failures) of every rank's planned shards, sorted by id."""
    ids, vecs = [np.zeros(0, np.int64)], []
    failures: list[tuple[int, str]] = []
    for rank in range(world):
        plan = work_dir / f"plan-r{rank:03d}.json"
        if not plan.is_file():
            raise RuntimeError(f"rank {rank} left no shard plan in {work_dir}; did it fail?")
        for name in json.loads(plan.read_text()):
            ids.append(np.load(work_dir / f"{name}.ids.npy"))
            vecs.append(np.load(work_dir / f"{name}.vectors.npy"))
            marker = json.loads((work_dir / f"{name}.done.json").read_text())
            failures.extend((int(i), str(r)) for i, r in marker["failures"])
    all_ids = np.concatenate(ids)
    dim = vecs[0].shape[1] if vecs and vecs[0].ndim == 2 else 0
    all_vecs = np.concatenate([v.reshape(-1, dim) for v in vecs]) if vecs else np.zeros((0, 0), np.float16)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_vecs[order] if len(all_vecs) else all_vecs, failures


# -- one shard, one rank, the whole run ---------------------------------------------------------
@dataclass
class EmbedConfig:
    """Where and how to embed."""

    work_dir: Path
    images_dir: Path
    batch_size: int = 64
    num_workers: int = 2
    max_pixels: int = 90_000_000
    shard_size: int = SHARD_SIZE
    progress: bool = True


def _cached_vectors(store: FigureStore, rows: Sequence[Row], model_key: str, dim: int
                    ) -> tuple[dict[int, np.ndarray], list[Row]]:
    """Cache hits by figure id, and the rows still to encode."""
    cache = store.get_embeddings([r[2] for r in rows if r[2]], model_key)
    hits = {r[0]: cache[r[2]] for r in rows if r[2] in cache and cache[r[2]].shape == (dim,)}
    return hits, [r for r in rows if r[0] not in hits]


def embed_shard(store: FigureStore, encoder: Any, rows: Sequence[Row], cfg: EmbedConfig,
                bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]], int]:
    """(ids, float16 vectors, failures, cache hits) of one shard's rows."""
    found, todo = _cached_vectors(store, rows, encoder.model_key, encoder.dim)
    if bar is not None:
        bar.update(len(found))
    sha_of = {r[0]: r[2] for r in todo}
    failures: list[tuple[int, str]] = []
    fresh: dict[int, np.ndarray] = {}
    for ids, pixels, failed in decode_batches(todo, cfg.images_dir, encoder.preprocess,
                                              cfg.batch_size, cfg.num_workers, cfg.max_pixels):
        failures.extend(failed)
        if pixels is not None:
            fresh.update(zip(ids, encode_batch(encoder, pixels), strict=True))
            maybe_crash("embed-batch")  # test-only fault injection (FIGSEARCH_FAULT_AT)
        if bar is not None:
            bar.update(len(ids) + len(failed))
    new_cache = [(str(sha_of[i]), v) for i, v in fresh.items() if sha_of[i]]
    if new_cache:  # an empty executemany is an error in SQLAlchemy
        store.put_embeddings(new_cache, encoder.model_key)
    vectors = {**found, **fresh}
    ids_out = np.array(sorted(vectors), np.int64)
    stacked = np.stack([vectors[i] for i in ids_out]) if len(ids_out) else np.zeros((0, encoder.dim))
    return ids_out, stacked.astype(np.float16), failures, len(found)


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record_failures(store: FigureStore, rows: Sequence[Row], failures: list[tuple[int, str]]) -> None:
    path_of = {r[0]: r[1] or "" for r in rows}
    for fig_id, reason in failures:
        store.record_error(path_of.get(fig_id, ""), reason, item=f"figure {fig_id}", stage="embed")


def embed_rank(store: FigureStore, encoder: Any, cfg: EmbedConfig, dist: DistInfo) -> EmbedSummary:
    """Embed this rank's figures into shards, skipping shards finished by an earlier run."""
    start = time.perf_counter()
    writer = ShardWriter(cfg.work_dir, dist.rank)
    summary, names = EmbedSummary(), []
    total = store.counts()["figures_with_images"] // max(dist.world, 1)
    with tqdm(total=total, desc=f"embed r{dist.rank}", unit="fig", disable=not cfg.progress,
              dynamic_ncols=True) as bar:
        for shard_no, rows in enumerate(_chunks(read_figure_rows(store, dist), cfg.shard_size)):
            planned = [r[0] for r in rows]
            names.append(writer.name(shard_no))
            summary.figures += len(rows)
            if writer.is_done(shard_no, planned):
                summary.shards_skipped += 1
                bar.update(len(rows))
                continue
            ids, vectors, failures, hits = embed_shard(store, encoder, rows, cfg, bar)
            writer.write(shard_no, planned, ids, vectors, failures)
            _record_failures(store, rows, failures)
            summary.cached += hits
            summary.encoded += len(ids) - hits
            summary.failed += len(failures)
            summary.failures.extend(failures)
            summary.shards_done += 1
    writer.write_plan(names)
    summary.elapsed_s = time.perf_counter() - start
    return summary


def _init_distributed(dist: DistInfo) -> bool:
    """Join the torchrun process group (gloo: only barriers are needed); True if joined here."""
    if dist.world <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("gloo")
    return True


@dataclass
class Embedded:
    """The merged result of an embedding run (rank 0)."""

    ids: np.ndarray
    vectors: np.ndarray
    failures: list[tuple[int, str]]
    summary: EmbedSummary


def run_embedding(store: FigureStore, encoder: Any, cfg: EmbedConfig,
                  dist: DistInfo | None = None) -> Embedded | None:
    """Embed all figures (this rank's slice), barrier, and on rank 0 merge every rank's shards.

    Returns None on ranks other than 0.
    """
    dist = dist or DistInfo.from_env()
    joined = _init_distributed(dist)
    try:
        summary = embed_rank(store, encoder, cfg, dist)
        if dist.world > 1:
            torch.distributed.barrier()
        if dist.rank != 0:
            return None
        ids, vectors, failures = merge_shards(cfg.work_dir, dist.world)
        summary.failures = failures
        summary.failed = len(failures)
        return Embedded(ids, vectors, failures, summary)
    finally:
        if joined:
            torch.distributed.destroy_process_group()
