"""figsearch.index: the factory rule and SearchIndex over real FAISS indexes built on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from figsearch.index import (
    IndexLoadError,
    IndexModelMismatch,
    RowFile,
    SearchIndex,
    advise_random,
    choose_factory,
    current_version_dir,
    ivf_lists,
    no_list_prefetch,
)
from indexer.build import build_version

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM = 32
N = 4000
faiss.omp_set_num_threads(1)  # OpenMP spin-waits badly on the shared 2-core CI machine


def clustered(n: int, dim: int = DIM, centers: int = 40, seed: int = 0) -> np.ndarray:
    """Gaussian-mixture unit vectors: clustered like real embeddings, so recall means something."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(base: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q @ base.T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


# -- the rule -----------------------------------------------------------------------------------
def test_rule_picks_flat_ivf_pq_and_opq_by_size_and_budget():
    assert choose_factory(10_000, 512, 16) == "Flat"
    # from 500k on: SQ8 codes re-ranked from the float16 vectors, not 2 GB of float32 lists
    assert choose_factory(1_000_000, 512, 16) == "IVF4096(HNSW32_SQfp16),SQ8"
    assert choose_factory(1_000_000, 512, 1) == "IVF4096(HNSW32_SQfp16),SQ8"  # 512 MiB fit
    assert choose_factory(1_000_000, 512, 0.5).endswith(",PQ64")  # 0.5 GiB: 64-byte codes
    assert choose_factory(499_999, 512, 16) == "IVF2048,Flat"
    assert choose_factory(200_000, 512, 16) == "IVF2048,Flat"
    assert choose_factory(60_000, 512, 16) == "IVF1024,Flat"
    assert choose_factory(50_000, 512, 16) == "IVF1024,Flat"  # 4·sqrt(50k) = 894
    assert choose_factory(15_000_000, 512, 16) == "OPQ64,IVF65536(HNSW32_SQfp16),PQ64"
    assert choose_factory(15_000_000, 512, 0.5) == "OPQ16,IVF65536(HNSW32_SQfp16),PQ16"
    assert choose_factory(200_000_000, 512, 32).startswith("OPQ")


def test_ivf_lists_respect_39_training_points_per_centroid():
    for n in (1_000, 50_000, 123_457, 2_000_000):
        k = ivf_lists(n)
        assert n >= 39 * k and k & (k - 1) == 0
        assert k <= 6 * np.sqrt(n)  # the low end of faiss's 4-16 sqrt(n): k-means cost ~ k^2


# -- self queries and recall for each family ----------------------------------------------------
# PQ with 8-bit codes, as the factory rule picks (4-bit PQ8x4 codes on 32-d left the self match
# outside the re-rank depth for 2 of 42 probes with faiss 1.15).
FAMILIES = ["Flat", "IVF64,Flat", "IVF64_HNSW32,Flat", "IVF64(HNSW32_SQfp16),Flat", "IVF64,PQ8",
            "OPQ8,IVF64_HNSW32,PQ8", "OPQ8,IVF64(HNSW32_SQfp16),PQ8", "HNSW32"]
BASE = clustered(N)
IDS = np.arange(N, dtype=np.int64) * 3 + 7  # figure ids are not row numbers


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """factory -> version dir over BASE/IDS, each family built once for the module."""
    cache: dict[str, object] = {}

    def get(factory: str):
        if factory not in cache:
            root = tmp_path_factory.mktemp("idx")
            cache[factory] = build_version(root, BASE, IDS, model_spec="s", model_key="k",
                                           factory=factory)
        return cache[factory]

    return get


@pytest.mark.parametrize("factory", FAMILIES)
def test_each_family_returns_itself_top1_and_recalls(built, factory):
    idx = SearchIndex.load(built(factory), nprobe=16)
    assert idx.ntotal == N and idx.dim == DIM and idx.manifest["factory"] == factory
    probe = np.arange(0, N, 97)
    scores, got = idx.search(BASE[probe], 5)
    assert (got[:, 0] == IDS[probe]).mean() >= 0.97
    queries = clustered(60, seed=5)
    _, found = idx.search(queries, 10)
    assert recall(found, exact_topk(BASE, IDS, queries, 10)) >= 0.8
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_sq8_family_of_the_rule_recalls_like_exact_with_rerank(built):
    """The rule's codec from 500k vectors (``IVF…,SQ8``) is compressed, so the search re-ranks
    its candidates from the float16 vectors: recall@10 vs exact search >= 0.98."""
    assert choose_factory(1_000_000, DIM, 16).endswith(",SQ8")
    idx = SearchIndex.load(built("IVF64_HNSW32,SQ8"), nprobe=16)
    assert idx.compressed
    queries = clustered(80, seed=11)
    truth = exact_topk(BASE, IDS, queries, 10)
    assert recall(idx.search(queries, 10, rerank=True, rerank_factor=10)[1], truth) >= 0.98


