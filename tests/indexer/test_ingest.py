"""Ingest orchestration on the real shared fixtures: counts, texts, images, idempotency."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile

import pytest
from PIL import Image

from figsearch.cli import main as cli_main
from figsearch.core.config import Settings
from figsearch.store import FigureStore
from indexer.ingest import ingest_paths
from tests.indexer.packages import build_pmc_package, make_jpeg, write_tar

FIGURE_SQL = (
    "SELECT a.key, f.fig_id, f.label, f.caption, f.has_image, f.width, f.height, f.orig_width, "
    "f.orig_height, f.sha256, f.id, f.image_path, f.source, f.attributes FROM figures f "
    "JOIN articles a ON a.id = f.article_id ORDER BY f.id"
)


def figures(settings: Settings) -> list[sqlite3.Row]:
    con = sqlite3.connect(settings.db_path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(FIGURE_SQL).fetchall()
    finally:
        con.close()


def article(settings: Settings, key: str) -> dict:
    con = sqlite3.connect(settings.db_path)
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM articles WHERE key = ?", (key,)).fetchone())
    finally:
        con.close()


def test_publisher_zip_with_tiff_figure(shared_data, tmp_path):
    settings = Settings(data_dir=tmp_path)
    summary = ingest_paths([shared_data / "jats/packages/elife-05-19405.zip"], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (1, 1, 1)
    assert summary.added_keys == ["doi:10.7554/eLife.19405"]
    [fig] = figures(settings)
    assert fig["label"] == "Figure 1." and fig["has_image"] == 1
    assert fig["caption"].startswith("Membrane invaginations and cell division. Schematic")
    with zipfile.ZipFile(shared_data / "jats/packages/elife-05-19405.zip") as zf:
        tif = Image.open(io.BytesIO(zf.read("elife-19405-fig1.tif")))
    assert (fig["orig_width"], fig["orig_height"]) == tif.size
    stored = Image.open(settings.images_dir / fig["image_path"])
    assert stored.format == "JPEG" and max(stored.size) <= settings.image_max_side
    meta = article(settings, "doi:10.7554/eLife.19405")
    assert (meta["license_class"], meta["journal"], meta["year"]) == ("cc-by", "eLife", 2016)


def test_meca_and_article_directory(shared_data, tmp_path):
    settings = Settings(data_dir=tmp_path)
    summary = ingest_paths([shared_data / "jats/packages/95901-v1-meca.zip",
                            shared_data / "jats/packages/elife-32671"], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (2, 6, 6)
    rows = {(r["key"], r["fig_id"]): r for r in figures(settings)}
    meca = rows[("doi:10.1101/2024.01.24.24301711", "fig1")]
    assert meca["caption"] == "Flow chart of participant selection for this study"
    dir_key = str((shared_data / "jats/packages/elife-32671").resolve())
    assert [rows[(dir_key, f"fig{i}")]["label"] for i in range(1, 6)] == [
        f"Figure {i}" for i in range(1, 6)]
    fig2 = Image.open(shared_data / "jats/packages/elife-32671/fig2.jpg")
    assert (rows[(dir_key, "fig2")]["orig_width"], rows[(dir_key, "fig2")]["orig_height"]) == fig2.size


def test_bare_nxml_directory_records_figures_without_images(shared_data, tmp_path):
    settings = Settings(data_dir=tmp_path)
    summary = ingest_paths([shared_data / "jats/pmc-nxml"], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (8, 17, 0)
    assert summary.problems == 0  # a bare XML has no images to miss
    rows = {(r["key"], r["fig_id"]): r for r in figures(settings)}
    f = rows[("PMC3585041", "pntd-0002065-g001")]
    assert f["label"] == "Figure 1" and f["has_image"] == 0
    assert f["caption"].startswith("Location of the study areas. Figure 1 shows the map of the")
    assert article(settings, "PMC2599765")["license_class"] == "public-domain"
    assert article(settings, "PMC3574550")["license_class"] == "cc-by-nc"
    assert article(settings, "PMC2994229")["license_class"] == "none"  # no <license>


def test_legacy_pmc_package_gets_its_images(shared_data, tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    _, pkg = build_pmc_package(shared_data / "jats/pmc-nxml/pone.0046493.nxml", tmp_path / "pkgs")
    summary = ingest_paths([pkg], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (1, 4, 4)
    assert {r["key"] for r in figures(settings)} == {"PMC3460867"}
    assert article(settings, "PMC3460867")["source"] == "pmc"


def test_jsonl_manifest(shared_data, tmp_path):
    settings = Settings(data_dir=tmp_path)
    summary = ingest_paths([shared_data / "pmc-figures/figures.jsonl"], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (159, 189, 189)
    first = json.loads((shared_data / "pmc-figures/figures.jsonl").read_text().splitlines()[0])
    rows = {(r["key"], r["fig_id"]): r for r in figures(settings)}
    fig = rows[("PMC5519703", "Fig6")]
    assert (fig["label"], fig["caption"]) == ("Figure 6", first["caption"])
    meta = article(settings, "PMC5519703")
    assert (meta["journal"], meta["year"], meta["title"]) == ("Sci Rep", 2017, first["paper_title"])
    assert meta["license_class"] == "none"  # the manifest gives no license


def test_own_manifest_with_license_and_missing_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img/a.jpg").write_bytes(make_jpeg(3))
    rows = [
        {"image": "img/a.jpg", "pmcid": "123", "figure_number": "Figure 1", "caption": "A cat.",
         "paper_title": "Cats", "journal": "J Cats", "year": "2020",
         "license": "CC BY 4.0", "license_url": "https://creativecommons.org/licenses/by/4.0/"},
        {"image": "img/missing.jpg", "pmcid": "PMC123", "figure_number": "Figure 2",
         "caption": "A dog."},
        "not an object",
    ]
    manifest = tmp_path / "own.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([manifest], settings, workers=1)
    assert (summary.added, summary.figures, summary.figures_with_images) == (1, 2, 1)
    assert summary.skipped == 2 and summary.problems == 1
    assert article(settings, "PMC123")["license_class"] == "cc-by"
    assert [r["caption"] for r in figures(settings)] == ["A cat.", "A dog."]
    reasons = [e["reason"] for e in FigureStore(settings.db_path).errors()]
    assert any("missing.jpg" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons) and any("not JSON" in r for r in reasons)


def test_synthetic_package_conventions(tmp_path):
    truth = {"type": "line plot", "attributes": {"lines": 2}}
    xml = f"""<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
      <article-id pub-id-type="other">SYNTH-1-5</article-id>
      <custom-meta-group><custom-meta><meta-name>figsearch-source</meta-name>
      <meta-value>synthetic</meta-value></custom-meta></custom-meta-group></article-meta></front>
      <body><fig id="fig1"><object-id pub-id-type="figsearch-truth">{json.dumps(truth)}</object-id>
      <label>Figure 1</label><caption><p>Two lines.</p></caption>
      <graphic xlink:href="SYNTH-1-5-fig1"/></fig></body></article>"""
    pkg = write_tar(tmp_path / "SYNTH-1-5.tar.gz", {
        "SYNTH-1-5/SYNTH-1-5.nxml": xml.encode(), "SYNTH-1-5/SYNTH-1-5-fig1.png": _png()})
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([pkg], settings, workers=1)
    assert summary.added_keys == ["synthetic:SYNTH-1-5"]
    [row] = figures(settings)
    assert row["source"] == "synthetic" and row["has_image"] == 1
    assert json.loads(row["attributes"]) == truth


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(buf, format="PNG")
    return buf.getvalue()


def test_changed_article_is_updated_with_stable_figure_ids(shared_data, tmp_path):
    src = (shared_data / "jats/pmc-nxml/pone.0000217.nxml").read_bytes()
    path = tmp_path / "in" / "pone.0000217.nxml"
    path.parent.mkdir()
    path.write_bytes(src)
    settings = Settings(data_dir=tmp_path / "data")
    ingest_paths([path], settings, workers=1)
    before = {r["fig_id"]: r["id"] for r in figures(settings)}
    path.write_bytes(src.replace(b"Fisher's geometric model", b"Fisher's GEOMETRIC model"))
    summary = ingest_paths([path], settings, workers=1)
    assert (summary.updated, summary.updated_keys, summary.added) == (1, ["PMC1790863"], 0)
    after = {r["fig_id"]: (r["id"], r["caption"]) for r in figures(settings)}
    assert {k: v[0] for k, v in after.items()} == before
    assert after["pone-0000217-g001"][1].startswith("Fisher's GEOMETRIC model")


@pytest.mark.slow
def test_acceptance_cli_run_twice(shared_data, tmp_path, capsys):
    data = tmp_path / "D"
    argv = ["ingest", str(shared_data / "jats/packages"), str(shared_data / "jats/pmc-nxml"),
            str(shared_data / "pmc-figures/figures.jsonl"), "--data-dir", str(data),
            "--workers", "2"]
    assert cli_main(argv) == 0
    out = capsys.readouterr()
    assert "ingest: 171 articles added" in out.out
    assert "skipped elife-39122.zip" in out.err and "no JATS article XML" in out.err
    settings = Settings(data_dir=data)
    first = [tuple(r) for r in figures(settings)]
    store = FigureStore(settings.db_path)
    assert store.counts()["figures"] == 214 and store.counts()["figures_with_images"] == 197
    assert [e["item"] for e in store.errors()] == ["elife-39122.zip"]
    package_rows = [r for r in figures(settings) if not r["key"].startswith("PMC")]
    assert len(package_rows) == 8 and all(r["caption"] and r["has_image"] for r in package_rows)
    assert cli_main(argv) == 0
    assert "0 articles added, 0 updated, 171 unchanged" in capsys.readouterr().out
    assert [tuple(r) for r in figures(settings)] == first
    assert store.counts()["articles"] == 171


def test_cli_misuse_and_nothing_readable(tmp_path, capsys):
    assert cli_main(["ingest", "--data-dir", str(tmp_path)]) == 2
    assert cli_main(["ingest", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
    bad = tmp_path / "bad.nxml"
    bad.write_bytes(b"<article><body>")
    assert cli_main(["ingest", str(bad), "--data-dir", str(tmp_path / "d"), "--workers", "1"]) == 1
    assert "malformed XML" in capsys.readouterr().err


def test_one_routing_rule_for_ingest_and_rebuild(tmp_path):
    """Every source goes to one reader, by the same rule in ``ingest`` and ``rebuild``."""
    from indexer.pmc_cloud import ingest_cloud_sources
    from indexer.sources import SourceRoute, route_sources

    fcgi = tmp_path / "oa.xml"
    fcgi.write_bytes(b'<?xml version="1.0"?><OA><records></records></OA>')
    article = tmp_path / "article.xml"
    article.write_bytes(b"<article/>")
    route = route_sources(["s3://pmc-oa-opendata", "pmc:PMC123", "https://m.example/list.csv",
                           "oa_file_list.txt", str(fcgi), str(article), str(tmp_path)])
    assert route == SourceRoute(
        cloud=["s3://pmc-oa-opendata", "pmc:PMC123"],
        file_lists=["https://m.example/list.csv", "oa_file_list.txt", str(fcgi)],
        paths=[str(article), str(tmp_path)])
    assert not route_sources([])
    with pytest.raises(ValueError, match="not PMC Cloud sources"):
        ingest_cloud_sources(Settings(data_dir=tmp_path / "d"), [str(article)])


def test_cli_reads_a_file_list_given_as_a_path(shared_data, tmp_path, capsys):
    """A positional .csv is routed to the file-list reader, as ``--file-list`` and ``rebuild``
    do; its retracted entry removes the stored article."""
    settings = Settings(data_dir=tmp_path / "d")
    _, pkg = build_pmc_package(shared_data / "jats/pmc-nxml/pone.0046493.nxml", tmp_path / "pkgs")
    assert ingest_paths([pkg], settings, workers=1).added_keys == ["PMC3460867"]
    pmcid = "PMC3460867"
    file_list = tmp_path / "oa_bulk.csv"
    file_list.write_text(
        "Article File,Article Citation,AccessionID,LastUpdated (YYYY-MM-DD HH:MM:SS),PMID,"
        f"License,Retracted\noa_package/x/{pmcid}.tar.gz,\"Cit\",{pmcid},"
        "\"2025-01-01 00:00:00\",1,\"CC BY\",yes\n")
    assert cli_main(["ingest", str(file_list), "--data-dir", str(settings.data_dir)]) == 0
    assert "1 removed" in capsys.readouterr().out
    store = FigureStore(settings.db_path)
    try:
        assert store.article_state(pmcid) is None
    finally:
        store.close()
