"""figsearch.sorted_ids: numpy's set results without numpy's hash-based unique."""

from __future__ import annotations

import numpy as np
import pytest

from figsearch.sorted_ids import find_sorted, kept, sorted_union, sorted_unique


@pytest.mark.parametrize("seed", range(20))
def test_sorted_union_is_numpys_union_of_any_arrays(seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 60, rng.integers(0, 40)) for _ in range(rng.integers(1, 4))]
    before = [a.copy() for a in arrays]
    got = sorted_union(*arrays)
    expected = np.unique(np.concatenate(arrays))
    assert np.array_equal(got, expected) and got.dtype == expected.dtype
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before, strict=True))  # untouched
    assert np.array_equal(sorted_unique(arrays[0]), np.unique(arrays[0].astype(np.int64)))


def test_sorted_union_merges_a_version_and_its_night():
    kept = np.arange(1, 2_000_000, 3, dtype=np.int64)
    night = np.array([5, 6, 2_000_000, 7], np.int64)  # 7 is kept already
    got = sorted_union(kept, night)
    assert len(got) == len(kept) + 3 and bool(np.all(got[1:] > got[:-1]))
    assert np.isin(night, got).all()
    assert sorted_union().dtype == np.int64 and len(sorted_union(np.zeros(0, np.int64))) == 0


def test_find_sorted_finds_present_ids_and_flags_the_rest():
    ids = np.array([2, 4, 8, 16], np.int64)
    pos, found = find_sorted(ids, [16, 3, 2, 99, -1])
    assert found.tolist() == [True, False, True, False, False]
    assert ids[pos[found]].tolist() == [16, 2]
    assert find_sorted(np.zeros(0, np.int64), [1])[1].tolist() == [False]


@pytest.mark.parametrize("seed", range(5))
def test_kept_is_numpys_not_isin_over_sorted_ids(seed):
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 500, 200))
    gone = rng.integers(-10, 510, 40)  # some held, some not, some repeated
    assert np.array_equal(kept(ids, gone), ~np.isin(ids, gone))
    assert kept(np.zeros(0, np.int64), gone).shape == (0,)
