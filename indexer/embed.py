"""Embed figure images: work list -> reader -> mapper -> writer -> merge (clip-retrieval style).

- **work list** (:mod:`indexer.worklist`): frozen once by the process that reads the store;
  it names the figures to encode (id, image path, sha256) and those whose vectors are reused
  from the previous index version (same image hash, same model key).
- **reader** (:class:`FigureImageDataset`, :func:`decode_batches`): DataLoader worker processes
  read this rank's images, decode them with :func:`figsearch.imaging.open_image` and run
  ``encoder.preprocess``. Unreadable images come back as failures with a reason.
- **mapper** (:func:`encode_batch`): ``encoder.encode_pixels`` -> float16 vectors.
- **writer** (:class:`ShardWriter`): float16 ``.npy`` vectors + int64 ids per shard, written
  atomically; a ``.done.json`` marker written last makes a shard finished, so a rerun after a
  crash skips it. A ``plan-rRRR.json`` per rank lists its shards for the work list's digest.
- **merge** (:func:`merge_embeddings`): every rank's shards + the reused vectors, sorted by id.

Ranks never touch the SQLite store: under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK) each
rank encodes the work list's blocks ``j % world == rank`` on ``cuda:<LOCAL_RANK>`` and writes
its own shards; one process (rank 0 after a gloo barrier, or ``figsearch index --merge``)
merges them and writes the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from figsearch.faults import maybe_crash
from figsearch.imaging import ImageError, open_image, safe_image_path
from figsearch.sorted_ids import sorted_union
from indexer.worklist import WorkList, reused_vectors

log = logging.getLogger(__name__)
Row = tuple[int, str | None, str | None]  # (figure id, image path, sha256)
SHARD_SIZE = 10_000
#: Only barriers use the process group. torchrun tears the group down when a rank dies, so a
#: long timeout merely lets ranks wait for rank 0's work list and for the slowest rank.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass
class EmbedSummary:
    """Counts of one embedding run."""

    figures: int = 0
    reused: int = 0
    encoded: int = 0
    failed: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    elapsed_s: float = 0.0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def line(self) -> str:
        rate = self.figures / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"embed: {self.figures} figures ({self.reused} reused, {self.encoded} encoded, "
            f"{self.failed} unreadable); {self.shards_done} shards written, "
            f"{self.shards_skipped} resumed; {self.elapsed_s:.1f} s, {rate:.1f} figures/s"
        )


@dataclass
class DistInfo:
    """This process's place under torchrun (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        rank = int(os.environ.get("RANK", "0"))
        return cls(rank, int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, dist: DistInfo) -> str:
    """This rank's torch device: ``cuda`` (or auto-detected CUDA) becomes ``cuda:<LOCAL_RANK>``,
    so the ranks of one node use one GPU each; an explicit ``cuda:N`` or ``cpu`` is kept."""
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{dist.local_rank}" if device == "cuda" else device


# -- reader -----------------------------------------------------------------------------------
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

    def write_plan(self, names: list[str], worklist: str, world: int) -> None:
        """The shard names this rank produced for one work list (what the merge reads)."""
        tmp = self.work_dir / f"plan-r{self.rank:03d}.json.tmp"
        tmp.write_text(json.dumps({"worklist": worklist, "world": world, "rank": self.rank,
                                   "shards": names}))
        os.replace(tmp, self.work_dir / f"plan-r{self.rank:03d}.json")


def _plans(work_dir: Path, worklist: str) -> list[list[str]]:
    """Every rank's shard names for this work list; RuntimeError naming missing ranks.

    Rank 0's plan, rewritten by every run, gives the world size; plans left by an earlier
    run with another world size are ignored."""
    plans = {}
    for path in sorted(work_dir.glob("plan-r*.json")):
        plan = json.loads(path.read_text())
        if plan.get("worklist") == worklist:
            plans[int(plan["rank"])] = (int(plan["world"]), list(plan["shards"]))
    if 0 not in plans:
        raise RuntimeError(f"rank 0 left no shard plan for work list {worklist} in {work_dir}; "
                           "run the ranks first")
    world = plans[0][0]
    missing = [r for r in range(world) if plans.get(r, (None,))[0] != world]
    if missing:
        raise RuntimeError(f"ranks {missing} of {world} left no shard plan in {work_dir}; "
                           "did they fail? Rerun them (finished shards are kept)")
    return [plans[r][1] for r in range(world)]


