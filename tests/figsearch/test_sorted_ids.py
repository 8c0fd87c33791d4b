"""figsearch.sorted_ids: numpy's set results without numpy's hash-based unique."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from figsearch.sorted_ids import compact_ids, find_sorted, kept, sorted_union, sorted_unique


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


def test_compact_ids_narrow_only_what_fits_in_int32():
    small = np.array([0, 7, 2**31 - 1], np.int64)
    assert compact_ids(small).dtype == np.int32 and compact_ids(small).tolist() == small.tolist()
    assert compact_ids(np.zeros(0, np.int64)).dtype == np.int32
    for wide in ([5, 2**31], [-1, 5]):  # past int32 either way: kept whole
        got = compact_ids(np.array(wide, np.int64))
        assert got.dtype == np.int64 and got.tolist() == wide


@pytest.mark.parametrize("seed", range(5))
def test_find_sorted_in_int32_ids_is_find_sorted_in_int64(seed):
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 2**31 - 1, 5_000))
    needles = np.concatenate([rng.choice(ids, 50), rng.integers(-2**40, 2**40, 50),
                              [2**31 - 1, 2**31, 2**32 + int(ids[0]), -2**32 + int(ids[1])]])
    wide_pos, wide_found = find_sorted(ids, needles)
    pos, found = find_sorted(compact_ids(ids), needles)
    assert np.array_equal(found, wide_found) and np.array_equal(pos[found], wide_pos[found])
    assert found[:50].all()  # (ids that wrap around to held ones are not found: last two)


def test_find_sorted_does_not_widen_int32_ids_to_search_them():
    ids = compact_ids(np.arange(0, 6_000_000, 3, dtype=np.int64))  # 8 MB as int32, 16 as int64
    tracemalloc.start()
    try:
        pos, found = find_sorted(ids, [9, 10, 5_999_997])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.tolist() == [True, False, True] and pos[[0, 2]].tolist() == [3, 1_999_999]
    assert peak < 100_000, f"find_sorted allocated {peak} bytes: it copied the sorted ids"
