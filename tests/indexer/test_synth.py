"""The synthetic corpus generator: determinism, coverage, caption/attribute agreement, JATS."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lxml import etree
from PIL import Image

from figsearch.cli import main as cli_main
from indexer import synth

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate_corpus(out, 8, seed=3, workers=1, progress=False)
    return out


def _strings(value: Any) -> list[str]:
    """Every string inside an attributes value (lists and dicts walked)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def test_same_seed_same_bytes_with_any_worker_count(tmp_path: Path, corpus: Path) -> None:
    again = tmp_path / "again"
    summary = synth.generate_corpus(again, 8, seed=3, workers=2, progress=False)
    assert summary.articles == 8 and summary.written == 8
    assert _digests(again) == _digests(corpus)
    other = synth.generate_corpus(tmp_path / "other", 2, seed=4, workers=1, progress=False)
    assert other.figures > 0
    assert _digests(tmp_path / "other")["SYNTH-4-000001.tar.gz"] != _digests(corpus)["SYNTH-3-000001.tar.gz"]


def test_every_figure_type_appears_at_scale() -> None:
    plans = [f for n in range(1, 401) for f in synth.plan_article(0, n).figures]
    counts = Counter(f.fig_type for f in plans)
    assert set(counts) == set(synth.FIGURE_TYPES)
    assert min(counts.values()) >= 20, counts
    panel_counts = [len(f.attributes["panels"]) for f in plans if f.fig_type == "multi_panel"]
    assert set(panel_counts) == {2, 3, 4}
    per_article = Counter(len(synth.plan_article(0, n).figures) for n in range(1, 401))
    assert set(per_article) == {1, 2, 3, 4, 5, 6}


@pytest.mark.parametrize("fig_type", synth.FIGURE_TYPES)
def test_every_type_renders_a_nonblank_image(fig_type: str) -> None:
    rng = np.random.default_rng(11)
    topic = synth.plan_topic(rng)
    plan = (synth.plan_multi_panel if fig_type == "multi_panel" else synth.PLANNERS[fig_type])(rng, topic)
    img = synth.render_figure(plan, np.random.default_rng(12))
    assert img.mode == "RGB"
    assert 300 <= img.width <= 900 and 200 <= img.height <= 640
    assert float(np.asarray(img, np.float32).std()) > 10  # something is drawn
    data, ext = synth.encode_image(img, synth.is_photo(plan))
    assert Image.open(io.BytesIO(data)).format == ("JPEG" if ext == "jpg" else "PNG")


def _panel_texts(fig: synth.FigurePlan) -> list[tuple[list[str], str]]:
    """(attribute strings, caption text that must name them) per panel or for the figure."""
    if fig.fig_type != "multi_panel":
        return [(_strings(fig.attributes), fig.text)]
    parts = re.split(r"\(([A-D])\) ", fig.text)[1:]
    segments = dict(zip(parts[0::2], parts[1::2], strict=True))
    return [(_strings(p["attributes"]), segments[p["label"]]) for p in fig.attributes["panels"]]


def test_caption_words_describe_the_attributes() -> None:
    for n in range(1, 301):
        for fig in synth.plan_article(7, n).figures:
            for terms, text in _panel_texts(fig):
                missing = [s for s in terms if s.lower() not in text.lower()]
                assert not missing, (fig.fig_type, missing, fig.caption)


def test_type_specific_caption_content() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        topic = synth.plan_topic(rng)
        km = synth.plan_kaplan_meier(rng, topic)
        assert topic.disease in km.caption and "Kaplan-Meier" in km.caption
        assert all(g in km.caption for g in km.attributes["groups"])
        wb = synth.plan_western_blot(rng, topic)
        assert all(p in wb.caption for p in wb.attributes["proteins"])
        assert wb.attributes["loading_control"] in wb.attributes["proteins"]
        pw = synth.plan_pathway(rng, topic)
        assert set(pw.attributes["genes"]) <= set(synth.PATHWAYS[pw.attributes["pathway"]])
        assert all(g in pw.caption for g in pw.attributes["genes"])


