"""Sorted arrays of figure ids (or passage keys): a version's rows are its ids in ascending
order, and every set of ids the nightly rebuild and the filters compute is kept that way.

These stand in for numpy's set routines on large arrays: numpy 2.4's ``np.unique``, which
``union1d`` and ``setdiff1d`` (without ``assume_unique``) call, spends about 1 us per element
on this machine (16.9 s for 15 M ids, sorted or not), where a sort costs 0.05-1.5 s and a
bisection per id of a small set next to nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sorted_unique(ids: Any) -> np.ndarray:
    """``ids`` as a sorted unique int64 array (the store hands ids out so: then no sort)."""
    arr = np.asarray(ids, np.int64).ravel()
    return arr if len(arr) < 2 or bool(np.all(arr[1:] > arr[:-1])) else sorted_union(arr)


def sorted_union(*arrays: Any) -> np.ndarray:
    """The sorted distinct values of all ``arrays`` (``np.union1d`` of any number of them).
    A stable sort merges the already sorted runs that ids come in (the previous version's, the
    night's) in linear time; repeats are then dropped by comparing neighbours. A nightly
    delta at 15 M took 18 s to merge one index's ids with ``union1d``."""
    parts = [np.asarray(a).ravel() for a in arrays]
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    out.sort(kind="stable")
    repeats = np.flatnonzero(out[1:] == out[:-1]) + 1
    return np.delete(out, repeats) if len(repeats) else out


def kept(sorted_ids: np.ndarray, gone: Any) -> np.ndarray:
    """A mask over ``sorted_ids``: False where the id is one of ``gone`` (found by bisection,
    a few per id of ``gone``, rather than ``np.isin`` over every id)."""
    keep = np.ones(len(sorted_ids), bool)
    at, held = find_sorted(sorted_ids, gone)
    keep[at[held]] = False
    return keep


def compact_ids(sorted_ids: Any) -> np.ndarray:
    """A loaded index's sorted ids as int32 when every one fits, else int64.

    Each worker holds every loaded index's row -> id map in its own memory: at 15 M figures
    and ~49 M caption passages that is 0.6 GB of int64, over a third of a worker's own
    memory. Figure ids and passage keys (``figure id * 16 + n``) stay under 2**31 up to 134 M
    figures, so the maps take half that; a store whose ids outgrow int32 keeps int64 maps.
    Searches take either (:func:`find_sorted`)."""
    arr = np.asarray(sorted_ids)
    if not len(arr) or (int(arr.min()) >= 0 and int(arr.max()) <= np.iinfo(np.int32).max):
        return arr.astype(np.int32)
    return arr.astype(np.int64)


def find_sorted(sorted_ids: np.ndarray, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """(positions, found mask) of ``ids`` in the sorted array ``sorted_ids`` (int64, or int32
    from :func:`compact_ids`: then the ids are narrowed, never the sorted array widened, which
    would copy it on every call)."""
    ids = np.asarray(ids, np.int64).ravel()
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    needles, inside = ids, None
    if sorted_ids.dtype != np.int64:
        limits = np.iinfo(sorted_ids.dtype)
        inside = (ids >= limits.min) & (ids <= limits.max)
        needles = np.where(inside, ids, 0).astype(sorted_ids.dtype)
    pos = np.searchsorted(sorted_ids, needles).clip(0, len(sorted_ids) - 1)
    found = np.asarray(sorted_ids[pos] == needles)
    return pos.astype(np.int64), found if inside is None else found & inside
