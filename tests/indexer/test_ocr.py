"""OCR of figure images with the offline engine: drawn words, cache by hash, bad images, workers."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageDraw, ImageFont

from figsearch.core.config import Settings
from figsearch.imaging import store_image
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.search import SearchService
from figsearch.store import FigureStore
from indexer.ocr import detect, make_engine, ocr_step, read_widest, recognise, run_ocr

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def word_image(words: list[str], seed: int = 0) -> Image.Image:
    """A small diagram: each word in a box, boxes joined by arrows (white background)."""
    font = ImageFont.truetype(str(FONT), 26)
    img = Image.new("RGB", (200 * len(words), 120 + seed), "white")
    draw = ImageDraw.Draw(img)
    for i, word in enumerate(words):
        x = 20 + 200 * i
        draw.rectangle((x - 8, 30, x + 150, 80), outline="black", width=2)
        draw.text((x, 38), word, font=font, fill="black")
        if i:
            draw.line((x - 48, 55, x - 10, 55), fill="black", width=3)
    return img


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine():
    return make_engine(threads=2)


def test_ocr_reads_the_words_drawn_in_an_image(engine):
    text, boxes = recognise(engine, word_image(["SMAD4", "ZEB1", "Hypoxia"]))
    assert text.split() == ["SMAD4", "ZEB1", "Hypoxia"] and boxes == 3
    assert recognise(engine, Image.new("RGB", (300, 120), "white")) == ("", 0)


def test_reading_only_the_widest_word_boxes(engine):
    """Query OCR reads the widest word-shaped boxes only: a limit of one reads the longest
    word, a larger one all of them in reading order."""
    img = word_image(["SMAD4", "ZEB1", "Hypoxia"])
    found = detect(engine, img)
    assert len(found.boxes) == 3
    assert read_widest(engine, found, 1) == "Hypoxia"
    assert read_widest(engine, found, 10).split() == ["SMAD4", "ZEB1", "Hypoxia"]
    assert read_widest(engine, found, 0) == ""
    assert detect(engine, Image.new("RGB", (300, 120), "white")).boxes == []


def _figure(settings: Settings, fig_id: str, caption: str, data: bytes) -> FigureRecord:
    stored = store_image(data, settings.images_dir)
    return FigureRecord(fig_id, label="Figure 1", caption=caption, image_path=stored.image_path,
                        sha256=stored.sha256, width=stored.width, height=stored.height)


def _article(key: str) -> ArticleRecord:
    return ArticleRecord(key=key, source="test", pmcid=key, title="Cell biology", year=2021,
                         license_class="cc-by", content_hash="h")


@pytest.fixture()
def corpus(tmp_path):
    """Two articles sharing one diagram image, a second image, and a figure whose file is bad."""
    settings = Settings(data_dir=tmp_path, ocr_workers=1)
    store = FigureStore(settings.db_path)
    diagram = jpeg(word_image(["KRAS", "BRAF"]))
    store.upsert_article(_article("PMC1"), [
        _figure(settings, "F1", "Overview of the pathway studied here", diagram),
        _figure(settings, "F2", "Quantification of cell counts", jpeg(word_image(["Apoptosis"]))),
    ])
    store.upsert_article(_article("PMC2"), [_figure(settings, "F1", "Reused scheme", diagram)])
    bad = _figure(settings, "F2", "A figure whose file was damaged", jpeg(word_image(["x"], 1)))
    (settings.images_dir / str(bad.image_path)).write_bytes(b"not a jpeg at all")
    store.upsert_article(_article("PMC3"), [bad])
    yield settings, store
    store.close()


def test_a_word_only_in_the_image_finds_the_figure_and_a_rerun_reads_nothing(corpus):
    settings, store = corpus
    assert store.keyword_search("KRAS", 10) == []
    first = run_ocr(store, settings.images_dir, workers=1, progress=False)
    # Three distinct images read once each (the shared diagram once for both articles).
    assert (first.images, first.with_text, first.failed, first.cached) == (3, 2, 1, 0)
    assert "3 images read (2 with text, 1 unreadable skipped)" in first.line()
    assert [e["stage"] for e in store.errors()] == ["ocr"]
    assert "unreadable image" in store.errors()[0]["reason"]

    svc = SearchService(store, None, None, settings)
    hits = svc.search_text("braf", k=10, mode="keyword", dedup=False).hits
    assert sorted(h.figure["pmcid"] for h in hits) == ["PMC1", "PMC2"]
    assert all(h.ocr_snippet == "KRAS\n<mark>BRAF</mark>" for h in hits)
    assert [h.figure["pmcid"] for h in svc.search_text("apoptosis", mode="keyword").hits] == ["PMC1"]

    again = run_ocr(store, settings.images_dir, workers=1, progress=False)
    assert (again.images, again.cached) == (0, 3)


def test_the_ocr_setting_switches_the_index_step_and_workers_run_in_parallel(corpus):
    settings, store = corpus
    assert ocr_step(settings.model_copy(update={"ocr": False}), store, progress=False) is None
    assert store.ocr_done_count() == 0
    summary = ocr_step(settings.model_copy(update={"ocr": True, "ocr_workers": 2}), store,
                       progress=False)
    assert summary is not None and summary.workers == 2
    assert (summary.images, summary.with_text, summary.failed) == (3, 2, 1)
    assert len(store.keyword_search("KRAS", 10)) == 2


def test_limit_stops_early_and_the_next_run_resumes(corpus):
    settings, store = corpus
    assert run_ocr(store, settings.images_dir, limit=1, progress=False).images == 1
    rest = run_ocr(store, settings.images_dir, progress=False)
    assert (rest.images, rest.cached) == (2, 1)


def test_cli_without_a_store_says_what_to_do(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "figsearch.cli", "ocr", "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "run `figsearch ingest` first" in proc.stderr


def test_figsearch_index_runs_the_ocr_step_when_enabled(corpus, tiny_model_dir):
    from figsearch.encoders import load_model
    from indexer.indexing import index_all

    settings, store = corpus
    encoder = load_model(str(tiny_model_dir), device="cpu", batch_size=8)
    report = index_all(settings.model_copy(update={"ocr": True}), encoder=encoder, progress=False)
    assert report is not None and report.count == 3  # the damaged image is skipped there too
    assert store.ocr_done_count() == 3 and len(store.keyword_search("KRAS", 10)) == 2


def test_export_then_import_into_another_store_reads_nothing_again(corpus, tmp_path):
    from indexer.ocr import export_ocr, import_ocr

    settings, store = corpus
    run_ocr(store, settings.images_dir, progress=False)
    exported = tmp_path / "ocr.jsonl"
    assert export_ocr(store, exported) == 4  # one line per figure, the shared image twice
    other = FigureStore(tmp_path / "other" / "figsearch.db")
    try:
        other.upsert_article(_article("PMC9"), [FigureRecord(
            "F1", caption="Imported", image_path="missing.jpg",
            sha256=store.get_figure(store.figure_ids_for_article("PMC2")[0])["sha256"])])
        assert import_ocr(other, exported) == 3
        assert len(other.keyword_search("BRAF", 10)) == 1
        assert other.ocr_pending_count() == 0  # the image file is not even needed now
    finally:
        other.close()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sha256": "abc", "ocr_text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: sha256 'abc' is not 64 hex digits"):
        import_ocr(store, bad)
