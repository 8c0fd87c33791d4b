"""Image–caption pairs from the figure store, split by article for honest evaluation.

The split is a pure function of the article key (a salted hash), so the trainer, the
evaluator and the WebDataset exporter agree without sharing state, and an article's figures
never straddle train and validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from figsearch.imaging import ImageError, open_image, safe_image_path
from figsearch.store import FigureStore

SPLIT_SALT = "figsearch-split-v1"
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "all")


def split_of(article_key: str, val_fraction: float = VAL_FRACTION) -> str:
    """``"val"`` for a stable ``val_fraction`` of articles (by hash of the key), else ``"train"``."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{article_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


@dataclass(frozen=True)
class Pair:
    """One figure with its caption (the training / evaluation unit)."""

    figure_id: int
    image_path: Path
    caption: str
    article_key: str
    truth_type: str | None = None  # synthetic ground truth, when the figure has one
    keyword_text: str = ""


def _caption_text(row: dict[str, Any]) -> str:
    return " ".join(str(row.get("caption") or "").split())


def load_pairs(
    store: FigureStore, images_dir: Path, split: str = "train", val_fraction: float = VAL_FRACTION,
    limit: int | None = None,
) -> list[Pair]:
    """Figures with an image and a non-empty caption in ``split`` ('train', 'val' or 'all')."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    pairs: list[Pair] = []
    for batch in store.iter_figure_rows(with_images_only=True):
        rows = store.get_figures([figure_id for figure_id, _, _ in batch])
        for figure_id in sorted(rows):
            pair = _pair_from_row(rows[figure_id], images_dir)
            if pair is None:
                continue
            if split == "all" or split_of(pair.article_key, val_fraction) == split:
                pairs.append(pair)
            if limit is not None and len(pairs) >= limit:
                return pairs
    return pairs


def _pair_from_row(row: dict[str, Any], images_dir: Path) -> Pair | None:
    caption = _caption_text(row)
    if not caption or not row.get("image_path"):
        return None
    try:
        path = safe_image_path(images_dir, row["image_path"])
    except ImageError:
        return None
    attributes = row.get("attributes") or {}
    truth = attributes.get("type") if isinstance(attributes, dict) else None
    return Pair(int(row["id"]), path, caption, str(row["article_key"]), truth)


def read_image(path: Path) -> Any:
    """Decode a stored figure image as RGB (with the project's bomb/corruption guards)."""
    return open_image(Path(path).read_bytes())


class PairDataset(Dataset[tuple[Any, str]]):
    """A map-style dataset of (pixels, caption); pickles cleanly into DataLoader workers."""

    def __init__(self, pairs: list[Pair], transform: Callable[[Any], Any]) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        pair = self.pairs[index]
        return self.transform(read_image(pair.image_path)), pair.caption


def collate_pairs(batch: list[tuple[Any, str]]) -> tuple[Any, list[str]]:
    """Stack pixels; keep captions as strings (tokenised in the main process)."""
    import torch

    return torch.stack([pixels for pixels, _ in batch]), [caption for _, caption in batch]
