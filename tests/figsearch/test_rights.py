"""Rights per figure and citations (issue #26): a figure's own <permissions> override its
article's license, caption statements of third-party material are flagged and kept out of
the ``reusable`` filter (SQL and version columns alike), and attributions / BibTeX / RIS carry
the authors and license link of a real shared article. Real JATS from ../shared/data plus one
crafted article."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from figsearch.columns import VersionColumns, write_columns
from figsearch.core.config import Settings
from figsearch.rights import (
    THIRD_PARTY,
    attribution,
    bibtex,
    is_reusable,
    reuse,
    ris,
    third_party_kinds,
    third_party_statement,
)
from figsearch.store import SCHEMA_VERSION, FigureFilter, FigureStore
from indexer.jats import parse_article
from indexer.workers import Task, _article_record, _figure_rights

REAL = "jats/pmc-nxml/1471-2180-11-174.nxml"  # BMC Microbiology, CC BY 2.0, 2 authors, 4 figs

#: A CC BY article whose F1 is the publisher's (own <permissions>, no license), F2 is under
#: its own CC0 license, F3 says "Reprinted with permission" and F4 is plain.
CRAFTED = b"""<?xml version="1.0" encoding="UTF-8"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article">
<front><journal-meta><journal-title-group><journal-title>Crafted Journal</journal-title>
</journal-title-group></journal-meta>
<article-meta><article-id pub-id-type="pmc">PMC9900001</article-id>
<article-id pub-id-type="doi">10.9999/crafted.1</article-id>
<title-group><article-title>Figures with rights of their own</article-title></title-group>
<contrib-group>
 <contrib contrib-type="author"><name><surname>Curie</surname><given-names>Marie</given-names></name></contrib>
 <contrib contrib-type="author"><collab>The Crafted Consortium</collab></contrib>
 <contrib contrib-type="editor"><name><surname>Editor</surname><given-names>Not An</given-names></name></contrib>
</contrib-group>
<pub-date pub-type="epub"><year>2021</year></pub-date>
<permissions><copyright-statement>&#169; 2021 The Authors</copyright-statement>
<license xlink:href="https://creativecommons.org/licenses/by/4.0/"><license-p>CC BY 4.0</license-p></license>
</permissions></article-meta></front>
<body><sec>
<fig id="F1"><label>Figure 1</label><caption><p>A map of the study area.</p></caption>
 <permissions><copyright-statement>&#169; 2015 Elsevier Ltd.</copyright-statement>
 <copyright-year>2015</copyright-year><copyright-holder>Elsevier Ltd.</copyright-holder></permissions>
 <graphic xlink:href="f1"/></fig>
<fig id="F2"><label>Figure 2</label><caption><p>Public domain satellite image.</p></caption>
 <permissions><copyright-holder>NASA</copyright-holder>
 <license xlink:href="https://creativecommons.org/publicdomain/zero/1.0/"><license-p>CC0</license-p></license>
 </permissions><graphic xlink:href="f2"/></fig>
<fig id="F3"><label>Figure 3</label><caption><p>The pathway. Reprinted with permission from
 Smith et al., Cell 2010. Copyright 2010 Cell Press.</p></caption><graphic xlink:href="f3"/></fig>
<fig id="F4"><label>Figure 4</label><caption><p>Our own results.</p></caption>
 <graphic xlink:href="f4"/></fig>
</sec></body></article>"""


def _ingest(store: FigureStore, xml: bytes, name: str) -> str:
    """Parse and store one article through ingest's own record builders (no images)."""
    from figsearch.records import FigureRecord

    parsed = parse_article(xml)
    key = parsed.key(name)
    article = _article_record(parsed, Task(name), key, name)
    figures = []
    for pf in parsed.figures:
        fig = FigureRecord(pf.fig_id, pf.label, pf.caption, source=article.source)
        _figure_rights(fig, pf)
        figures.append(fig)
    store.upsert_article(article, figures)
    return key


def _by_fig(store: FigureStore, pmcid: str) -> dict[str, dict]:
    figs = store.get_figures(store.figure_ids_for_article(pmcid))
    return {f["fig_id"]: f for f in figs.values()}


@pytest.fixture()
def rights_store(store: FigureStore, shared_data: Path) -> FigureStore:
    _ingest(store, (shared_data / REAL).read_bytes(), REAL)
    _ingest(store, CRAFTED, "crafted.xml")
    return store


# -- parsing -----------------------------------------------------------------------------------
def test_figure_permissions_are_parsed_from_the_fig_not_the_article():
    art = parse_article(CRAFTED)
    assert art.license_url == "https://creativecommons.org/licenses/by/4.0/"
    assert art.authors == ["Curie, Marie", "The Crafted Consortium"]  # the editor is not one
    f1, f2, f3, f4 = art.figures
    assert (f1.copyright_statement, f1.copyright_holder, f1.has_license) == (
        "© 2015 Elsevier Ltd.", "Elsevier Ltd.", False)
    assert f2.has_license and f2.license_url.endswith("/publicdomain/zero/1.0/")
    assert f2.copyright_holder == "NASA"
    assert not (f3.has_license or f3.copyright_statement or f4.copyright_statement)


