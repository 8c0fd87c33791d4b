"""indexer.delta: a nightly delta applied to a version's trained FAISS indexes (no re-training)
gives what a full rebuild gives, never touches the previous version, and survives crashes.

Real FAISS indexes on disk, a real SQLite store and the tiny random CLIP model; no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from figsearch.index import SearchIndex, current_version_dir, read_manifest
from indexer import delta as delta_mod
from indexer.build import BUILDING_PREFIX, build_version, list_versions
from indexer.delta import (
    DeltaNotApplicable,
    IndexDelta,
    VersionContext,
    apply_index_delta,
    build_delta_version,
    delta_allowed,
    family,
    register_version_writer,
    unregister_version_writer,
)
from tests.indexer.test_index import clustered, exact_topk, recall

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM = 32
N = 3000
faiss.omp_set_num_threads(1)  # OpenMP spin-waits badly on the shared 2-core CI machine


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the previous version must stay byte-identical)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Data:
    """A base set of ids/vectors/row values and a delta: removed, changed and new ids."""

    def __init__(self, n: int = N, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64) + 1
        self.vectors = clustered(n, DIM, seed=seed)
        self.tags = rng.integers(0, 255, (n, 4)).astype(np.uint8)  # a row file
        self.removed = rng.choice(self.ids, 40, replace=False)
        rest = np.setdiff1d(self.ids, self.removed)
        self.changed = rng.choice(rest, 30, replace=False)
        new = np.setdiff1d(np.arange(1, 12 * n), self.ids)
        self.new = rng.choice(new, 150, replace=False)  # spread through the id range
        self.new = np.union1d(self.new, [12 * n + 5, 12 * n + 9])  # and after it
        upsert = np.union1d(self.changed, self.new)
        self.up_vectors = clustered(len(upsert), DIM, seed=seed + 1)
        self.up_tags = rng.integers(0, 255, (len(upsert), 4)).astype(np.uint8)
        self.upsert = upsert

    def after(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, vectors, tags) a full rebuild would get."""
        keep = ~np.isin(self.ids, np.union1d(self.removed, self.changed))
        ids = np.concatenate([self.ids[keep], self.upsert])
        vectors = np.concatenate([self.vectors[keep], self.up_vectors])
        tags = np.concatenate([self.tags[keep], self.up_tags])
        order = np.argsort(ids)
        return ids[order], vectors[order], tags[order]

    def delta(self) -> IndexDelta:
        # a changed row is removed and added again
        return IndexDelta(np.union1d(self.removed, self.changed), self.upsert, self.up_vectors,
                          {"tags.npy": self.up_tags})


def _build(indexes: Path, vectors, ids, tags, factory: str, activate: bool = True) -> Path:
    return build_version(indexes, vectors, ids, model_spec="m", model_key="k", factory=factory,
                         row_files={"tags.npy": tags}, activate=activate, use_gpu=False,
                         train_size=1300 if factory.startswith("OPQ") else None)  # OPQ: slow


# 4-bit PQ codes: 8-bit codebooks take a minute to train on the shared 2-core machine
FAMILIES = ["Flat", "IVF32,Flat", "IVF32_HNSW32,SQ8", "IVF32,PQ8x4", "OPQ8,IVF32_HNSW32,PQ8x4",
            "HNSW32"]


