"""The visual-word index (indexer.visual_words, figsearch.source_match.VisualWordIndex): built
over the real figures of a small data dir, it brings a crop's or screenshot's source into the
verification pool when the dense ranking (the tiny random model) leaves it out, respects
filters, is rebuilt from its word cache, and its absence changes nothing."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.source_queries import framed
from figsearch import source_match
from figsearch.core.config import Settings
from figsearch.index import current_version_dir
from figsearch.store import FigureFilter, FigureStore
from indexer.visual_words import build_words, visual_word_stage, vocabulary_size
from tests.figsearch.api_fixtures import small_search_service
from tests.figsearch.test_source_match import BUDGET_MS, SOURCES, _centre, _row_image, _upload

#: dense candidates in these tests: few, so the tiny model's ranking misses most sources
DENSE = 3


@pytest.fixture(scope="module")
def vw_data_dir(small_index_data_dir, tmp_path_factory) -> Path:
    """A copy of the small data dir whose current version has a visual-word index."""
    data_dir = tmp_path_factory.mktemp("vw") / "data"
    shutil.copytree(small_index_data_dir, data_dir, symlinks=True)
    settings = Settings(data_dir=data_dir)
    store = FigureStore(settings.db_path, create=False)
    try:
        out = visual_word_stage(settings, store)(current_version_dir(settings.indexes_dir))
    finally:
        store.close()
    assert out["visual_words"]["figures"] >= 36, out
    return data_dir


@pytest.fixture(scope="module")
def service(vw_data_dir, tiny_model_dir):
    with small_search_service(vw_data_dir, tiny_model_dir) as svc:
        svc.visual_words = source_match.word_index(current_version_dir(
            svc.settings.indexes_dir))
        svc.settings = svc.settings.model_copy(update={"image_query_budget_ms": BUDGET_MS,
                                                       "source_candidates": DENSE,
                                                       "query_ocr": False})  # words alone
        yield svc


def _queries(shared_data: Path) -> list[tuple[str, object]]:
    """(sha256 of the source, query image): 50 % centre crops and bordered screenshots."""
    out = []
    for row in SOURCES:
        img, sha = _row_image(shared_data, row)
        out += [(sha, _upload(_centre(img, 0.5))), (sha, _upload(framed(img, random.Random(row))))]
    return out


def _sha_of(service, ids) -> list[str]:
    figures = service.store.get_figures(list(ids))
    return [figures[i]["sha256"] for i in ids if i in figures]


def test_words_find_the_source_the_dense_ranking_misses(service, shared_data):
    base = service.settings
    missed, ranks = 0, []
    for sha, query in _queries(shared_data):
        ranked = service.visual_words.ranked(source_match.query_features(query).descriptors, 39)
        ranks.append(_sha_of(service, [fid for fid, _ in ranked]).index(sha))
        service.settings = base.model_copy(update={"visual_words": False})
        try:
            dense = service.search_image(query, k=10)
        finally:
            service.settings = base
        if sha in _sha_of(service, source_match.last_run().pool):
            continue  # the dense candidates had it anyway
        missed += 1
        assert dense.hits[0].figure["sha256"] != sha
        page = service.search_image(query, k=10)
        assert page.hits[0].figure["sha256"] == sha
        assert any(s.name == "source" for s in page.hits[0].signals)
        run = source_match.last_run()
        assert len(run.pool) > DENSE and sha in _sha_of(service, run.pool[DENSE:] + run.pool[:5])
    assert missed >= 3, "the tiny model's top 3 should miss most sources"
    # the words rank the source first for all but the pathway diagram's 50 % crop (row 23:
    # boxes and arrows of one style, words shared with other diagrams), 11th of 39 there
    assert sorted(ranks)[:-1] == [0] * (len(ranks) - 1) and max(ranks) < 12, ranks


def test_filter_is_respected(service, shared_data):
    img, sha = _row_image(shared_data, SOURCES[1])
    query = _upload(_centre(img, 0.5))
    source = next(f for f in service.store.get_figures(range(1, 200)).values()
                  if f["sha256"] == sha)
    other = FigureFilter(figure_type="chart/plot")  # the synthetic figures only
    allowed = set(service.store.filtered_ids(other))
    page = service.search_image(query, k=10, flt=other)
    assert sha not in {h.figure["sha256"] for h in page.hits}
    assert set(source_match.last_run().pool) <= allowed
    assert {h.id for h in page.hits} <= allowed
    own = FigureFilter(pmcid=source["pmcid"])
    page = service.search_image(query, k=10, flt=own)
    assert page.hits[0].figure["sha256"] == sha
    assert set(source_match.last_run().pool) <= set(service.store.filtered_ids(own))


def test_version_without_visual_words_still_searches(small_index_data_dir, tiny_model_dir,
                                                     shared_data):
    version = current_version_dir(Settings(data_dir=small_index_data_dir).indexes_dir)
    assert source_match.word_index(version) is None
    img, sha = _row_image(shared_data, SOURCES[0])
    with small_search_service(small_index_data_dir, tiny_model_dir) as svc:
        svc.visual_words = None
        svc.settings = svc.settings.model_copy(update={"image_query_budget_ms": BUDGET_MS})
        page = svc.search_image(_upload(_centre(img, 0.5)), k=5)
    assert page.hits[0].figure["sha256"] == sha  # verification of the dense 50 (36 figures)
    assert len(source_match.last_run().pool) <= svc.settings.source_candidates


def test_rebuild_reuses_the_vocabulary_and_word_cache(vw_data_dir):
    settings = Settings(data_dir=vw_data_dir)
    version = current_version_dir(settings.indexes_dir)
    first = source_match.word_index(version)
    assert first is not None
    store = FigureStore(settings.db_path, create=False)
    try:
        again = build_words(settings, store, prev_dir=version)
    finally:
        store.close()
    assert again is not None and again.computed == 0 and again.trained_on == 0
    assert np.array_equal(again.vocab, first.vocab)
    assert np.array_equal(again.ids, np.asarray(first.ids))
    rows = np.repeat(np.arange(len(again.ids)), [len(w) for w in again.words])
    flat = np.concatenate(again.words)
    assert np.array_equal(np.asarray(first.postings), rows[np.argsort(flat, kind="stable")])


def test_stage_skips_when_off_or_without_opencv(vw_data_dir, tmp_path, monkeypatch, capsys):
    settings = Settings(data_dir=vw_data_dir, visual_words=False)
    assert visual_word_stage(settings, None)(tmp_path) == {
        "visual_words": {"skipped": "FIGSEARCH_VISUAL_WORDS is off"}}
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setattr(source_match, "_optional", {})  # nothing checked yet
    out = visual_word_stage(Settings(data_dir=vw_data_dir), None)(tmp_path)
    assert "OpenCV" in out["visual_words"]["skipped"]
    assert "visual words: skipped" in capsys.readouterr().err
    assert not (tmp_path / source_match.VISUAL_WORDS_DIR).exists()


@pytest.mark.parametrize("n,words", [(0, 256), (10_000, 1024), (196_000, 16384),
                                     (15_000_000_000, 65536)])
def test_vocabulary_size_grows_with_the_descriptors(n, words):
    assert vocabulary_size(n) == words
