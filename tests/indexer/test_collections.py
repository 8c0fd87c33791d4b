"""Figure collections other than PMC: a JSONL manifest without PMCIDs, ingested, indexed and
searched through the API, with each collection's own links and attribution."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from figsearch.core.config import Settings
from figsearch.store import SCHEMA_VERSION, FigureStore
from indexer.indexing import index_all
from indexer.ingest import ingest_paths
from indexer.sources import read_manifest
from tests.figsearch.api_fixtures import loaded_app
from ui import components as c

ZEBRA_URL = "https://zebralab.example.org/figures/"
ROWS = [
    {"image": "img/retina.png", "caption": "Confocal image of the zebrafish retina at 5 dpf.",
     "collection": "ZebraLab", "id": "zl-001", "url": ZEBRA_URL + "zl-001", "doi": "10.1234/zl.1",
     "paper_title": "Retina development", "journal": "Lab Notes", "year": 2020,
     "figure_number": "Figure 1", "license": "CC BY 4.0"},
    {"image": "img/fin.png", "caption": "Fin regeneration time course in zebrafish.",
     "collection": "zebralab", "id": "zl-002", "url": ZEBRA_URL + "zl-002", "doi": "10.1234/zl.1",
     "paper_title": "Retina development", "figure_number": "Figure 2"},
    # No collection field: `collection=` of the ingest names it; a link to its article only.
    {"image": "img/blot.png", "caption": "Western blot of p53 in the core facility samples.",
     "id": "cf-7", "article_url": "https://core.example.org/reports/7",
     "paper_title": "Facility report 7"},
    # A PMC figure in the same manifest keeps its PMC identity and links.
    {"image": "img/pmc.png", "caption": "Kaplan-Meier survival curve of the PMC cohort.",
     "pmcid": "PMC5519703", "figure_number": "Figure 3", "paper_title": "A PMC article"},
]
BAD_ROWS = [
    {"image": "img/retina.png", "caption": "no way to name this one"},
    {"image": "img/retina.png", "caption": "bad link", "collection": "x",
     "url": "javascript:alert(1)"},
]


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (90, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        (folder / row["image"]).write_bytes(_png((40 * i % 256, 200 - 30 * i, 90 + 20 * i)))
    path = folder / "figures.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_rows_name_their_collection_or_are_refused(tmp_path):
    path = write_manifest(tmp_path, ROWS + BAD_ROWS)
    groups, problems = read_manifest(path)
    # Without a default collection the unnamed, PMCID-less rows are refused with the reason.
    keys = sorted(g.key for g in groups)
    assert keys == ["PMC5519703", "zebralab:10.1234/zl.1"]
    reasons = " | ".join(reason for _item, reason in problems)
    assert reasons.count("no pmcid and no collection") == 2
    assert "is not an http(s) URL" in reasons
    # A default collection names them (the image path identifies a row without any id);
    # rows with a PMCID stay PMC's.
    groups, problems = read_manifest(path, collection="core-facility")
    assert sorted(g.key for g in groups) == [
        "PMC5519703", "core-facility:cf-7", "core-facility:img/retina.png",
        "zebralab:10.1234/zl.1"]
    assert len(problems) == 1


@pytest.fixture(scope="module")
def collection_settings(tmp_path_factory, tiny_model_dir) -> Settings:
    root = tmp_path_factory.mktemp("collections")
    manifest = write_manifest(root / "manifest", ROWS)
    settings = Settings(data_dir=root / "data", model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, dedup_threshold=0.99999, num_workers=0)
    summary = ingest_paths([manifest], settings, workers=1, collection="core-facility")
    assert (summary.added, summary.figures_with_images, summary.skipped) == (3, 4, 0)
    report = index_all(settings, str(tiny_model_dir), progress=False)
    assert report is not None and report.count == 4
    return settings


def _hit(client: TestClient, query: str) -> dict:
    r = client.get("/v1/search", params={"q": query, "mode": "keyword", "k": 5})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_non_pmc_figures_are_searched_with_their_own_links(collection_settings):
    with TestClient(loaded_app(collection_settings)) as client:
        zebra = _hit(client, "zebrafish retina")
        assert (zebra["source"], zebra["pmcid"]) == ("zebralab", None)
        assert zebra["figure_url"] == ZEBRA_URL + "zl-001"
        assert zebra["article_url"] == "https://doi.org/10.1234/zl.1"
        assert zebra["license"] == "cc-by"
        facility = _hit(client, "western blot p53")
        assert facility["source"] == "core-facility" and facility["figure_url"] is None
        assert facility["article_url"] == "https://core.example.org/reports/7"
        pmc = _hit(client, "Kaplan-Meier survival")
        assert pmc["source"] == "pmc"
        assert pmc["article_url"] == "https://pmc.ncbi.nlm.nih.gov/articles/PMC5519703/"
        # Both zebralab figures are one article, addressed by its key.
        article = client.get("/v1/articles/zebralab:10.1234%2Fzl.1")
        assert article.status_code == 200, article.text
        body = article.json()
        assert body["source"] == "zebralab" and len(body["figures"]) == 2
        assert {f["figure_url"] for f in body["figures"]} == {ZEBRA_URL + "zl-001",
                                                              ZEBRA_URL + "zl-002"}
        # Dense search reaches them too: they are in the index.
        dense = client.get("/v1/search", params={"q": "zebrafish", "mode": "dense", "k": 4})
        assert {h["source"] for h in dense.json()["results"]} == {"zebralab", "core-facility",
                                                                 "pmc"}
    line = c.attribution(zebra)
    assert "zebralab collection (" + ZEBRA_URL + "zl-001)" in line and "PMCID" not in line
    assert "https://doi.org/10.1234/zl.1" in line  # the API's attribution (issue #26)
    assert c.link_buttons(zebra)[:2] == [("Article (zebralab)", zebra["article_url"]),
                                         ("Figure in zebralab", zebra["figure_url"])]
    assert c.link_buttons(pmc)[0] == ("Article in PMC", pmc["article_url"])
    assert "PMCID PMC5519703" in c.attribution(pmc)
    exported = c.results_to_csv([zebra, pmc])
    assert "zebralab collection" in exported and "PMCID PMC5519703" in exported


def test_old_store_gains_the_link_columns(tmp_path):
    store = FigureStore(tmp_path / "figsearch.db")
    with store.engine.begin() as conn:
        for table in ("articles", "figures"):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN url"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    store.close()
    store = FigureStore(tmp_path / "figsearch.db")
    with store.engine.connect() as conn:
        for table in ("articles", "figures"):
            columns = {row[1] for row in conn.execute(text(f"PRAGMA table_info({table})"))}
            assert "url" in columns
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