@pytest.mark.parametrize("factory", FAMILIES)
def test_delta_equals_full_rebuild_and_leaves_the_previous_version_alone(tmp_path, factory):
    d = Data()
    indexes = tmp_path / "indexes"
    prev = _build(indexes, d.vectors, d.ids, d.tags, factory)
    before = tree_digest(prev)
    prev_manifest = read_manifest(prev)

    new = build_delta_version(indexes, prev, d.delta())
    assert current_version_dir(indexes) == new.resolve()
    assert tree_digest(prev) == before  # nothing of the previous version was rewritten
    a_ids, a_vectors, a_tags = d.after()
    full = _build(tmp_path / "full", a_vectors, a_ids, a_tags, factory, activate=False)

    got, want = SearchIndex.load(new, full_hash=True), SearchIndex.load(full)
    assert got.factory == factory and got.ntotal == want.ntotal == len(d.after()[0])
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.vectors[:], want.vectors[:])  # rows in the same order
    np.testing.assert_array_equal(np.load(new / "tags.npy"), np.load(full / "tags.npy"))
    # the row files are written in file order and hashed as written: the same bytes as a full
    # build's, and checksums that the full-hash load above has verified
    for name in ("vectors.npy", "tags.npy"):
        assert (new / name).read_bytes() == (full / name).read_bytes(), name
    manifest = read_manifest(new)
    assert manifest["delta"]["previous_version"] == prev.name
    assert manifest["delta"]["trained_version"] == prev.name
    assert manifest["delta"]["removed"] == 70 and manifest["delta"]["added"] == len(d.upsert)
    assert manifest["training_size"] == prev_manifest["training_size"]  # nothing re-trained

    ids, vectors, _ = d.after()
    queries = clustered(60, DIM, seed=9)
    _s, got_ids = got.search(queries, 10)
    _s, want_ids = want.search(queries, 10)
    truth = exact_topk(vectors, ids, queries, 10)
    if factory in ("Flat", "HNSW32"):  # exact / rebuilt from the same vectors: identical
        np.testing.assert_array_equal(got_ids, want_ids)
    else:  # kept centroids and codebooks: as good as a fresh training against exact search
        floor = 0.8 if "x4" in factory else 0.9
        assert recall(got_ids, truth) >= max(floor, recall(want_ids, truth) - 0.05)
    # every figure finds itself top-1, the changed ones by their *new* vector
    # (4-bit PQ codes are too coarse for that: as often as after a full rebuild)
    sample = np.union1d(d.upsert[::3], ids[::50])
    hits = [(index.search(index.vectors_for(sample), 1)[1][:, 0] == sample).mean()
            for index in (got, want)]
    assert hits[0] >= (hits[1] - 0.1 if "x4" in factory else 0.98)
    # removed figures never come back, whatever is asked
    _s, found = got.search(d.vectors[np.isin(d.ids, d.removed)], 50)
    assert not np.isin(found, d.removed).any()
    assert not got.rows_for(d.removed)[1].any()