def _package(path: Path) -> tuple[etree._Element, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    nxml = [name for name in members if name.endswith(".nxml")]
    assert len(nxml) == 1
    return etree.fromstring(members[nxml[0]]), members


def test_jats_parses_and_references_existing_images(corpus: Path) -> None:
    truth = [json.loads(line) for line in (corpus / synth.GROUND_TRUTH).read_text().splitlines()]
    packages = sorted(corpus.glob("*.tar.gz"))
    assert [p.name for p in packages] == [f"SYNTH-3-{n:06d}.tar.gz" for n in range(1, 9)]
    seen = 0
    for path in packages:
        root, members = _package(path)
        ids = {el.get("pub-id-type"): el.text for el in root.iter("article-id")}
        assert ids == {"other": path.name.removesuffix(".tar.gz")}  # no fake PMCID
        assert root.findtext(".//custom-meta/meta-value") == "synthetic"
        assert root.findtext(".//journal-title").startswith("Synthetic ")
        assert 2005 <= int(root.findtext(".//pub-date/year")) <= 2025
        lic = root.find(".//license")
        assert lic is None or lic.get(XLINK_HREF) in {u for _, u, _ in synth.LICENSES}
        for k, fig in enumerate(root.iter("fig"), start=1):
            assert fig.findtext("label") == f"Figure {k}"
            assert fig.findtext("caption/title") and fig.findtext("caption/p")
            href = fig.find("graphic").get(XLINK_HREF)
            image = [n for n in members if Path(n).stem == href]
            assert len(image) == 1, href
            Image.open(io.BytesIO(members[image[0]])).verify()
            row = truth[seen]
            assert json.loads(fig.findtext("object-id[@pub-id-type='figsearch-truth']")) == {
                "type": row["type"], "attributes": row["attributes"]}
            assert (row["article_id"], row["figure_id"], row["image"]) == (
                ids["other"], f"F{k}", Path(image[0]).name)
            seen += 1
    assert seen == len(truth)


def test_rerun_resumes_and_keeps_existing_packages(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "resume"
    out.mkdir()
    for p in corpus.glob("SYNTH-3-00000[1-5].tar.gz"):
        (out / p.name).write_bytes(p.read_bytes())
    summary = synth.generate_corpus(out, 8, seed=3, workers=1, progress=False)
    assert (summary.articles, summary.written) == (8, 3)
    assert _digests(out) == _digests(corpus)
    assert not list(out.glob(".*tmp"))


def test_cli_writes_corpus_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["synth", "--n", "2", "--seed", "9", "--workers", "1", "--quiet", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"synth: 2 articles \(2 written, 0 kept\), \d+ figures, .* figures/s", out)
    assert len(list(tmp_path.glob("SYNTH-9-*.tar.gz"))) == 2
    assert cli_main(["synth", "--n", "0", str(tmp_path)]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_ingesting_a_synthetic_corpus_stores_truth_and_source(tmp_path: Path, corpus: Path) -> None:
    from figsearch.core.config import Settings
    from figsearch.store import FigureStore
    from indexer.ingest import ingest_paths

    settings = Settings(data_dir=tmp_path / "data")
    packages = sorted(corpus.glob("*.tar.gz"))[:3]
    summary = ingest_paths(packages, settings, workers=1)
    truth = [json.loads(line) for line in (corpus / synth.GROUND_TRUTH).read_text().splitlines()]
    truth = [t for t in truth if t["package"] in {p.name for p in packages}]
    store = FigureStore(settings.db_path)
    try:
        assert store.counts()["figures_with_images"] == summary.figures == len(truth)
        stored = store.get_figures(range(1, len(truth) + 1))
        by_key = {(f["article_key"], f["fig_id"]): f for f in stored.values()}
        for row in truth:
            fig = by_key[(f"synthetic:{row['article_id']}", row["figure_id"])]
            assert fig["attributes"] == {"type": row["type"], "attributes": row["attributes"]}
            assert fig["source"] == "synthetic" and fig["pmcid"] is None
            assert fig["journal"].startswith("Synthetic ") and fig["has_image"]
            assert fig["license_class"] in {"cc-by", "cc-by-nc", "none"}
    finally:
        store.close()


def test_ingesting_the_corpus_folder_skips_ground_truth_silently(tmp_path: Path, corpus: Path) -> None:
    """The folder holds ground_truth.jsonl beside the packages: walking it is not an error."""
    from figsearch.core.config import Settings
    from figsearch.store import FigureStore
    from indexer.ingest import ingest_paths

    small = tmp_path / "small"
    small.mkdir()
    for package in sorted(corpus.glob("*.tar.gz"))[:2]:
        (small / package.name).write_bytes(package.read_bytes())
    (small / synth.GROUND_TRUTH).write_text((corpus / synth.GROUND_TRUTH).read_text())
    settings = Settings(data_dir=tmp_path / "data")
    summary = ingest_paths([small], settings, workers=1)
    store = FigureStore(settings.db_path)
    try:
        assert summary.added == 2 and store.errors() == []
    finally:
        store.close()
