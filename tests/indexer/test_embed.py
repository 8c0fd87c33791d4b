"""indexer.embed + indexer.worklist: work list, reader, mapper, writer, resume, reuse of the
previous version's vectors, LOCAL_RANK devices, and two gloo ranks merged bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from figsearch.core.config import Settings
from figsearch.imaging import open_image
from figsearch.index import current_version_dir, read_manifest
from figsearch.netutil import free_port
from figsearch.store import FigureStore
from indexer.embed import (
    DistInfo,
    EmbedConfig,
    FigureImageDataset,
    ShardWriter,
    decode_batches,
    embed_rank,
    encode_batch,
    merge_embeddings,
    merge_shards,
    rank_device,
)
from indexer.indexing import build_from_store, index_all, work_dir_for
from indexer.worklist import load_worklist, write_worklist
from tests.indexer.test_index import REPO_ROOT

#: what a version holds per row; two runs over the same store must agree on all of it
VERSION_FILES = ("ids.npy", "vectors.npy", "sha256.npy", "figure_types.npy",
                 "figure_type_scores.npy", "index.faiss")


def manifest_subset(shared_data: Path, dest: Path, start: int, stop: int) -> Path:
    """A JSONL manifest of shared real figures [start, stop), images copied beside it
    (manifests may only reach images in their own folder)."""
    lines = (shared_data / "pmc-figures/figures.jsonl").read_text().splitlines()[start:stop]
    rows = [json.loads(line) for line in lines]
    for row in rows:
        target = dest.parent / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "pmc-figures" / row["image"], target)
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def ingested_settings(shared_data: Path, tmp_path: Path, stop: int = 12) -> Settings:
    """Settings of a data dir holding real figures ingested from the shared manifest."""
    from indexer.ingest import ingest_paths

    settings = Settings(data_dir=tmp_path / "data", num_workers=0, batch_size=4)
    ingest_paths([manifest_subset(shared_data, tmp_path / "m.jsonl", 0, stop)], settings, workers=1)
    return settings


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from figsearch.encoders import load_model

    return load_model(str(tiny_model_dir), device="cpu", batch_size=4)


@pytest.fixture()
def data(shared_data, tmp_path):
    settings = ingested_settings(shared_data, tmp_path)
    store = FigureStore(settings.db_path)
    yield settings, store
    store.close()


def _cfg(settings: Settings, **kw) -> EmbedConfig:
    return EmbedConfig(work_dir=settings.data_dir / "work", images_dir=settings.images_dir,
                       batch_size=4, num_workers=0, progress=False, **kw)


def _worklist(settings: Settings, store: FigureStore, model_key: str = "m", previous=None):
    return write_worklist(store, settings.data_dir / "work", model_key, previous, block=4)


def _version_bytes(settings: Settings) -> dict[str, bytes]:
    version = current_version_dir(settings.indexes_dir)
    assert version is not None
    return {name: (version / name).read_bytes() for name in VERSION_FILES}


def test_worklist_deals_whole_blocks_to_ranks(data):
    settings, store = data
    wl = _worklist(settings, store)
    assert len(wl.ids) == 12 and wl.ids.tolist() == sorted(wl.ids.tolist()) and not len(wl.reuse_ids)
    assert wl.sha.shape == (12, 32) and wl.sha.any(axis=1).all()
    r0, r1 = list(wl.blocks_for(0, 2)), list(wl.blocks_for(1, 2))
    assert r0 == [(0, 4), (8, 12)] and r1 == [(4, 8)]  # block j goes to rank j % world
    assert load_worklist(settings.data_dir / "work").digest == wl.digest
    # a rerun over the same store keeps the list (and the shards); a changed store replaces it
    (settings.data_dir / "work" / "shard-r000-000000.done.json").write_text("{}")
    assert _worklist(settings, store).digest == wl.digest
    assert (settings.data_dir / "work" / "shard-r000-000000.done.json").exists()
    assert _worklist(settings, store, model_key="other").digest != wl.digest
    assert not (settings.data_dir / "work" / "shard-r000-000000.done.json").exists()


def test_decoder_workers_skip_unreadable_images_with_reasons(data, encoder):
    settings, store = data
    rows = _worklist(settings, store).rows(0, 3)
    (settings.images_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows += [(901, "broken.jpg", None), (902, "missing/none.jpg", None), (903, "../../etc/passwd", None)]
    item = FigureImageDataset(rows, settings.images_dir, encoder.preprocess, 10**8)[0]
    assert item[0] == rows[0][0] and tuple(item[1].shape) == (3, 32, 32)
    batches = list(decode_batches(rows, settings.images_dir, encoder.preprocess, batch_size=4,
                                  num_workers=1, max_pixels=10**8))  # a real worker process
    ids = [i for b in batches for i in b[0]]
    failures = dict(f for b in batches for f in b[2])
    assert ids == [r[0] for r in rows[:3]]
    assert set(failures) == {901, 902, 903}
    assert "escapes" in failures[903] and "No such file" in failures[902]
    vectors = encode_batch(encoder, batches[0][1])
    assert vectors.dtype == np.float16 and vectors.shape == (3, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-2)


def test_writer_marks_shards_done_and_merge_needs_every_rank(tmp_path):
    writer = ShardWriter(tmp_path, rank=0)
    writer.write(0, [5, 3], np.array([5, 3]), np.ones((2, 4)), [])
    writer.write(1, [9, 8], np.array([9]), np.zeros((1, 4)), [(8, "bad image")])
    writer.write_plan([writer.name(0), writer.name(1)], "wl-a", world=2)
    assert writer.is_done(0, [5, 3]) and not writer.is_done(0, [5, 4]) and not writer.is_done(2, [])
    with pytest.raises(RuntimeError, match=r"ranks \[1\] of 2 left no shard plan"):
        merge_shards(tmp_path, "wl-a")
    other = ShardWriter(tmp_path, rank=1)
    other.write(0, [4], np.array([4]), np.full((1, 4), 2), [])
    other.write_plan([other.name(0)], "wl-a", world=2)
    ShardWriter(tmp_path, rank=2).write_plan([], "wl-old", world=3)  # stale plans are ignored:
    ShardWriter(tmp_path, rank=3).write_plan(["gone"], "wl-a", world=4)  # other list / world
    ids, vectors, failures = merge_shards(tmp_path, "wl-a")
    assert ids.tolist() == [3, 4, 5, 9] and vectors.dtype == np.float16
    assert vectors[:, 0].tolist() == [1, 2, 1, 0] and failures == [(8, "bad image")]
    assert not list(tmp_path.glob("*.tmp"))


def test_embedding_resumes_finished_shards(data, encoder):
    settings, store = data
    cfg = _cfg(settings, shard_size=4)
    wl = _worklist(settings, store, encoder.model_key)
    first = embed_rank(wl, encoder, cfg, DistInfo())
    assert (first.figures, first.encoded, first.shards_done) == (12, 12, 3)
    # a crash after shard 0 and 2 were written: shard 1 lost its marker
    (cfg.work_dir / "shard-r000-000001.done.json").unlink()
    resumed = embed_rank(wl, encoder, cfg, DistInfo())
    assert (resumed.shards_skipped, resumed.shards_done, resumed.encoded) == (2, 1, 4)
    merged = merge_embeddings(wl, cfg.work_dir)
    assert merged.ids.tolist() == wl.ids.tolist() and merged.summary.encoded == 12
    assert (merged.sha == wl.sha).all()
    row = wl.rows(4, 5)[0]
    image = open_image((settings.images_dir / str(row[1])).read_bytes())
    np.testing.assert_allclose(merged.vectors[4].astype(np.float32),
                               encoder.encode_images([image])[0], atol=2e-3)


def test_unchanged_images_reuse_the_previous_versions_vectors(data, encoder):
    settings, store = data
    first = build_from_store(settings, store, "tiny", encoder)
    version = first.version_dir
    assert read_manifest(version)["encoded"] == 12
    assert not work_dir_for(settings, encoder.model_key).exists()  # removed once live
    assert "embeddings" not in {r[0] for r in store.engine.connect().execute(
        text("SELECT name FROM sqlite_master WHERE type = 'table'"))}  # no cache in the store
    changed = int(np.load(version / "ids.npy")[3])
    with store.engine.begin() as conn:  # the image of one figure was replaced
        conn.execute(text("UPDATE figures SET sha256 = :s WHERE id = :i"), {"s": "ab" * 32, "i": changed})
    wl = write_worklist(store, work_dir_for(settings, encoder.model_key), encoder.model_key,
                        version, settings.batch_size)
    assert wl.ids.tolist() == [changed] and len(wl.reuse_ids) == 11
    assert not len(write_worklist(store, settings.data_dir / "w2", "another-model", version, 4).reuse_ids)
    second = build_from_store(settings, store, "tiny", encoder)
    manifest = read_manifest(second.version_dir)
    assert (manifest["reused"], manifest["encoded"]) == (11, 1)
    old, new = np.load(version / "vectors.npy"), np.load(second.version_dir / "vectors.npy")
    same = np.load(version / "ids.npy") != changed
    assert np.array_equal(new[same], old[same])  # the previous version's bits, unchanged
    assert bytes(np.load(second.version_dir / "sha256.npy")[3]) == bytes.fromhex("ab" * 32)


def test_unreadable_images_are_recorded_by_the_merge_only(data, encoder):
    settings, store = data
    wl = _worklist(settings, store, encoder.model_key)
    broken_id, broken_path = wl.rows(5, 6)[0][:2]
    (settings.images_dir / str(broken_path)).write_bytes(b"not an image")
    embed_rank(wl, encoder, _cfg(settings), DistInfo())
    assert store.errors() == []  # ranks write shards, never the store
    report = build_from_store(settings, store, "tiny", encoder)
    assert (report.count, report.unreadable) == (11, 1)
    errors = store.errors()
    assert [(e["source"], e["item"], e["stage"]) for e in errors] == [
        (broken_path, f"figure {broken_id}", "embed")]


def test_each_rank_takes_its_device_from_local_rank(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist = DistInfo.from_env()
    assert (dist.rank, dist.world, dist.local_rank) == (5, 8, 1)
    assert rank_device("cuda", dist) == "cuda:1" and rank_device("cuda:3", dist) == "cuda:3"
    assert rank_device("cpu", dist) == "cpu"


def test_separate_steps_need_the_store_only_to_prepare_and_merge(shared_data, tmp_path, encoder,
                                                                  tiny_model_dir, monkeypatch):
    """--prepare -> two ranks with --embed-only and no store -> --merge == one plain run."""
    from figsearch.cli import main

    settings = ingested_settings(shared_data, tmp_path)
    alone = tmp_path / "alone"
    shutil.copytree(settings.data_dir, alone)
    index_all(Settings(data_dir=alone, num_workers=0, batch_size=4), encoder=encoder,
              progress=False)
    monkeypatch.setenv("FIGSEARCH_BATCH_SIZE", "4")
    monkeypatch.setenv("FIGSEARCH_NUM_WORKERS", "0")
    cli = ["index", "--model", str(tiny_model_dir), "--data-dir", str(settings.data_dir),
           "--no-progress"]
    assert main([*cli, "--prepare"]) == 0
    hidden = settings.db_path.rename(tmp_path / "elsewhere.db")  # ranks never open the store
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([*cli, "--embed-only"]) == 0
    hidden.rename(settings.db_path)
    monkeypatch.setenv("RANK", "0")
    assert main([*cli, "--merge"]) == 0
    assert _version_bytes(settings) == _version_bytes(Settings(data_dir=alone))
    assert main([*cli, "--merge"]) == 1  # the work list went with the merge: a clear refusal


@pytest.mark.slow
def test_two_gloo_ranks_merge_bit_for_bit_like_one_process(shared_data, tmp_path, tiny_model_dir):
    """`figsearch index` on two gloo ranks laid out like two nodes: rank 1's data dir holds no
    store, only the shared images and work dir (symlinks) — and the version equals one process's."""
    settings = ingested_settings(shared_data, tmp_path, stop=20)
    alone = tmp_path / "alone"
    shutil.copytree(settings.data_dir, alone)
    from figsearch.encoders import load_model

    single = load_model(str(tiny_model_dir), device="cpu", batch_size=4)
    index_all(Settings(data_dir=alone, num_workers=0, batch_size=4), encoder=single,
              progress=False)
    node2 = tmp_path / "node2"
    node2.mkdir()
    (settings.data_dir / "work").mkdir()
    for shared in ("images", "work"):
        (node2 / shared).symlink_to(settings.data_dir / shared)
    port = free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "FIGSEARCH_BATCH_SIZE": "4", "FIGSEARCH_NUM_WORKERS": "0"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "figsearch.cli", "index", "--model",
                          str(tiny_model_dir), "--data-dir", str(data_dir), "--no-progress"],
                         cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**env, "RANK": str(r), "LOCAL_RANK": "0"})
        for r, data_dir in enumerate((settings.data_dir, node2))
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert "20 figures indexed" in outs[0][0] and outs[1][0] == ""
    assert "embed: 20 figures (0 reused, 20 encoded, 0 unreadable)" in outs[0][1]
    assert not (node2 / "figsearch.db").exists() and not (node2 / "indexes").exists()
    assert _version_bytes(settings) == _version_bytes(Settings(data_dir=alone))