def test_real_article_authors_and_no_figure_permissions(shared_data: Path):
    art = parse_article((shared_data / REAL).read_bytes())
    assert art.authors == ["Dennehy, John J", "Wang, Ing-Nang"]
    assert not any(f.has_license or f.copyright_statement for f in art.figures)


@pytest.mark.parametrize(("caption", "kinds"), [
    ("Reprinted with permission from Smith et al.", {"with-permission", "reprinted-from"}),
    ("Reproduced with kind permission of Springer.", {"with-permission"}),
    ("Adapted from Wang et al. (2009).", {"adapted-from"}),
    ("Photo © MBARI 2001.", {"copyright"}),
    ("Copyright 2011, Elsevier.", {"copyright"}),
    ("Image courtesy of Dr. Jones.", {"courtesy"}),
])
def test_third_party_statements_are_detected(caption: str, kinds: set[str]):
    assert kinds <= set(third_party_kinds(caption))
    assert third_party_statement("Panel A shows cells. " + caption).startswith(caption[:10])


@pytest.mark.parametrize("caption", [
    "Western blot of the adapted strain.", "Cells were treated with 5 mM copper.",
    "Permissive temperature (c) and control (d).", "",
])
def test_ordinary_captions_are_not_third_party(caption: str):
    assert third_party_statement(caption) == ""


# -- store, reuse, filter ----------------------------------------------------------------------
def test_figure_with_own_permissions_gets_them_not_its_articles(rights_store: FigureStore):
    figs = _by_fig(rights_store, "PMC9900001")
    f1, f2, f3, f4 = (figs[k] for k in ("F1", "F2", "F3", "F4"))
    assert f1["license_class"] == "cc-by"  # the article's
    assert f1["rights_holder"] == "Elsevier Ltd." and f1["third_party"] == "© 2015 Elsevier Ltd."
    assert reuse(f1) == THIRD_PARTY and not is_reusable(f1)
    assert f2["rights_license_class"] == "cc0" and reuse(f2) == "cc0: free to reuse"
    assert "publicdomain/zero/1.0" in attribution(f2)
    assert f3["third_party"].startswith("Reprinted with permission from Smith et al.")
    assert reuse(f3) == THIRD_PARTY and not is_reusable(f3)
    assert reuse(f4) == "cc-by: reuse with attribution" and is_reusable(f4)
    assert rights_store.get_figure(f1["id"])["authors"] == ["Curie, Marie",
                                                            "The Crafted Consortium"]


def test_reusable_filter_honours_the_figures_own_rights(rights_store: FigureStore, tmp_path: Path):
    figs = {**_by_fig(rights_store, "PMC9900001"), **{
        f"real-{k}": v for k, v in _by_fig(rights_store, "PMC3166277").items()}}
    flt = FigureFilter(reusable_only=True)
    want = sorted(f["id"] for f in figs.values() if is_reusable(f))
    assert rights_store.filtered_ids(flt).tolist() == want
    names = {f["id"]: k for k, f in figs.items()}
    # F1 (publisher's), F3 (reprinted with permission) and the real F1 ("adapted from") are out
    assert {names[i] for i in set(names) - set(want)} == {"F1", "F3", "real-F1"}
    write_columns(rights_store, tmp_path / "v")
    cols = VersionColumns.load(tmp_path / "v", store=rights_store)
    assert cols is not None
    assert cols.allowed(flt).ids.tolist() == want
    # combined with other filters, the columns still answer exactly as SQL
    for other in (FigureFilter(reusable_only=True, year_from=2020),
                  FigureFilter(reusable_only=True, commercial_only=True),
                  FigureFilter(reusable_only=True, license_class="cc-by")):
        assert cols.allowed(other).ids.tolist() == rights_store.filtered_ids(other).tolist()


def test_version_without_rights_column_answers_through_sql(rights_store: FigureStore,
                                                          tmp_path: Path):
    write_columns(rights_store, tmp_path / "v")
    (tmp_path / "v" / "columns" / "rights.npy").unlink()  # a version from before schema 5
    cols = VersionColumns.load(tmp_path / "v", store=rights_store)
    assert cols is not None
    flt = FigureFilter(reusable_only=True)
    assert cols.needs_sql(flt) and not cols.needs_sql(FigureFilter(commercial_only=True))
    assert cols.allowed(flt).ids.tolist() == rights_store.filtered_ids(flt).tolist()
    write_columns(rights_store, tmp_path / "v2")  # with the column: no SQL
    assert not VersionColumns.load(tmp_path / "v2", store=rights_store).needs_sql(flt)


