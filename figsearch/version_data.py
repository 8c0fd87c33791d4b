"""Data derived per index version that travels with it and switches with ``current``.

Besides ``index.faiss``, ``ids.npy`` and ``vectors.npy`` a version directory holds, row-aligned
with ``ids.npy`` (and listed in the manifest's checksums):

- ``sha256.npy`` — (n, 32) uint8 image hashes: the next build reuses a row's vector for an
  unchanged image (same hash, same model key) instead of encoding it again;
- ``figure_types.npy`` (int16 code, -1 = none) and ``figure_type_scores.npy`` (float16): the
  zero-shot figure types; the manifest's ``figure_type_labels`` names the codes.

The build never writes figure types into the store: a rebuild that fails before the swap
changes nothing users see. The search service reads them from the loaded version through
:class:`VersionedStore`, a view of the figure store whose figure-type filter, facets and
result fields come from that version. Versions built before these files existed fall back to
the store's ``figures.figure_type`` column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.sorted_ids import find_sorted
from figsearch.store import FigureFilter, FigureStore

SHA_FILE = "sha256.npy"
TYPES_FILE = "figure_types.npy"
TYPE_SCORES_FILE = "figure_type_scores.npy"
LABELS_KEY = "figure_type_labels"
_ZERO_SHA = bytes(32)


def sha_bytes(hex_digest: str | None) -> bytes:
    """32 raw bytes of a hex SHA-256 (zeros when absent or malformed: never matches)."""
    try:
        raw = bytes.fromhex(hex_digest or "")
    except ValueError:
        return _ZERO_SHA
    return raw if len(raw) == 32 else _ZERO_SHA


def type_arrays(labels: list[tuple[str, float]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(label names, int16 codes, float16 scores) of per-row (label, score) pairs."""
    names = sorted({label for label, _ in labels})
    code = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((code[label] for label, _ in labels), np.int16, count=len(labels))
    scores = np.fromiter((s for _, s in labels), np.float32, count=len(labels)).astype(np.float16)
    return names, codes, scores


@dataclass(frozen=True)
class VersionTypes:
    """The figure types of one version, looked up by figure id."""

    names: tuple[str, ...]
    ids: np.ndarray  # sorted figure ids of the version (its ids.npy)
    codes: np.ndarray
    scores: np.ndarray

    @classmethod
    def load(cls, version_dir: Path, manifest: dict[str, Any], ids: np.ndarray) -> VersionTypes | None:
        """The version's types, or None for a version built without them."""
        if TYPES_FILE not in manifest.get("checksums", {}):
            return None
        codes = np.load(Path(version_dir) / TYPES_FILE)
        scores = np.load(Path(version_dir) / TYPE_SCORES_FILE)
        if not len(codes) == len(scores) == len(ids):
            raise ValueError(f"{version_dir}: figure types for {len(codes)} rows, ids for {len(ids)}")
        return cls(tuple(manifest.get(LABELS_KEY, [])), np.asarray(ids), codes, scores)

    def lookup(self, fig_ids: np.ndarray) -> list[tuple[str | None, float | None]]:
        """(type, score) per figure id; (None, None) for ids not in the version."""
        pos, found = find_sorted(self.ids, fig_ids)
        return [
            (self.names[int(self.codes[p])], float(self.scores[p])) if ok and self.codes[p] >= 0
            else (None, None)
            for p, ok in zip(pos, found, strict=True)
        ]

    def ids_of(self, name: str) -> np.ndarray:
        """Sorted figure ids of one type (empty for a type the version does not have)."""
        if name not in self.names:
            return np.zeros(0, np.int64)
        return self.ids[self.codes == self.names.index(name)].astype(np.int64)

    def present(self) -> list[str]:
        """Types that at least one figure of the version has, sorted."""
        used = np.unique(self.codes[self.codes >= 0])
        return sorted(self.names[int(c)] for c in used)


class VersionedStore(FigureStore):
    """The figure store seen through one index version: figure types come from the version.

    Shares the store's engine (closing the view leaves the store open).
    """

    KEYWORD_WIDEN = 4  # fetch this many times deeper while a type filter leaves too few

    def __init__(self, store: FigureStore, types: VersionTypes) -> None:  # no super(): no migration
        self.path = store.path
        self.engine = store.engine
        self.types = types

    def close(self) -> None:
        """The underlying store owns the engine."""

    def get_figures(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out = super().get_figures(ids)
        keys = list(out)
        for fid, (kind, score) in zip(keys, self.types.lookup(np.asarray(keys, np.int64)), strict=True):
            out[fid]["figure_type"], out[fid]["figure_type_score"] = kind, score
        return out

    def filtered_ids(self, flt: FigureFilter) -> np.ndarray:
        if not flt.figure_type:
            return super().filtered_ids(flt)
        rest = super().filtered_ids(dataclasses.replace(flt, figure_type=None))
        return np.intersect1d(rest, self.types.ids_of(flt.figure_type), assume_unique=True)

    def keyword_search(self, query: str, limit: int, flt: FigureFilter | None = None,
                       match_all: bool = False, weights: Mapping[str, float] | None = None,
                       ) -> list[tuple[int, float]]:
        if flt is None or not flt.figure_type:
            return super().keyword_search(query, limit, flt, match_all, weights)
        allowed = self.types.ids_of(flt.figure_type)
        rest, n = dataclasses.replace(flt, figure_type=None), max(int(limit), 1)
        while True:  # BM25 ranks before the type filter: widen until enough pass or none are left
            rows = super().keyword_search(query, n, rest, match_all, weights)
            ids = np.asarray([i for i, _ in rows], np.int64)
            keep = [r for r, ok in zip(rows, np.isin(ids, allowed), strict=True) if ok]
            if len(keep) >= limit or len(rows) < n:
                return keep[:limit]
            n *= self.KEYWORD_WIDEN

    def distinct_values(self, column: str) -> list[str]:
        if column == "figure_type":
            return self.types.present()
        return super().distinct_values(column)


def versioned_store(store: FigureStore, version_dir: Path, manifest: dict[str, Any],
                    ids: np.ndarray) -> FigureStore:
    """``store`` seen through a version (the store itself for versions without types)."""
    types = VersionTypes.load(version_dir, manifest, ids)
    return store if types is None else VersionedStore(store, types)