def merge_shards(work_dir: Path, worklist: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(ids, float16 vectors, failures) of every rank's shards for a work list, sorted by id."""
    ids, vecs = [np.zeros(0, np.int64)], []
    failures: list[tuple[int, str]] = []
    for names in _plans(work_dir, worklist):
        for name in names:
            ids.append(np.load(work_dir / f"{name}.ids.npy"))
            vecs.append(np.load(work_dir / f"{name}.vectors.npy"))
            marker = json.loads((work_dir / f"{name}.done.json").read_text())
            failures.extend((int(i), str(r)) for i, r in marker["failures"])
    all_ids = np.concatenate(ids)
    dim = max((v.shape[1] for v in vecs if v.ndim == 2 and len(v)), default=0)
    all_vecs = (np.concatenate([v.reshape(-1, dim) for v in vecs]) if vecs and dim
                else np.zeros((0, dim), np.float16))
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_vecs[order], sorted(failures)


# -- one shard, one rank, the whole run ---------------------------------------------------------
@dataclass
class EmbedConfig:
    """Where and how to embed."""

    work_dir: Path
    images_dir: Path
    batch_size: int = 64  # the work list's block size: ranks encode whole blocks
    num_workers: int = 2
    max_pixels: int = 90_000_000
    shard_size: int = SHARD_SIZE
    progress: bool = True


def embed_shard(encoder: Any, rows: Sequence[Row], cfg: EmbedConfig, batch: int,
                bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(ids, float16 vectors, failures) of one shard's rows, encoded in batches of ``batch``."""
    failures: list[tuple[int, str]] = []
    fresh: dict[int, np.ndarray] = {}
    for ids, pixels, failed in decode_batches(rows, cfg.images_dir, encoder.preprocess,
                                              batch, cfg.num_workers, cfg.max_pixels):
        failures.extend(failed)
        if pixels is not None:
            fresh.update(zip(ids, encode_batch(encoder, pixels), strict=True))
            maybe_crash("embed-batch")  # test-only fault injection (FIGSEARCH_FAULT_AT)
        if bar is not None:
            bar.update(len(ids) + len(failed))
    ids_out = np.array(sorted(fresh), np.int64)
    stacked = np.stack([fresh[i] for i in ids_out]) if len(ids_out) else np.zeros((0, encoder.dim))
    return ids_out, stacked.astype(np.float16), failures


def rank_shards(wl: WorkList, dist: DistInfo, shard_size: int) -> Iterator[list[Row]]:
    """This rank's rows in shards of whole blocks (so batches are the work list's blocks)."""
    per_shard = max(shard_size // wl.block, 1)
    shard: list[Row] = []
    for n, (start, stop) in enumerate(wl.blocks_for(dist.rank, dist.world), start=1):
        shard.extend(wl.rows(start, stop))
        if n % per_shard == 0:
            yield shard
            shard = []
    if shard:
        yield shard


def embed_rank(wl: WorkList, encoder: Any, cfg: EmbedConfig, dist: DistInfo) -> EmbedSummary:
    """Encode this rank's blocks of the work list into shards, skipping finished ones."""
    start = time.perf_counter()
    writer = ShardWriter(cfg.work_dir, dist.rank)
    summary, names = EmbedSummary(), []
    total = sum(stop - begin for begin, stop in wl.blocks_for(dist.rank, dist.world))
    with tqdm(total=total, desc=f"embed r{dist.rank}", unit="fig", disable=not cfg.progress,
              dynamic_ncols=True) as bar:
        for shard_no, rows in enumerate(rank_shards(wl, dist, cfg.shard_size)):
            planned = [r[0] for r in rows]
            names.append(writer.name(shard_no))
            summary.figures += len(rows)
            if writer.is_done(shard_no, planned):
                summary.shards_skipped += 1
                bar.update(len(rows))
                continue
            ids, vectors, failures = embed_shard(encoder, rows, cfg, wl.block, bar)
            writer.write(shard_no, planned, ids, vectors, failures)
            summary.encoded += len(ids)
            summary.failed += len(failures)
            summary.failures.extend(failures)
            summary.shards_done += 1
    writer.write_plan(names, wl.digest, dist.world)
    summary.elapsed_s = time.perf_counter() - start
    return summary


# -- process group (barriers only) ----------------------------------------------------------
def init_distributed(dist: DistInfo) -> bool:
    """Join the torchrun process group (gloo: only barriers are needed); True if joined here."""
    if dist.world <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return True


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op when running alone)."""
    if dist.world > 1:
        torch.distributed.barrier()


# -- merge ------------------------------------------------------------------------------------
@dataclass
class Embedded:
    """The merged result of an embedding run: rows sorted by figure id."""

    ids: np.ndarray
    vectors: np.ndarray
    sha: np.ndarray  # (n, 32) uint8 image hashes, row-aligned
    failures: list[tuple[int, str]]
    summary: EmbedSummary


def merge_embeddings(wl: WorkList, work_dir: Path, elapsed_s: float = 0.0) -> Embedded:
    """Every rank's encoded shards + the vectors reused from the previous version, by id."""
    start = time.perf_counter()
    ids, vectors, failures = merge_shards(work_dir, wl.digest)
    got = sorted_union(ids, np.asarray([i for i, _ in failures], np.int64))
    if not np.array_equal(got, wl.ids):
        covered = int(np.isin(wl.ids, got).sum())
        raise RuntimeError(f"the shards in {work_dir} cover {covered} of {len(wl.ids)} "
                           "work-list figures; rerun the ranks")
    sha = wl.sha[np.searchsorted(wl.ids, ids)] if len(ids) else wl.sha[:0]
    reused = reused_vectors(wl)
    if len(reused):
        if len(vectors) and vectors.shape[1] != reused.shape[1]:
            raise RuntimeError(f"reused vectors have dim {reused.shape[1]}, new ones "
                               f"{vectors.shape[1]}")
        ids = np.concatenate([ids, wl.reuse_ids])
        vectors = np.concatenate([vectors.reshape(-1, reused.shape[1]), reused])
        sha = np.concatenate([sha, wl.reuse_sha])
        order = np.argsort(ids, kind="stable")
        ids, vectors, sha = ids[order], vectors[order], sha[order]
    summary = EmbedSummary(
        figures=len(wl.ids) + len(wl.reuse_ids), reused=len(wl.reuse_ids),
        encoded=len(ids) - len(wl.reuse_ids), failed=len(failures),
        shards_done=sum(len(names) for names in _plans(work_dir, wl.digest)),
        elapsed_s=elapsed_s + time.perf_counter() - start, failures=failures,
    )
    return Embedded(ids, vectors, sha, failures, summary)