def test_schema_4_store_gains_rights_columns_and_caption_statements(tmp_path: Path):
    """Migration 5 on a store of schema 4: new columns, third-party captions flagged."""
    s = FigureStore(tmp_path / "old.db")
    s.close()
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("INSERT INTO articles(id, key, title, journal, license_text, license_url, "
                 "license_class, source, content_hash, retracted, ingested_at) VALUES "
                 "(1, 'a', 't', 'j', '', '', 'cc-by', 'pmc', '', 0, '2026-01-01 00:00:00')")
    for i, cap in enumerate(("Adapted from Smith et al. (2001).", "Plain cells."), start=1):
        conn.execute("INSERT INTO figures(id, key, article_id, fig_id, label, caption, has_image, "
                     "source, attributes) VALUES (?, ?, 1, ?, '', ?, 0, 'pmc', '{}')",
                     (i, f"a/F{i}", f"F{i}", cap))
    # back to schema 4: drop the columns migration 5 adds
    for table, column in (("articles", "authors"), ("figures", "rights_license_class"),
                          ("figures", "rights_license_text"), ("figures", "rights_license_url"),
                          ("figures", "rights_statement"), ("figures", "rights_holder"),
                          ("figures", "third_party")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    s = FigureStore(tmp_path / "old.db")
    assert s.schema_version() == SCHEMA_VERSION  # 5 (rights) and every later migration ran
    f1, f2 = s.get_figure(1), s.get_figure(2)
    assert f1 is not None and f2 is not None
    assert f1["third_party"] == "Adapted from Smith et al. (2001)." and f2["third_party"] is None
    assert f1["authors"] == [] and reuse(f2) == "cc-by: reuse with attribution"
    with s.engine.connect() as c:
        assert c.execute(text("SELECT authors FROM articles")).scalar() == "[]"


# -- citation ----------------------------------------------------------------------------------
def test_attribution_of_a_real_article_has_authors_and_license_link(rights_store: FigureStore):
    f3 = _by_fig(rights_store, "PMC3166277")["F3"]
    line = attribution(f3)
    assert line.startswith('Figure 3 from "')
    for part in ("John J Dennehy, Ing-Nang Wang", "BMC Microbiology (2011)",
                 "https://doi.org/10.1186/1471-2180-11-174. PMCID PMC3166277",
                 "License: CC BY (http://creativecommons.org/licenses/by/2.0)"):
        assert part in line, line
    third = attribution(_by_fig(rights_store, "PMC9900001")["F1"])
    assert "Third-party material: Elsevier Ltd." in third and "License:" not in third


def test_bibtex_and_ris_of_a_real_article(rights_store: FigureStore):
    f = _by_fig(rights_store, "PMC3166277")["F3"]
    bib = bibtex(f)
    assert bib.startswith("@article{Dennehy2011,")
    assert "author = {Dennehy, John J and Wang, Ing-Nang}" in bib
    assert "doi = {10.1186/1471-2180-11-174}" in bib and "journal = {BMC Microbiology}" in bib
    lines = ris(f).splitlines()
    assert lines[0] == "TY  - JOUR" and lines[-1] == "ER  - "
    assert ["AU  - Dennehy, John J", "AU  - Wang, Ing-Nang"] == [
        x for x in lines if x.startswith("AU")]
    assert "PY  - 2011" in lines and "DO  - 10.1186/1471-2180-11-174" in lines


# -- API ---------------------------------------------------------------------------------------
@pytest.fixture()
def api(rights_store: FigureStore):
    from figsearch.api.main import create_app

    settings = Settings(data_dir=rights_store.path.parent, rate_limit_per_minute=0)
    with TestClient(create_app(settings, start_poller=False)) as client:
        yield client


def test_api_figure_rights_attribution_and_citation(api: TestClient, rights_store: FigureStore):
    figs = _by_fig(rights_store, "PMC9900001")
    body = api.get(f"/v1/figures/{figs['F2']['id']}").json()
    assert (body["license"], body["article_license"], body["figure_license"]) == (
        "cc0", "cc-by", "cc0")
    assert body["license_url"] == "https://creativecommons.org/publicdomain/zero/1.0/"
    assert body["reuse"] == "cc0: free to reuse" and body["reusable"] is True
    body = api.get(f"/v1/figures/{figs['F3']['id']}").json()
    assert body["reuse"] == THIRD_PARTY and body["reusable"] is False
    assert body["third_party"].startswith("Reprinted with permission")
    art = api.get("/v1/articles/PMC3166277").json()
    assert art["authors"] == ["Dennehy, John J", "Wang, Ing-Nang"]
    assert art["bibtex"].startswith("@article{Dennehy2011,") and "AU  - Wang" in art["ris"]
    f3 = next(f for f in art["figures"] if f["fig_id"] == "F3")
    assert "John J Dennehy, Ing-Nang Wang" in f3["attribution"]
    assert "http://creativecommons.org/licenses/by/2.0" in f3["attribution"]
    r = api.get("/v1/articles/PMC3166277/citation", params={"format": "ris"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "application/x-research-info-systems")
    assert 'filename="PMC3166277.ris"' in r.headers["content-disposition"]
    assert "AU  - Dennehy, John J" in r.text
    r = api.get("/v1/articles/PMC3166277/citation")
    assert r.text.startswith("@article{Dennehy2011,")
    assert api.get("/v1/articles/PMC404/citation").status_code == 404
    assert "reusable" in api.get("/v1/facets").json()["license_options"]


def test_reusable_filter_reaches_the_store_from_the_api():
    from figsearch.api.deps import build_filter
    from figsearch.api.state import AppState

    flt = build_filter(AppState(Settings()), None, None, None, "reusable", None, None)
    assert flt.reusable_only and not flt.commercial_only and flt.license_class is None
    assert np.asarray(flt.is_empty()).item() is False


def test_pmc_cloud_citation_gives_authors_when_the_xml_has_none(shared_data: Path):
    from indexer.pmc_cloud import citation_authors, parse_metadata

    meta = parse_metadata(
        (shared_data / "pmc-cloud/day2-overlay/metadata/PMC3633842.1.json").read_bytes(),
        "PMC3633842.1", ["pmc-oa-opendata"])
    assert meta.authors == ["Vikas Vikram Singh", "et al."]
    assert citation_authors("John Smith. Nature. 2001;1:2.") == ["John Smith"]
    assert citation_authors("2013;8(4):e62845.") == []
    row = {"authors": meta.authors, "title": "T", "journal": "PLoS One", "year": 2013,
           "pmcid": "PMC3633842", "license_class": "cc-by"}
    assert 'by Vikas Vikram Singh, et al.' in attribution(row)
    assert "author = {Vikas Vikram Singh and others}" in bibtex(row)
    assert bibtex(row).startswith("@article{Singh2013,")
    assert [x for x in ris(row).splitlines() if x.startswith("AU")] == ["AU  - Vikas Vikram Singh"]
    # the XML's own authors win over the citation's
    art = parse_article(CRAFTED)
    record = _article_record(art, Task("x", authors=meta.authors), "k", "d")
    assert record.authors == ["Curie, Marie", "The Crafted Consortium"]
    art.authors = []
    assert _article_record(art, Task("x", authors=meta.authors), "k", "d").authors == meta.authors


def test_attribution_of_other_collections_and_synthetic_figures():
    zebra = {"label": "Figure 1", "title": "Retina", "source": "zebralab", "doi": "10.1234/zl.1",
             "figure_page_url": "https://zebra.example.org/fig/zl-001", "fig_id": "zl-001",
             "license_class": "cc-by", "license_url": "https://creativecommons.org/licenses/by/4.0/",
             "authors": ["Danio, Rerio"]}
    line = attribution(zebra)
    assert line == ('Figure 1 from "Retina" by Rerio Danio. https://doi.org/10.1234/zl.1. '
                    "zebralab collection (https://zebra.example.org/fig/zl-001). License: CC BY "
                    "(https://creativecommons.org/licenses/by/4.0/).")
    synthetic = {"label": "", "title": "", "source": "synthetic", "pmcid": None,
                 "license_class": "none"}
    assert attribution(synthetic) == "Figure from an untitled article. License: no license stated."
    no_doi = {"label": "Fig. 2", "title": "T", "source": "pmc", "pmcid": "PMC42",
              "license_class": "cc0"}
    assert "PMCID PMC42 (https://pmc.ncbi.nlm.nih.gov/articles/PMC42/)" in attribution(no_doi)


def test_persons_of_an_author_group_are_authors(shared_data: Path):
    """eLife's manuscripts: <contrib-group content-type="author"><contrib contrib-type="person">."""
    art = parse_article((shared_data / "jats/packages/elife-32671/manuscript.xml").read_bytes())
    assert art.authors[:2] == ["Yang, Weijian", "Carrillo-Reid, Luis"]


def test_keyword_search_with_the_reusable_filter_leaves_out_reprinted_figures(
        rights_store: FigureStore):
    figs = _by_fig(rights_store, "PMC9900001")
    hits = [i for i, _ in rights_store.keyword_search("pathway results", 10)]
    assert figs["F3"]["id"] in hits and figs["F4"]["id"] in hits
    reusable = [i for i, _ in rights_store.keyword_search(
        "pathway results", 10, FigureFilter(reusable_only=True))]
    assert figs["F3"]["id"] not in reusable and figs["F4"]["id"] in reusable
