"""``figsearch export-wds``: the figure store as WebDataset shards, and the trainer's reader.

Each sample holds ``jpg`` (the stored image bytes), ``txt`` (caption) and ``json``
(figure id, article key, split). ``manifest.json`` beside the shards records counts per split,
which sets the trainer's epoch length. Shards are written under temporary names and renamed,
so an interrupted export never leaves a truncated shard under a final name.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.data import VAL_FRACTION, load_pairs, split_of

MANIFEST = "manifest.json"


def export_wds(data_dir: Path, out_dir: Path, shard_size: int = 1000,
               val_fraction: float = VAL_FRACTION, progress: bool = True) -> dict[str, Any]:
    """Write every captioned figure to ``out_dir/shard-NNNNNN.tar``; return the manifest."""
    import webdataset as wds
    from tqdm import tqdm

    from figsearch.core.config import Settings
    from figsearch.store import FigureStore

    settings = Settings(data_dir=data_dir)
    store = FigureStore(settings.db_path, create=False)
    try:
        pairs = load_pairs(store, settings.images_dir, "all", val_fraction)
    finally:
        store.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}
    started = time.monotonic()
    shards: list[str] = []
    for first in tqdm(range(0, len(pairs), shard_size), desc="shards", disable=not progress):
        name = f"shard-{first // shard_size:06d}.tar"
        tmp = out_dir / f".{name}.tmp"
        with wds.TarWriter(str(tmp)) as sink:
            for pair in pairs[first:first + shard_size]:
                split = split_of(pair.article_key, val_fraction)
                counts[split] += 1
                sink.write({"__key__": f"fig{pair.figure_id:012d}",
                            "jpg": pair.image_path.read_bytes(), "txt": pair.caption,
                            "json": {"figure_id": pair.figure_id, "article_key": pair.article_key,
                                     "split": split}})
        os.replace(tmp, out_dir / name)
        shards.append(name)
    manifest = {"shards": shards, "counts": counts, "val_fraction": val_fraction,
                "seconds": round(time.monotonic() - started, 1)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def shard_urls(pattern: str) -> list[str]:
    """Shard paths from a glob (``dir/*.tar``) or a WebDataset brace pattern."""
    if "{" in pattern:
        import braceexpand

        return list(braceexpand.braceexpand(pattern))
    urls = sorted(glob.glob(os.path.expanduser(pattern)))
    if not urls:
        raise FileNotFoundError(f"no WebDataset shards match {pattern!r}")
    return urls


def count_train_samples(pattern: str) -> int:
    """Training samples in the shards, from the manifest beside them."""
    manifest = Path(shard_urls(pattern)[0]).parent / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} missing: export shards with `figsearch export-wds`")
    return int(json.loads(manifest.read_text())["counts"]["train"])


def _is_train(sample: tuple[Any, str, dict[str, Any]]) -> bool:
    return sample[2].get("split") == "train"


class _Prepare:
    """(image, caption, meta) -> (pixels, caption); a class so it pickles into workers."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, sample: tuple[Any, str, dict[str, Any]]) -> tuple[Any, str]:
        return self.transform(sample[0].convert("RGB")), sample[1]


def wds_batches(pattern: str, transform: Any, batch_size: int, n_batches: int, seed: int,
                dist: Any, workers: int) -> Iterator[tuple[Any, list[str]]]:
    """``n_batches`` training micro-batches for this rank (resampled shards: equal per rank)."""
    import webdataset as wds
    from torch.utils.data import DataLoader

    from trainer.data import collate_pairs

    if n_batches <= 0:
        return iter(())
    dataset = (
        wds.WebDataset(shard_urls(pattern), resampled=True, shardshuffle=False,
                       seed=seed * 1009 + dist.rank, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "txt", "json")
        .select(_is_train)
        .map(_Prepare(transform))
        .batched(batch_size, collation_fn=collate_pairs, partial=False)
        .with_epoch(-(-n_batches // workers) if workers else n_batches)
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return _take(loader, n_batches)


def _take(loader: Any, n: int) -> Iterator[tuple[Any, list[str]]]:
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``figsearch export-wds``."""
    parser.add_argument("--out", required=True, type=Path, help="directory for the shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")


def command(args: argparse.Namespace) -> int:
    """Export and print a summary line."""
    manifest = export_wds(args.settings.data_dir, args.out, args.shard_size)
    counts = manifest["counts"]
    print(f"wrote {len(manifest['shards'])} shards to {args.out}: {counts['train']} train, "
          f"{counts['val']} val samples in {manifest['seconds']} s")
    return 0
