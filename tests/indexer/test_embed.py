"""indexer.embed: reader, mapper and writer stages alone, resume, cache, torchrun ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from figsearch.core.config import Settings
from figsearch.imaging import open_image
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
    merge_shards,
    read_figure_rows,
    run_embedding,
)
from tests.indexer.test_index import REPO_ROOT


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


def test_reader_slices_ranks_without_overlap(data):
    _, store = data
    everything = [r[0] for r in read_figure_rows(store)]
    r0 = [r[0] for r in read_figure_rows(store, DistInfo(0, 2))]
    r1 = [r[0] for r in read_figure_rows(store, DistInfo(1, 2))]
    assert len(everything) == 12 and sorted(r0 + r1) == everything and not set(r0) & set(r1)


def test_decoder_workers_skip_unreadable_images_with_reasons(data, encoder):
    settings, store = data
    rows = list(read_figure_rows(store))[:3]
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


def test_writer_marks_shards_done_and_merges_sorted(tmp_path):
    writer = ShardWriter(tmp_path, rank=0)
    writer.write(0, [5, 3], np.array([5, 3]), np.ones((2, 4)), [])
    writer.write(1, [9, 8], np.array([9]), np.zeros((1, 4)), [(8, "bad image")])
    writer.write_plan([writer.name(0), writer.name(1)])
    assert writer.is_done(0, [5, 3]) and not writer.is_done(0, [5, 4]) and not writer.is_done(2, [])
    ids, vectors, failures = merge_shards(tmp_path)
    assert ids.tolist() == [3, 5, 9] and vectors.dtype == np.float16
    assert vectors[:, 0].tolist() == [1, 1, 0] and failures == [(8, "bad image")]
    assert not list(tmp_path.glob("*.tmp"))


def test_embedding_resumes_finished_shards_and_reuses_the_cache(data, encoder):
    settings, store = data
    cfg = _cfg(settings, shard_size=5)
    first = embed_rank(store, encoder, cfg, DistInfo())
    assert (first.figures, first.encoded, first.shards_done) == (12, 12, 3)
    # a crash after shard 0 and 2 were written: shard 1 lost its marker
    (cfg.work_dir / "shard-r000-000001.done.json").unlink()
    resumed = embed_rank(store, encoder, cfg, DistInfo())
    assert (resumed.shards_skipped, resumed.shards_done, resumed.encoded) == (2, 1, 0)
    assert resumed.cached == 5  # shard 1 came from the store's embedding cache
    shutil.rmtree(cfg.work_dir)
    again = embed_rank(store, encoder, cfg, DistInfo())
    assert (again.cached, again.encoded) == (12, 0)
    ids, vectors, _ = merge_shards(cfg.work_dir)
    row = next(r for r in read_figure_rows(store) if r[0] == ids[4])
    image = open_image((settings.images_dir / row[1]).read_bytes())
    np.testing.assert_allclose(vectors[4].astype(np.float32), encoder.encode_images([image])[0],
                               atol=2e-3)
    assert "12 figures (12 cached, 0 encoded, 0 unreadable)" in again.line()


@pytest.mark.slow
def test_two_torchrun_ranks_split_the_work_and_rank0_merges(data, tiny_model_dir):
    settings, store = data
    script = textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from figsearch.encoders import load_model
        from figsearch.store import FigureStore
        from indexer.embed import EmbedConfig, run_embedding
        store = FigureStore({str(settings.db_path)!r})
        enc = load_model({str(tiny_model_dir)!r}, device="cpu")
        cfg = EmbedConfig(work_dir=Path({str(settings.data_dir / "work")!r}),
                          images_dir=Path({str(settings.images_dir)!r}), num_workers=0,
                          progress=False)
        out = run_embedding(store, enc, cfg)
        print("RESULT", "none" if out is None else ",".join(map(str, out.ids.tolist())))
    """)
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("RESULT")]
    everything = [r[0] for r in read_figure_rows(store)]
    assert results[1] == "none" and results[0] == ",".join(map(str, everything))
    assert {p.name for p in (settings.data_dir / "work").glob("plan-*.json")} == {
        "plan-r000.json", "plan-r001.json"}


def test_run_embedding_single_process(data, encoder):
    settings, store = data
    assert not torch.distributed.is_initialized()
    out = run_embedding(store, encoder, _cfg(settings), DistInfo())
    assert out is not None and len(out.ids) == 12 and out.vectors.shape == (12, encoder.dim)