def _vm_flags(path: Path) -> list[str]:
    """VmFlags of this process's mappings of ``path`` (``rr``: random-read advice)."""
    blocks = Path("/proc/self/smaps").read_text().split("\nVmFlags:")
    out = []
    for before, after in zip(blocks, blocks[1:], strict=False):
        header = next(line for line in before.splitlines() if "-" in line.split(" ")[0])
        if header.endswith(str(path.resolve())):
            out.append(after.splitlines()[0].strip())
    return out


def test_vectors_are_read_not_mapped_and_the_index_map_is_advised(built):
    """Re-ranking reads scattered rows: mapped, each fault mapped a whole 2 MiB page-cache folio
    and two queries pulled a 1M-row vectors.npy into RSS (issue 15). The vectors are read
    with preadv, never mapped; the mapped index gets MADV_RANDOM + MADV_NOHUGEPAGE."""
    vdir = built("IVF64_HNSW32,SQ8")
    idx = SearchIndex.load(vdir, nprobe=16, mmap_index=True)
    assert idx.search(BASE[:2], 3)[1][:, 0].tolist() == IDS[:2].tolist()  # re-ranked
    assert _vm_flags(vdir / "vectors.npy") == []
    flags = _vm_flags(vdir / "index.faiss")
    assert flags and all({"rr", "nh"} <= set(f.split()) for f in flags), flags
    assert advise_random(vdir / "ids.npy") == 0  # not mapped: nothing to advise
    # faiss reads the mapped lists through OnDiskInvertedLists, which would start 32 prefetch
    # threads on every search (1.96 vs 0.32 ms per query at 50 k): they are off
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(idx.index).invlists)
    assert type(lists).__name__ == "OnDiskInvertedLists" and lists.prefetch_nthread == 0
    assert not no_list_prefetch(faiss.IndexFlatIP(4))  # not IVF: nothing to turn off


def test_every_index_of_a_version_is_memory_mapped_like_the_image_index(built, tmp_path):
    """With ``index_mmap`` the API maps the caption, passage and panel indexes too, not only
    the image index: their codes (at 15 M most of a version's RAM) then sit once in the page
    cache the workers share instead of in each worker's own memory, and they answer alike."""
    import shutil

    from figsearch.caption_index import load_caption_index
    from figsearch.panel_index import load_panel_index, load_subcaptions

    src = built("IVF64_HNSW32,SQ8")
    version = tmp_path / "v1"
    for sub in ("captions", "captions/passages", "captions/panels", "panels"):
        shutil.copytree(src, version / sub)

    def lists(index: SearchIndex) -> str:
        ivf = faiss.extract_index_ivf(index.index)
        return type(faiss.downcast_InvertedLists(ivf.invlists)).__name__

    image = SearchIndex.load(src, nprobe=16, mmap_index=True)
    for mapped in (True, False):
        captions = load_caption_index(version, nprobe=16, mmap_index=mapped)
        panels = load_panel_index(image, version, nprobe=16, mmap_index=mapped)
        subcaptions = load_subcaptions(version, nprobe=16, mmap_index=mapped)
        loaded = [captions.whole, captions.parts, panels.parts, subcaptions]
        kinds = {lists(index) for index in loaded}
        assert kinds == ({"OnDiskInvertedLists"} if mapped else {"ArrayInvertedLists"})
        found = [index.search(BASE[:3], 5)[1] for index in loaded]
        assert all(np.array_equal(f, found[0]) for f in found)
        assert found[0][:, 0].tolist() == IDS[:3].tolist()