def test_deltas_chain_and_count_changes_since_training(tmp_path):
    d = Data(seed=3)
    indexes = tmp_path / "indexes"
    prev = _build(indexes, d.vectors, d.ids, d.tags, "IVF32,Flat")
    one = build_delta_version(indexes, prev, d.delta())
    # the second night removes some of the first night's new figures
    gone = d.new[:10]
    two = build_delta_version(indexes, one, IndexDelta(gone, np.zeros(0, np.int64),
                                                       np.zeros((0, DIM)),
                                                       {"tags.npy": np.zeros((0, 4), np.uint8)}))
    idx = SearchIndex.load(two, full_hash=True)
    assert not idx.rows_for(gone)[1].any() and idx.ntotal == len(d.after()[0]) - 10
    history = read_manifest(two)["delta"]
    assert history["trained_version"] == prev.name
    assert history["changed_since_training"] == d.delta().size + 10
    # the rule: same model, same family, under 20 % since training
    m = read_manifest(two)
    assert delta_allowed(m, 10, model_key="k", dim=DIM, factory="IVF64,Flat") is None
    assert "another model" in str(delta_allowed(m, 10, model_key="x", dim=DIM,
                                                 factory="IVF32,Flat"))
    assert "family" in str(delta_allowed(m, 10, model_key="k", dim=DIM, factory="IVF32,SQ8"))
    assert "since the index was trained" in str(
        delta_allowed(m, N // 5, model_key="k", dim=DIM, factory="IVF32,Flat"))
    assert family("OPQ64,IVF65536_HNSW32,PQ64") == family("OPQ32,IVF4096_HNSW32,PQ32")
    # a version from before the float16 centroids still takes the rule's deltas
    assert family("OPQ32,IVF65536_HNSW32,PQ32") == family("OPQ16,IVF65536(HNSW32_SQfp16),PQ16")
    assert family("IVF4096(HNSW32_SQfp16),SQ8") != family("IVF4096,SQ8")


def test_a_delta_missing_a_row_file_is_refused(tmp_path):
    d = Data(n=500)
    prev = _build(tmp_path / "indexes", d.vectors, d.ids, d.tags, "Flat")
    bad = IndexDelta(d.removed, d.upsert, d.up_vectors, {})
    (tmp_path / "new").mkdir()
    with pytest.raises(DeltaNotApplicable, match="row files"):
        apply_index_delta(prev, tmp_path / "new", bad)


def test_registered_writers_get_the_previous_dir_and_the_change(tmp_path):
    d = Data(n=500)
    indexes = tmp_path / "indexes"
    prev = _build(indexes, d.vectors, d.ids, d.tags, "Flat")
    (prev / "kw").mkdir()  # stands for a keyword index the writer updates
    seen: list[VersionContext] = []

    def writer(ctx: VersionContext) -> dict:
        seen.append(ctx)
        (ctx.version_dir / "kw").mkdir()
        (ctx.version_dir / "kw" / "n").write_text(str(len(ctx.upserted_ids)))
        return {"upserted": len(ctx.upserted_ids)}

    from indexer.delta import run_version_writers

    register_version_writer("keyword_test", writer)
    try:
        def add_files(tmp: Path) -> dict:
            return run_version_writers(VersionContext(prev, tmp, None, d.removed, d.upsert))

        new = build_delta_version(indexes, prev, d.delta(), add_files=add_files)
    finally:
        unregister_version_writer("keyword_test")
    assert seen[0].previous_dir == prev and seen[0].version_dir.name.startswith(BUILDING_PREFIX)
    assert read_manifest(new)["keyword_test"] == {"upserted": len(d.upsert)}
    assert (new / "kw" / "n").read_text() == str(len(d.upsert))


# -- crashes --------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["applied", "written", "renamed"])
def test_a_failure_at_any_stage_leaves_current_and_a_rerun_succeeds(tmp_path, stage):
    d = Data(n=800)
    indexes = tmp_path / "indexes"
    prev = _build(indexes, d.vectors, d.ids, d.tags, "IVF16,Flat")
    before = tree_digest(prev)

    def fail(at: str) -> None:
        if at == stage:
            raise RuntimeError(f"injected at {at}")

    with pytest.raises(RuntimeError, match="injected"):
        build_delta_version(indexes, prev, d.delta(), hook=fail)
    assert current_version_dir(indexes) == prev.resolve() and tree_digest(prev) == before
    assert SearchIndex.load(current_version_dir(indexes)).search(d.vectors[:2], 1)[1][0, 0] \
        == d.ids[0]
    new = build_delta_version(indexes, prev, d.delta())  # the rerun redoes the delta
    assert current_version_dir(indexes) == new.resolve()
    assert not [p for p in indexes.iterdir() if p.name.startswith(BUILDING_PREFIX)]
    assert SearchIndex.load(new, full_hash=True).ntotal == len(d.after()[0])


KILL_SCRIPT = """
import sys, numpy as np
from figsearch.faults import build_hook
from indexer.delta import IndexDelta, build_delta_version
from pathlib import Path
z = np.load(sys.argv[2])
build_delta_version(Path(sys.argv[1]), Path(sys.argv[3]),
                    IndexDelta(z["remove"], z["add"], z["vec"], {"tags.npy": z["tags"]}),
                    hook=build_hook)
"""


@pytest.mark.parametrize("stage", ["build-applied", "build-renamed"])
def test_sigkill_during_the_delta_leaves_current_searchable(tmp_path, stage):
    d = Data(n=800)
    indexes = tmp_path / "indexes"
    prev = _build(indexes, d.vectors, d.ids, d.tags, "IVF16,Flat")
    before = tree_digest(prev)
    delta = d.delta()
    np.savez(tmp_path / "delta.npz", remove=delta.remove_ids, add=delta.add_ids,
             vec=delta.add_vectors, tags=delta.add_rows["tags.npy"])
    env = {**os.environ, "FIGSEARCH_FAULT_AT": stage, "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(indexes),
                           str(tmp_path / "delta.npz"), str(prev)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL: no cleanup ran
    assert current_version_dir(indexes) == prev.resolve() and tree_digest(prev) == before
    assert SearchIndex.load(indexes / "current", full_hash=True).ntotal == 800
    new = build_delta_version(indexes, prev, d.delta())
    assert current_version_dir(indexes) == new.resolve()
    leftovers = [p.name for p in indexes.iterdir() if p.name.startswith(BUILDING_PREFIX)]
    assert not leftovers
    assert len(list_versions(indexes)) == (3 if stage == "build-renamed" else 2)
    assert json.loads((new / "manifest.json").read_text())["count"] == len(d.after()[0])


def test_max_fraction_is_the_documented_twenty_percent():
    assert delta_mod.MAX_DELTA_FRACTION == 0.2


# -- end to end: figsearch rebuild on a real store -------------------------------------------
@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from figsearch.encoders import load_model

    return load_model(str(tiny_model_dir), device="cpu", batch_size=8)


def _night(settings, tmp_path: Path, shared_data: Path) -> tuple[Path, dict[str, list[int]]]:
    """Tonight's changes: a new batch to ingest, one caption and one image changed in place,
    one article retracted. Returns the batch and the figure ids touched."""
    from datetime import datetime, timezone

    from sqlalchemy import text

    from figsearch.store import FigureStore
    from indexer.captions import store_time
    from tests.indexer.test_embed import manifest_subset

    batch = manifest_subset(shared_data, tmp_path / "night.jsonl", 20, 23)
    store = FigureStore(settings.db_path)
    try:
        ids = sorted(r[0] for b in store.iter_figure_rows() for r in b)
        caption, image, donor, retracted = ids[1], ids[2], ids[7], ids[5]
        with store.engine.begin() as conn:
            # the indexed articles came in long ago; a re-ingested article is stamped now
            # (FigureStore.upsert_article), which is how the caption delta finds it
            conn.execute(text("UPDATE articles SET ingested_at = '2020-01-01 00:00:00.000000'"))
            conn.execute(text("UPDATE figures SET caption = caption || ' Stained with DAPI.' "
                              "WHERE id = :i"), {"i": caption})
            conn.execute(text("UPDATE articles SET ingested_at = :now WHERE id = "
                              "(SELECT article_id FROM figures WHERE id = :i)"),
                         {"i": caption, "now": store_time(datetime.now(timezone.utc))})
            conn.execute(text(
                "UPDATE figures SET image_path = (SELECT image_path FROM figures WHERE id = :d), "
                "sha256 = (SELECT sha256 FROM figures WHERE id = :d) WHERE id = :i"),
                {"i": image, "d": donor})
            conn.execute(text("UPDATE articles SET retracted = 1 WHERE id = "
                              "(SELECT article_id FROM figures WHERE id = :i)"), {"i": retracted})
            gone = [int(r[0]) for r in conn.execute(text(
                "SELECT id FROM figures WHERE article_id = "
                "(SELECT article_id FROM figures WHERE id = :i)"), {"i": retracted})]
    finally:
        store.close()
    return batch, {"caption": [caption], "image": [image], "gone": gone}


def test_rebuild_by_delta_matches_a_full_rebuild(shared_data, tmp_path, encoder, monkeypatch):
    from figsearch.caption_index import CAPTIONS_DIR, PASSAGES_DIR
    from figsearch.store import FigureStore
    from indexer.indexing import build_from_store, index_all
    from indexer.rebuild import rebuild
    from tests.indexer.test_embed import ingested_settings, manifest_subset

    monkeypatch.setattr(delta_mod, "MAX_DELTA_FRACTION", 1.0)  # 12 figures: any change is big
    settings = ingested_settings(shared_data, tmp_path, stop=12)
    first = index_all(settings, encoder=encoder, progress=False)
    assert first is not None
    prev = first.version_dir
    before = tree_digest(prev)
    batch, touched = _night(settings, tmp_path, shared_data)
    seen: list[VersionContext] = []
    register_version_writer("seen_test", lambda ctx: seen.append(ctx) or {"ok": True})

    def crash(stage: str) -> None:
        if stage == "applied":
            raise RuntimeError("injected crash after the image delta")

    try:
        with pytest.raises(RuntimeError, match="injected"):
            rebuild(settings, [str(batch)], encoder=encoder, progress=False, hook=crash)
        assert current_version_dir(settings.indexes_dir) == prev.resolve()
        assert SearchIndex.load(current_version_dir(settings.indexes_dir)).ntotal == 12
        report = rebuild(settings, [str(batch)], encoder=encoder, progress=False)  # the rerun
    finally:
        unregister_version_writer("seen_test")
    new = current_version_dir(settings.indexes_dir)
    assert new is not None and report.version == new.name
    assert tree_digest(prev) == before  # the previous version is byte-identical
    manifest = read_manifest(new)
    assert manifest["delta"]["previous_version"] == prev.name and manifest["seen_test"]["ok"]
    assert manifest["captions"]["delta"]  # the caption index went by delta too
    # ... reading again only the captions of articles ingested since the last build
    assert 0 < manifest["captions"]["reread"] < manifest["captions"]["count"]

    store = FigureStore(settings.db_path)
    try:
        full = build_from_store(settings, store, encoder.spec, encoder, activate=False,
                                delta=False, progress=False)
    finally:
        store.close()
    assert "delta" not in read_manifest(full.version_dir)
    got, want = SearchIndex.load(new, full_hash=True), SearchIndex.load(full.version_dir)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert not got.rows_for(np.array(touched["gone"]))[1].any()
    np.testing.assert_allclose(got.vectors[:].astype(np.float32),
                               want.vectors[:].astype(np.float32), atol=2e-3)
    for name in ("sha256.npy", "figure_types.npy"):
        np.testing.assert_array_equal(np.load(new / name), np.load(full.version_dir / name))
    queries = want.vectors[:].astype(np.float32)
    np.testing.assert_array_equal(got.search(queries, 5)[1], want.search(queries, 5)[1])
    # the changed image's figure carries its new vector (its donor's), not the old one
    np.testing.assert_allclose(got.vectors_for(touched["image"]), want.vectors_for(touched["image"]),
                               atol=2e-3)
    subs = [CAPTIONS_DIR] + ([f"{CAPTIONS_DIR}/{PASSAGES_DIR}"]
                             if (new / CAPTIONS_DIR / PASSAGES_DIR).is_dir() else [])
    for sub in subs:
        a, b = SearchIndex.load(new / sub, full_hash=True), SearchIndex.load(full.version_dir / sub)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.vectors[:].astype(np.float32),
                                   b.vectors[:].astype(np.float32), atol=2e-3)
        np.testing.assert_array_equal(np.load(new / sub / "text_sha.npy"),
                                      np.load(full.version_dir / sub / "text_sha.npy"))
    caption_ids = np.load(new / CAPTIONS_DIR / "ids.npy")
    assert not np.isin(touched["gone"], caption_ids).any()
    # the keyword index went by delta too, and holds what a full build holds
    from figsearch.keyword_index import IDS_FILE as KEYWORD_IDS
    from figsearch.keyword_index import KEYWORD_DIR, KeywordIndex

    assert manifest["keyword"]["delta"]["from"] == prev.name
    np.testing.assert_array_equal(np.load(new / KEYWORD_DIR / KEYWORD_IDS),
                                  np.load(full.version_dir / KEYWORD_DIR / KEYWORD_IDS))
    delta_kw, full_kw = KeywordIndex.load(new), KeywordIndex.load(full.version_dir)
    for query in ("virus replication", "interferon signalling pathway", "TREM2 microglia"):
        assert {f for f, _ in delta_kw.search(query, 20)} == \
            {f for f, _ in full_kw.search(query, 20)}, query

    ctx = seen[-1]
    assert ctx.previous_dir == prev.resolve() and ctx.version_dir.name.startswith(BUILDING_PREFIX)
    assert set(touched["gone"]) <= set(ctx.removed_ids.tolist())
    assert set(touched["caption"] + touched["image"]) <= set(ctx.upserted_ids.tolist())
    assert not set(ctx.removed_ids.tolist()) & set(ctx.upserted_ids.tolist())

    # `rebuild --full` trains anew; so does a night past the limit of change since training
    rebuild(settings, [str(manifest_subset(shared_data, tmp_path / "n2.jsonl", 30, 31))],
            encoder=encoder, progress=False, full=True)
    assert "delta" not in read_manifest(current_version_dir(settings.indexes_dir))
    monkeypatch.setattr(delta_mod, "MAX_DELTA_FRACTION", 0.0)
    rebuild(settings, [str(manifest_subset(shared_data, tmp_path / "n3.jsonl", 31, 32))],
            encoder=encoder, progress=False)
    assert "delta" not in read_manifest(current_version_dir(settings.indexes_dir))
