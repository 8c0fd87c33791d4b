"""The keyword index's in-figure text column, its migration and FTS5-driven highlights."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine

from figsearch.core.config import Settings
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.search import SearchService
from figsearch.store import (
    FTS_DDL_V1,
    SCHEMA_VERSION,
    Base,
    FigureFilter,
    FigureStore,
    bm25_weights,
)


def _article(key: str, title: str = "A study", h: str = "h1") -> ArticleRecord:
    return ArticleRecord(key=key, source="test", pmcid=key, title=title, journal="J Test",
                         year=2020, license_class="cc-by", content_hash=h)


def _figure(fig_id: str, caption: str, sha: str) -> FigureRecord:
    return FigureRecord(fig_id, label="Figure 1", caption=caption, image_path=f"{sha}.jpg",
                        sha256=sha)


def _ocr(store: FigureStore, sha: str, text: str) -> None:
    store.put_ocr([(sha, text, len(text.split()), "test", None)])


def _fts_columns(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(figures_fts)")]


def test_new_store_has_the_ocr_column(store: FigureStore):
    assert store.schema_version() == SCHEMA_VERSION >= 2  # 2: the ocr column
    assert _fts_columns(store.path) == ["caption", "label", "title", "ocr"]


def _make_v1_database(path) -> None:
    """A schema-1 store as the previous release wrote it: no figure_ocr, 3-column FTS."""
    engine = create_engine(f"sqlite:///{path}")
    old = [t for name, t in Base.metadata.tables.items() if name != "figure_ocr"]
    Base.metadata.create_all(engine, tables=old)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        for stmt in FTS_DDL_V1:
            conn.execute(stmt)
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO articles(id, key, pmcid, title, journal, license_class, "
                     "source, content_hash, retracted, ingested_at, license_text, license_url) "
                     "VALUES (1, 'PMC9', 'PMC9', 'Hypoxia in tumours', 'J', 'cc-by', 'test', "
                     "'h', 0, '2024-01-01', '', '')")
        conn.execute("INSERT INTO figures(id, key, article_id, fig_id, label, caption, sha256, "
                     "image_path, has_image, source, attributes) VALUES (7, 'PMC9/F1', 1, 'F1', "
                     "'Figure 1', 'Western blot of HIF1A', 'abc', 'abc.jpg', 1, 'test', '{}')")
    assert _fts_columns(path) == ["caption", "label", "title"]


def test_migration_upgrades_a_v1_database_keeping_fts_working(tmp_path):
    db = tmp_path / "figsearch.db"
    _make_v1_database(db)
    store = FigureStore(db, create=False)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert _fts_columns(db) == ["caption", "label", "title", "ocr"]
        # The old rows were carried over into the new FTS table ...
        assert [i for i, _ in store.keyword_search("HIF1A", 10)] == [7]
        assert [i for i, _ in store.keyword_search("tumours", 10)] == [7]
        # ... and the new triggers work on them: OCR text becomes searchable at once.
        assert store.keyword_search("VEGFA", 10) == []
        _ocr(store, "abc", "VEGFA\nEPO")
        assert [i for i, _ in store.keyword_search("VEGFA", 10)] == [7]
        store.upsert_article(_article("PMC10"), [_figure("F1", "another blot", "abc")])
        assert len(store.keyword_search("VEGFA", 10)) == 2
    finally:
        store.close()
    assert FigureStore(db, create=False).integrity_ok()


def test_ocr_text_follows_the_image_hash(store: FigureStore):
    store.upsert_article(_article("PMC1"), [_figure("F1", "A diagram", "s1")])
    _ocr(store, "s1", "SMAD4 ZEB1")
    # A figure stored later with an image already read gets its text from the cache.
    store.upsert_article(_article("PMC2"), [_figure("F1", "Another diagram", "s1")])
    assert len(store.keyword_search("zeb1", 10)) == 2
    # A new image (new hash) drops the old text from that figure; new OCR text replaces it.
    store.upsert_article(_article("PMC2", h="h2"), [_figure("F1", "Another diagram", "s2")])
    assert len(store.keyword_search("zeb1", 10)) == 1
    _ocr(store, "s1", "TP53")
    assert store.keyword_search("zeb1", 10) == [] and len(store.keyword_search("tp53", 10)) == 1
    assert store.ocr_texts(["s1", "s2"]) == {"s1": "TP53"}


def test_highlights_mark_exactly_what_fts_matched(store: FigureStore):
    caption = "Signaling of <b>TGF</b> receptors & signal strength; the signalling signature."
    store.upsert_article(_article("PMC1"), [_figure("F1", caption, "s1")])
    _ocr(store, "s1", "TGFBR2 receptor\nnucleus")
    (fid,) = store.figure_ids_for_article("PMC1")
    marked = store.highlights("signal receptor", [fid])
    caption_html, ocr_html = marked[fid]
    # Porter stemming: signaling/signal/signalling and receptors match; "signature" does not.
    assert caption_html == (
        "<mark>Signaling</mark> of &lt;b&gt;TGF&lt;/b&gt; <mark>receptors</mark> &amp; "
        "<mark>signal</mark> strength; the <mark>signalling</mark> signature."
    )
    assert ocr_html == "TGFBR2 <mark>receptor</mark>\nnucleus"
    # Caption-only match: no OCR snippet; no match at all: the figure is absent.
    assert store.highlights("strength", [fid])[fid][1] == ""
    assert store.highlights("kinase", [fid]) == {}


def test_search_results_carry_fts_highlights_and_ocr_snippets(store: FigureStore):
    store.upsert_article(_article("PMC1"), [_figure("F1", "Pathway diagram", "s1")])
    store.upsert_article(_article("PMC2"), [_figure("F1", "Kinase cascade with MAPK1", "s2")])
    _ocr(store, "s1", "EGFR\nMAPK1\nnucleus")
    svc = SearchService(store, None, None, Settings(data_dir=store.path.parent))
    hits = svc.search_text("MAPK1", k=5, mode="keyword").hits
    by_pmcid = {h.figure["pmcid"]: h for h in hits}
    assert set(by_pmcid) == {"PMC1", "PMC2"}
    assert by_pmcid["PMC1"].ocr_snippet == "EGFR\n<mark>MAPK1</mark>\nnucleus"
    assert by_pmcid["PMC1"].caption_highlighted == "Pathway diagram"
    assert by_pmcid["PMC2"].caption_highlighted == "Kinase cascade with <mark>MAPK1</mark>"
    assert by_pmcid["PMC2"].ocr_snippet == ""


@pytest.mark.parametrize(("ocr_weight", "first"), [(10.0, "PMC1"), (0.01, "PMC2")])
def test_fts_weights_setting_changes_the_ranking(store: FigureStore, ocr_weight, first):
    store.upsert_article(_article("PMC1"), [_figure("F1", "Overview of a signalling pathway", "s1")])
    store.upsert_article(_article("PMC2"), [_figure("F1", "Overview of the JAK2 pathway", "s2")])
    _ocr(store, "s1", "JAK2 STAT3")
    settings = Settings(data_dir=store.path.parent, fts_weights={"ocr": ocr_weight})
    hits = SearchService(store, None, None, settings).search_text("JAK2", mode="keyword").hits
    assert [h.figure["pmcid"] for h in hits][0] == first and len(hits) == 2


def test_fts_weights_refuse_unknown_columns():
    with pytest.raises(ValueError, match="unknown column"):
        Settings(fts_weights={"abstract": 1.0})
    with pytest.raises(ValueError, match="unknown FTS column"):
        bm25_weights({"abstract": 1.0})


def test_filters_still_apply_to_ocr_matches(store: FigureStore):
    store.upsert_article(_article("PMC1"), [_figure("F1", "a", "s1")])
    store.upsert_article(_article("PMC2"), [_figure("F1", "b", "s2")])
    _ocr(store, "s1", "BRCA1")
    _ocr(store, "s2", "BRCA1")
    assert len(store.keyword_search("BRCA1", 10)) == 2
    assert len(store.keyword_search("BRCA1", 10, FigureFilter(pmcid="PMC2"))) == 1