def test_row_file_reads_rows_like_numpy(tmp_path):
    arr = np.arange(40 * 6, dtype=np.float16).reshape(40, 6)
    np.save(tmp_path / "v.npy", arr)
    rows = RowFile(tmp_path / "v.npy")
    assert len(rows) == 40 and rows.shape == (40, 6)
    for key in (7, [3, 4, 5, 30, 2, 2], np.array([[1, 2], [39, 0]]), slice(5, 9), [],
                slice(0, 40), [39, 38, 37], [0, 1, 2, 10, 11, 39]):  # runs read in one call
        np.testing.assert_array_equal(rows[key], arr[key])
    with pytest.raises(IndexError, match="out of range"):
        rows[[0, 40]]
    (tmp_path / "short.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        RowFile(tmp_path / "short.npy")
    rows.close()
    with pytest.raises(ValueError, match="closed"):
        rows[[1]]
    cut = RowFile(tmp_path / "v.npy")  # the file shrinks under an open RowFile: a clear error
    os.truncate(tmp_path / "v.npy", cut.offset + 10 * cut.row_bytes)
    np.testing.assert_array_equal(cut[[0, 9]], arr[[0, 9]])
    with pytest.raises(ValueError, match="ended before"):
        cut[[5, 20]]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_exact_rows_score_like_numpy_without_a_float32_copy(dtype):
    """ExactRows scores stored rows (float16 as FAISS fp16 codes, float32 as a flat index)
    exactly: the same order and scores as numpy on the float32 values, padded past n."""
    from figsearch.index import ExactRows

    rows = clustered(300, seed=4).astype(dtype)
    queries = clustered(5, seed=6)
    scorer = ExactRows(rows)
    assert len(scorer) == 300 and scorer.nbytes == rows.nbytes
    scores, found = scorer.search(queries, 20)
    want = queries @ rows.astype(np.float32).T
    order = np.argsort(-want, axis=1)[:, :20]
    assert (found == order).all()
    np.testing.assert_allclose(scores, np.take_along_axis(want, order, 1), atol=1e-5)
    scores, found = ExactRows(rows[:3]).search(queries, 5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(found[0, :3].tolist()) == [0, 1, 2]
    empty = ExactRows(rows[:0])
    assert (empty.search(queries, 2)[1] == -1).all()
    np.testing.assert_allclose(scorer.scores(queries), want, atol=1e-5)  # every (query, row)
    assert empty.scores(queries).shape == (5, 0)


def test_reranked_and_exact_scores_are_the_stored_vectors_inner_products(built):
    """Re-ranking and ``exact_scores`` score candidates by FAISS from the float16 rows: the
    scores are the inner products of the stored vectors, one query alone ranks as in a batch."""
    idx = SearchIndex.load(built("IVF64,PQ8"), nprobe=64)
    queries = clustered(3, seed=11)
    scores, ids = idx.search(queries, 10, rerank=True, rerank_factor=10)
    for q, row_scores, row_ids in zip(queries, scores, ids, strict=True):
        np.testing.assert_allclose(row_scores, idx.vectors_for(row_ids) @ q, atol=1e-5)
        assert (np.diff(row_scores) <= 0).all()
    alone = idx.search(queries[:1], 10, rerank=True, rerank_factor=10)
    assert alone[1][0].tolist() == ids[0].tolist()
    got_ids, got = idx.exact_scores(queries[0], ids[0][::-1])
    assert got_ids.tolist() == ids[0][::-1].tolist()
    np.testing.assert_allclose(got, idx.vectors_for(got_ids) @ queries[0], atol=1e-5)



def test_rerank_improves_pq_recall(built):
    idx = SearchIndex.load(built("IVF64,PQ8"), nprobe=64)
    queries = clustered(80, seed=9)
    truth = exact_topk(BASE, IDS, queries, 10)
    plain = recall(idx.search(queries, 10, rerank=False)[1], truth)
    reranked = recall(idx.search(queries, 10, rerank=True, rerank_factor=10)[1], truth)
    assert reranked > plain + 0.05 and reranked >= 0.95


# -- filtering ----------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF64,PQ8", "OPQ8,IVF64_HNSW32,PQ8", "HNSW32"])
def test_filtered_search_returns_k_when_k_exist(built, factory, monkeypatch):
    import figsearch.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 0)  # force the FAISS selector path
    idx = SearchIndex.load(built(factory), nprobe=4)
    allowed = IDS[::50]  # 80 figures scattered over all clusters
    scores, got = idx.search(BASE[1:8], 20, allowed_ids=allowed)
    assert got.shape == (7, 20) and np.isin(got, allowed).all()
    assert (got[:, 0] == exact_topk(BASE[::50], allowed, BASE[1:8], 1)[:, 0]).mean() >= 0.8
    few = IDS[[5, 17, N - 1]]
    _, got_few = idx.search(BASE[:2], 10, allowed_ids=few)
    assert sorted(got_few[0][:3]) == sorted(few) and (got_few[:, 3:] == -1).all()


def test_small_allowed_sets_are_exact(tmp_path):
    base = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) + 100
    idx = SearchIndex.load(build_version(tmp_path, base, ids, model_spec="s", model_key="k",
                                         factory="IVF16,PQ4x4"))
    allowed = ids[::7]
    _, got = idx.search(base[:5], 10, allowed_ids=allowed)
    sub = np.isin(ids, allowed)
    assert (got == exact_topk(base[sub], ids[sub], base[:5], 10)).all()


