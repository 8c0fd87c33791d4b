"""indexer.build: atomic versions, kill safety, the build lock, pruning (GPU-path training: test_gpu_training.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import faiss
import numpy as np
import pytest

from figsearch.index import SearchIndex, current_version_dir
from indexer.build import BuildLockedError, build_version, list_versions
from tests.indexer.test_index import REPO_ROOT, clustered

faiss.omp_set_num_threads(1)


def _build(root, n=300, seed=0, **kw):
    return build_version(root, clustered(n, seed=seed), np.arange(n) + 1000 * seed,
                         model_spec="s", model_key="k", **kw)


def _run_build_in_subprocess(root, kill_at: str) -> subprocess.CompletedProcess:
    """A real build in another process that SIGKILLs itself at ``kill_at``."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        from indexer.build import build_version
        from tests.indexer.test_index import clustered
        def hook(stage):
            if stage == {kill_at!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        build_version({str(root)!r}, clustered(500, seed=3), np.arange(500), model_spec="s",
                      model_key="k", factory="IVF8,Flat", hook=hook)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("kill_at", ["trained", "written", "renamed"])
def test_killed_build_leaves_current_and_rerun_completes(tmp_path, kill_at):
    old = _build(tmp_path)
    proc = _run_build_in_subprocess(tmp_path, kill_at)
    assert proc.returncode == -9, proc.stderr
    assert current_version_dir(tmp_path) == old.resolve()
    assert SearchIndex.load(current_version_dir(tmp_path), full_hash=True).ntotal == 300
    new = _build(tmp_path, n=400, seed=1)
    assert current_version_dir(tmp_path) == new.resolve()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".building-", ".current-"))]
    assert SearchIndex.load(new).ntotal == 400


def test_exception_mid_build_keeps_current(tmp_path):
    old = _build(tmp_path)

    def boom(stage):
        if stage == "written":
            raise RuntimeError("disk full (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        _build(tmp_path, n=200, seed=2, hook=boom)
    assert current_version_dir(tmp_path) == old.resolve()
    assert list_versions(tmp_path) == [old]


def test_lock_refuses_a_concurrent_build(tmp_path):
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from indexer.build import index_lock
        with index_lock(pathlib.Path({str(tmp_path)!r})):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
    """)], cwd=REPO_ROOT)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(BuildLockedError, match="another index build is running") as err:
            _build(tmp_path)
        assert f"pid {holder.pid} since" in str(err.value)  # it names the holder
        assert current_version_dir(tmp_path) is None
    finally:
        holder.kill()
        holder.wait()
    _build(tmp_path)  # the lock dies with its holder
    assert current_version_dir(tmp_path) is not None


def test_keeps_last_k_versions_besides_current(tmp_path):
    built = [_build(tmp_path, n=60, seed=s, keep=2) for s in range(5)]
    assert list_versions(tmp_path) == built[-3:]
    assert current_version_dir(tmp_path) == built[-1].resolve()


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="duplicate figure ids"):
        build_version(tmp_path, clustered(3), np.array([1, 1, 2]), model_spec="s", model_key="k")
    with pytest.raises(ValueError, match="do not match"):
        build_version(tmp_path, clustered(3), np.array([1, 2]), model_spec="s", model_key="k")
    assert current_version_dir(tmp_path) is None


def test_manifest_records_each_build_stage(tmp_path):
    """train / add / write seconds (bench/index_build.py reads them) add up to the total."""
    vdir = build_version(tmp_path, clustered(3000), np.arange(3000), model_spec="s",
                         model_key="k", factory="IVF16,SQ8")
    manifest = json.loads((vdir / "manifest.json").read_text())
    stages = manifest["build_stages_s"]
    assert set(stages) == {"train", "add", "write", "total"}
    assert all(v >= 0 for v in stages.values()) and stages["train"] > 0
    assert abs(stages["train"] + stages["add"] + stages["write"] - stages["total"]) < 0.01
    assert manifest["build_seconds"] == stages["total"]


def _polysemous_training(index: faiss.Index) -> bool:
    return bool(faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training)


@pytest.mark.parametrize("factory", ["IVF16,PQ2", "OPQ2,IVF16_HNSW32,PQ2"])
def test_pq_indexes_skip_polysemous_training_and_search_alike(factory):
    """The builder's PQ codecs train without faiss's polysemous step (about a second per
    sub-quantizer, used only by Hamming-filtered search, which we never run), on either
    training path, and answer every query with the same ids and scores as the factory's
    default, which runs it: the step only renumbers each sub-quantizer's centroids."""
    from indexer.build import normalise, train_index

    base = clustered(2000, dim=16, seed=3)
    ours = train_index(factory, base, size=len(base))
    assert not _polysemous_training(ours)
    assert not _polysemous_training(train_index(factory, base, device="cpu", size=len(base)))

    default = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    assert _polysemous_training(default)
    default.train(normalise(base))
    queries = clustered(30, dim=16, seed=4)
    for index in (ours, default):
        index.add(normalise(base))
        faiss.extract_index_ivf(index).nprobe = 4
    (d_ours, i_ours), (d_default, i_default) = ours.search(queries, 10), default.search(queries, 10)
    assert (i_ours == i_default).all()
    np.testing.assert_allclose(d_ours, d_default, rtol=0, atol=1e-6)


@pytest.mark.parametrize("offset", [0, 2**31])
def test_a_loaded_index_holds_its_ids_in_int32_when_they_fit(tmp_path, offset):
    """Each worker holds every index's row -> id map: int32 halves it (0.3 GB at 15 M with
    passages); ids past int32 stay int64, and both search to the same figure ids."""
    vectors = clustered(300, seed=0)
    ids = np.arange(300, dtype=np.int64) * 7 + offset
    version = build_version(tmp_path, vectors, ids, model_spec="s", model_key="k")
    index = SearchIndex.load(version)
    assert index.ids.dtype == (np.int32 if offset == 0 else np.int64)
    scores, got = index.search(vectors[[5, 250]], 3)
    assert got.dtype == np.int64 and got[:, 0].tolist() == [ids[5], ids[250]]
    assert index.contains(int(ids[9])) and not index.contains(int(ids[9]) + 1)
    assert np.allclose(index.vectors_for([ids[250]]), vectors[[250]], atol=1e-2)
