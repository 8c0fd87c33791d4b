"""The panels step: real figure images split once per image hash, stored, aligned with each
figure's own caption on read; reruns, detector versions, bad files, schema migration."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from figsearch.core.config import Settings
from figsearch.imaging import store_image
from figsearch.panels import iou
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.store import SCHEMA_VERSION, FigureStore
from indexer import panels as panels_step_module
from indexer.panels import panels_step, run_panels

COMPOUND = "PMC6479336__ijms-20-01677-g001.jpg"  # (A) above (B)
SINGLE = "PMC6213986__ijms-19-03266-g002.jpg"  # one diagram


def _caption(shared_data: Path, name: str) -> str:
    for line in (shared_data / "pmc-figures" / "figures.jsonl").open():
        row = json.loads(line)
        if row["image"] == f"images/{name}":
            return str(row["caption"])
    raise AssertionError(name)


def _figure(settings: Settings, fig_id: str, caption: str, data: bytes) -> FigureRecord:
    stored = store_image(data, settings.images_dir)
    return FigureRecord(fig_id, label="Figure 1", caption=caption, image_path=stored.image_path,
                        sha256=stored.sha256, width=stored.width, height=stored.height)


def _article(key: str) -> ArticleRecord:
    return ArticleRecord(key=key, source="test", pmcid=key, title="Virus signalling", year=2019,
                         license_class="cc-by", content_hash="h")


@pytest.fixture()
def corpus(tmp_path, shared_data):
    """A compound and a single figure (real), the compound image reused by a second article
    under a caption without panel letters, and a figure whose file is damaged."""
    settings = Settings(data_dir=tmp_path)
    store = FigureStore(settings.db_path)
    images = shared_data / "pmc-figures" / "images"
    compound = (images / COMPOUND).read_bytes()
    store.upsert_article(_article("PMC1"), [
        _figure(settings, "F1", _caption(shared_data, COMPOUND), compound),
        _figure(settings, "F2", _caption(shared_data, SINGLE), (images / SINGLE).read_bytes()),
    ])
    store.upsert_article(_article("PMC2"), [_figure(settings, "F1", "PD-1 reviewed", compound)])
    bad = _figure(settings, "F2", "(A) one. (B) two.",
                  (images / "PMC5835104__fgene-09-00061-g002.jpg").read_bytes())
    (settings.images_dir / str(bad.image_path)).write_bytes(b"not a jpeg at all")
    store.upsert_article(_article("PMC3"), [bad])
    yield settings, store
    store.close()


def _figure_id(store: FigureStore, pmcid: str, fig: str) -> int:
    with sqlite3.connect(store.path) as con:
        row = con.execute("SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
                          "WHERE a.pmcid = ? AND f.fig_id = ?", (pmcid, fig)).fetchone()
    return int(row[0])


def test_each_image_is_split_once_and_aligned_with_its_own_caption(corpus):
    settings, store = corpus
    assert store.figure_panels(_figure_id(store, "PMC1", "F1")) is None  # not computed yet
    summary = run_panels(store, settings.images_dir)
    # three distinct images (the reused one once), the damaged one recorded and skipped
    assert (summary.images, summary.compound, summary.failed) == (3, 1, 1)
    assert "3 images split (1 compound" in summary.line()
    assert store.errors() == []  # the embed step reports unreadable images, once

    panels = store.figure_panels(_figure_id(store, "PMC1", "F1"))
    assert panels is not None and [p.letter for p in panels] == ["A", "B"]
    assert iou(panels[0].box, (11, 10, 776, 421)) > 0.9 and iou(panels[1].box, (11, 450, 776, 863)) > 0.9
    assert panels[0].subcaption.text.startswith("(A) Engagement of the PD-1 receptor")
    assert panels[1].subcaption.text.startswith("(B) Blocking the PD-1")

    single = store.figure_panels(_figure_id(store, "PMC1", "F2"))
    assert single is not None and len(single) == 1 and single[0].letter is None
    # the same image under another caption: same boxes, that caption's (letterless) text
    reused = store.figure_panels(_figure_id(store, "PMC2", "F1"))
    assert reused is not None and [p.box for p in reused] == [p.box for p in panels]
    assert all(p.letter is None for p in reused)
    assert store.figure_panels(_figure_id(store, "PMC3", "F2")) is None  # unreadable
    with pytest.raises(KeyError):
        store.figure_panels(10**9)

    again = run_panels(store, settings.images_dir)
    assert again.images == 0


def test_limit_resumes_and_a_new_detector_version_recomputes(corpus, monkeypatch):
    settings, store = corpus
    assert run_panels(store, settings.images_dir, limit=1).images == 1
    assert store.panels_pending_count(panels_step_module.ALGO) == 2
    assert run_panels(store, settings.images_dir).images == 2
    monkeypatch.setattr(panels_step_module, "ALGO", "xycut-test")
    assert store.panels_pending_count("xycut-test") == 3
    assert panels_step(settings, store).images == 3


def test_an_old_store_gains_the_panels_table(tmp_path):
    store = FigureStore(tmp_path / "figsearch.db")
    store.close()
    with sqlite3.connect(tmp_path / "figsearch.db") as con:
        con.execute("DROP TABLE figure_panels")
        con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    store = FigureStore(tmp_path / "figsearch.db")
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        assert store.panels_pending_count("any") == 0
    finally:
        store.close()


def test_figsearch_index_runs_the_panels_step(corpus, tiny_model_dir):
    from figsearch.encoders import load_model
    from indexer.indexing import index_all

    settings, store = corpus
    encoder = load_model(str(tiny_model_dir), device="cpu", batch_size=8)
    report = index_all(settings, encoder=encoder, progress=False)
    assert report is not None
    assert store.panels_pending_count(panels_step_module.ALGO) == 0
    panels = store.figure_panels(_figure_id(store, "PMC1", "F1"))
    assert panels is not None and len(panels) == 2
    # the version holds the panels' crops and sub-captions (figsearch.panel_index)
    assert (report.version_dir / "panels" / "manifest.json").is_file()
    assert (report.version_dir / "captions" / "panels" / "manifest.json").is_file()
    # and the visual-word index of its stored images (indexer.visual_words)
    words = json.loads((report.version_dir / "visual_words" / "manifest.json").read_text())
    ids = np.load(report.version_dir / "visual_words" / "ids.npy")
    assert words["figures"] == len(ids) >= 2 and words["postings"] > 0
    assert set(ids.tolist()) <= set(np.load(report.version_dir / "ids.npy").tolist())


def test_panel_stage_embeds_each_crop_once_and_a_rerun_reads_the_cache(corpus, tiny_model_dir):
    """The compound image is used by two figures: four panel rows (two per figure), two crops
    encoded; a second stage encodes nothing and gives the same vectors. A store whose images
    are not compound writes no panel directory."""
    from figsearch.encoders import load_model
    from figsearch.index import SearchIndex
    from figsearch.panel_index import PANELS_DIR, panel_key
    from indexer.panels import embed_panels, panel_stage

    settings, store = corpus
    run_panels(store, settings.images_dir)
    encoder = load_model(str(tiny_model_dir), device="cpu")
    version = settings.data_dir / "indexes" / "v1"
    summary = panel_stage(settings, store, encoder, None)(version)["panels"]
    assert (summary["figures"], summary["crops"], summary["crops_encoded"]) == (2, 4, 2)
    assert summary["subcaptions"] == 0  # no caption index in this version
    index = SearchIndex.load(version / PANELS_DIR)
    first, reused = _figure_id(store, "PMC1", "F1"), _figure_id(store, "PMC2", "F1")
    assert index.ids.tolist() == [panel_key(first, 1), panel_key(first, 2),
                                  panel_key(reused, 1), panel_key(reused, 2)]
    vectors = index.vectors_for(index.ids)
    assert np.array_equal(vectors[:2], vectors[2:])  # the same crops, encoded once
    again = embed_panels(settings, store, encoder, None)
    assert again.crops_encoded == 0 and np.array_equal(again.crop_vectors, vectors)

    single_dir = settings.data_dir / "single"
    single = FigureStore(single_dir / "figsearch.db")
    try:
        one = Settings(data_dir=single_dir)
        data = (settings.images_dir / store.get_figure(_figure_id(store, "PMC1", "F2"))
                ["image_path"]).read_bytes()
        single.upsert_article(_article("PMC9"), [_figure(one, "F1", "One pathway.", data)])
        run_panels(single, one.images_dir)
        out = panel_stage(one, single, encoder, None)(single_dir / "indexes" / "v1")
        assert out["panels"]["figures"] == 0
        assert not (single_dir / "indexes" / "v1" / PANELS_DIR).exists()
    finally:
        single.close()