def test_an_exact_subset_keeps_its_vectors_within_the_budget(built, monkeypatch):
    """A narrow filter repeats query after query; at 15 M figures reading its rows from the
    page cache costs 30-50 ms a query. Its rows' vectors are kept with the subset (so the next
    query reads no file: here the file is closed), within EXACT_VECTORS_BYTES an index: a
    second subset that does not fit beside the first lets the first's vectors go."""
    import figsearch.index as index_mod

    idx = SearchIndex.load(built("IVF64,PQ8"), nprobe=4)
    first, second = IDS[::97], IDS[5::89]  # 42 and 45 figures: exact plans
    monkeypatch.setattr(index_mod, "EXACT_VECTORS_BYTES", 50 * DIM * 2)  # one subset's rows
    want = idx.search(BASE[:3], 5, allowed_ids=first)
    idx.vectors.close()
    again = idx.search(BASE[:3], 5, allowed_ids=first)
    assert all(np.array_equal(a, b) for a, b in zip(want, again, strict=True))
    assert np.isin(again[1], first).all()
    with pytest.raises(ValueError, match="closed"):  # a new subset has to read the file
        idx.search(BASE[:3], 5, allowed_ids=second)
    reopened = SearchIndex.load(built("IVF64,PQ8"), nprobe=4)
    reopened.search(BASE[:1], 5, allowed_ids=first)
    reopened.search(BASE[:1], 5, allowed_ids=second)  # keeps these, lets first's go
    reopened.vectors.close()
    reopened.search(BASE[:1], 5, allowed_ids=second)
    with pytest.raises(ValueError, match="closed"):
        reopened.search(BASE[:1], 5, allowed_ids=first)


# -- loading, vectors, model checks -------------------------------------------------------------
def test_vectors_for_current_and_padding(tmp_path):
    base = clustered(50)
    ids = np.arange(50, dtype=np.int64)[::-1] * 2  # unsorted input
    vdir = build_version(tmp_path, base, ids, model_spec="s", model_key="k")
    assert current_version_dir(tmp_path) == vdir.resolve()
    idx = SearchIndex.load(vdir)
    np.testing.assert_allclose(idx.vectors_for([0, 98]), base[[49, 0]], atol=2e-3)
    with pytest.raises(KeyError, match="3"):
        idx.vectors_for([3])
    scores, got = idx.search(base[:1], 60)
    assert (got[0, 50:] == -1).all() and np.isneginf(scores[0, 50:]).all()


def test_check_model_refuses_other_model_and_dim(tmp_path):
    idx = SearchIndex.load(build_version(tmp_path, clustered(20), np.arange(20), model_spec="spec-a",
                                         model_key="key-a"))
    idx.check_model("key-a", DIM)
    with pytest.raises(IndexModelMismatch, match="key-a.*key-b"):
        idx.check_model("key-b", DIM)
    with pytest.raises(IndexModelMismatch, match="dim 64"):
        idx.check_model("key-a", 64)


def test_load_detects_truncated_files_and_missing_manifest(tmp_path):
    vdir = build_version(tmp_path, clustered(300), np.arange(300), model_spec="s", model_key="k")
    with open(vdir / "vectors.npy", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(IndexLoadError, match="vectors.npy"):
        SearchIndex.load(vdir)
    with pytest.raises(IndexLoadError, match="no manifest"):
        SearchIndex.load(tmp_path)
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["count"] == 300 and manifest["model_key"] == "k"


def test_as_float32_is_numpys_exact_conversion_on_both_paths():
    """The torch fast path (taken when torch is loaded, as in the API) and numpy's own give the
    same bits for every float16: normals, subnormals, signed zeros and infinities; NaN stays NaN
    (torch quiets signalling NaNs; the build refuses non-finite vectors anyway)."""
    import sys

    import torch  # noqa: F401 - loaded, as in the API: the fast path runs

    from figsearch.index import as_float32

    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(-1, 64)
    expected = every.astype(np.float32)
    assert "torch" in sys.modules
    finite = ~np.isnan(expected)
    fast = as_float32(every.copy())
    assert fast.dtype == np.float32 and fast.shape == every.shape
    assert np.array_equal(fast[finite].view(np.uint32), expected[finite].view(np.uint32))
    assert np.isnan(fast[~finite]).all()
    frozen = every.copy()
    frozen.flags.writeable = False  # torch cannot wrap it: numpy's path
    assert np.array_equal(as_float32(frozen).view(np.uint32), expected.view(np.uint32))
    assert as_float32(expected) is not None and as_float32(expected).dtype == np.float32
