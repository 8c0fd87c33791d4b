"""Find the source of a figure (figsearch.source_match): crops and screenshots of real PMC
figures find their figure first, by local-feature verification alone (the index's image model
is the tiny random one, whose ranking of a crop is noise), and a query whose source is not in
the index is never verified."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.source_queries import framed
from figsearch import source_match
from figsearch.client import signals_line
from figsearch.imaging import open_image
from figsearch.search import SearchInputError
from tests.figsearch.api_fixtures import N_REAL, loaded_app, small_search_service

#: rows of shared/data/pmc-figures/figures.jsonl used as sources: the small index holds the
#: first N_REAL; OUTSIDE rows are not in it
SOURCES = (4, 11, 23)
OUTSIDE = (N_REAL + 3, N_REAL + 20, N_REAL + 41)


def _row(shared_data: Path, row: int) -> dict:
    lines = (shared_data / "pmc-figures" / "figures.jsonl").read_text().splitlines()
    return json.loads(lines[row])


def _row_image(shared_data: Path, row: int) -> tuple[Image.Image, str]:
    """The original image of a figures.jsonl row and the sha256 the store knows it by."""
    data = (shared_data / "pmc-figures" / _row(shared_data, row)["image"]).read_bytes()
    return open_image(data), hashlib.sha256(data).hexdigest()


def _upload(img: Image.Image) -> Image.Image:
    """The image as an upload arrives at the service: JPEG bytes, decoded."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return open_image(buf.getvalue())


def _centre(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * frac), round(h * frac)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def _source_signal(hit) -> float | None:
    return next((s.raw for s in hit.signals if s.name == "source"), None)


#: verification of every candidate, even on a busy machine with a cold feature cache: these
#: tests are about what verification finds (test_no_budget_keeps_the_dense_order: the budget)
BUDGET_MS = 20_000.0


@pytest.fixture(scope="module")
def service(small_index_data_dir, tiny_model_dir):
    with small_search_service(small_index_data_dir, tiny_model_dir) as svc:
        svc.settings = svc.settings.model_copy(update={"image_query_budget_ms": BUDGET_MS})
        yield svc


@pytest.mark.parametrize("row", SOURCES)
def test_centre_crop_finds_its_figure_first(service, shared_data, row):
    img, sha = _row_image(shared_data, row)
    page = service.search_image(_upload(_centre(img, 0.5)), k=10)
    top = page.hits[0]
    assert top.figure["sha256"] == sha, [h.figure["sha256"][:8] for h in page.hits]
    assert _source_signal(top) is not None and _source_signal(top) >= source_match.MIN_INLIERS
    assert [h.rank for h in page.hits] == list(range(1, len(page.hits) + 1))
    # verification is what put it there: the tiny random model alone ranks it anywhere
    off = service.settings
    service.settings = off.model_copy(update={"source_verify": False})
    try:
        dense = service.search_image(_upload(_centre(img, 0.5)), k=10)
    finally:
        service.settings = off
    assert all(_source_signal(h) is None for h in dense.hits)


def test_bordered_screenshot_finds_its_figure_first(service, shared_data):
    img, sha = _row_image(shared_data, SOURCES[1])
    shot = framed(img, random.Random(1))
    page = service.search_image(_upload(shot), k=5)
    assert page.hits[0].figure["sha256"] == sha
    assert _source_signal(page.hits[0]) is not None
    assert all(_source_signal(h) is None for h in page.hits[1:2] if h.figure["sha256"] != sha)


@pytest.mark.parametrize("row", OUTSIDE)
def test_figure_not_in_the_index_is_never_verified(service, shared_data, row):
    img, sha = _row_image(shared_data, row)
    for query in (_centre(img, 0.6), framed(img, random.Random(row))):
        page = service.search_image(_upload(query), k=10)
        assert sha not in {h.figure["sha256"] for h in page.hits}
        assert [h.id for h in page.hits if _source_signal(h) is not None] == []
        run = source_match.last_run()
        assert run is not None and run.tried >= 10 and not run.verified


def test_no_budget_keeps_the_dense_order(service, shared_data):
    img, _sha = _row_image(shared_data, SOURCES[0])
    query = _upload(_centre(img, 0.5))
    base = service.settings
    try:
        service.settings = base.model_copy(update={"source_verify": False})
        dense = [h.id for h in service.search_image(query, k=10).hits]
        service.settings = base.model_copy(update={"image_query_budget_ms": 0.0})
        page = service.search_image(query, k=10)
    finally:
        service.settings = base
    assert [h.id for h in page.hits] == dense
    assert source_match.last_run().tried == 0


def test_pages_follow_the_verified_order(service, shared_data):
    img, sha = _row_image(shared_data, SOURCES[2])
    query = _upload(_centre(img, 0.7))
    first = service.search_image(query, k=5)
    second = service.search_image(query, k=5, offset=5)
    both = service.search_image(query, k=10)
    assert first.hits[0].figure["sha256"] == sha
    assert [h.id for h in first.hits + second.hits] == [h.id for h in both.hits]
    assert [h.rank for h in second.hits] == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("k,offset,fragment", [(0, 0, "k must be"), (500, 0, "k must be"),
                                                (5, -1, "offset must be")])
def test_bad_page_is_refused(service, shared_data, k, offset, fragment):
    img, _sha = _row_image(shared_data, SOURCES[0])
    with pytest.raises(SearchInputError, match=fragment):
        service.search_image(_upload(_centre(img, 0.5)), k=k, offset=offset)


def test_without_opencv_image_search_is_dense_only(service, shared_data, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv were not installed
    monkeypatch.setattr(source_match, "_optional", {})  # nothing checked yet
    img, _sha = _row_image(shared_data, SOURCES[0])
    with caplog.at_level("WARNING", logger="figsearch.source"):
        page = service.search_image(_upload(_centre(img, 0.5)), k=5)
    assert len(page.hits) == 5 and all(_source_signal(h) is None for h in page.hits)
    assert "OpenCV" in caplog.text and source_match.last_run().skipped == "OpenCV is not installed"


def test_without_rapidocr_image_queries_go_without_query_ocr(service, shared_data, monkeypatch,
                                                             caplog):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed
    monkeypatch.setattr(source_match, "_optional", {})  # nothing checked yet
    monkeypatch.setattr(source_match, "CONCLUSIVE_INLIERS", 1 << 30)  # OCR would be wanted
    img, sha = _row_image(shared_data, SOURCES[0])
    base = service.settings
    service.settings = base.model_copy(update={"query_ocr": True})
    try:
        with caplog.at_level("WARNING", logger="figsearch.source"):
            page = service.search_image(_upload(_centre(img, 0.5)), k=5)
            service.search_image(_upload(_centre(img, 0.6)), k=5)
    finally:
        service.settings = base
    assert page.hits[0].figure["sha256"] == sha  # verification still finds the source
    assert source_match.last_run().ocr_words is None
    assert caplog.text.count("rapidocr is not installed") == 1  # said once, not per query


def test_api_says_which_hit_is_the_source(small_index_settings, shared_data):
    img, _sha = _row_image(shared_data, SOURCES[0])
    row = _row(shared_data, SOURCES[0])
    buf = io.BytesIO()
    _centre(img, 0.5).save(buf, format="JPEG", quality=85)
    settings = small_index_settings.model_copy(update={"image_query_budget_ms": BUDGET_MS})
    with TestClient(loaded_app(settings)) as client:
        r = client.post("/v1/search/image", params={"k": 5},
                        files={"image": ("crop.jpg", buf.getvalue(), "image/jpeg")})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert (top["pmcid"], top["label"]) == (row["pmcid"], row["figure_number"])
        source = [s for s in top["signals"] if s["name"] == "source"]
        assert source and source[0]["raw"] >= source_match.MIN_INLIERS
        assert source[0]["contribution"] == 0.0
        line = signals_line(top["signals"])
        assert line.startswith(f"source of the query image ({int(source[0]['raw'])} matching "
                               "keypoints) · image "), line
        cut = client.post("/v1/search/image",
                          files={"image": ("crop.jpg", buf.getvalue()[:2000], "image/jpeg")})
        assert cut.status_code == 400 and "truncated" in cut.json()["detail"]


def _wait_for_query_ocr_to_be_free(timeout_s: float = 120.0) -> None:
    """Query OCR runs one at a time per process, and a query arriving while another's runs
    goes without (by design). Earlier queries' OCR threads finish their current stage after
    being dropped, which on a loaded machine can outlast the next query's start."""
    assert source_match._ocr_lock.acquire(timeout=timeout_s), "query OCR still running"
    source_match._ocr_lock.release()


def test_query_ocr_adds_the_figures_its_words_match(service, shared_data, monkeypatch):
    """With query OCR the words read in the query image bring figures whose text holds them
    into the candidates, beyond the dense ones - when the image match is not conclusive; a
    conclusive one ends the query before OCR starts."""
    img, sha = _row_image(shared_data, 23)  # a pathway diagram: TLR3, MyD88, TRAF6, ...
    query = _upload(_centre(img, 0.7))
    base = service.settings
    service.settings = base.model_copy(update={"query_ocr": True, "source_candidates": 3})
    try:
        conclusive = service.search_image(_upload(img), k=10)  # the whole figure
        run = source_match.last_run()
        assert conclusive.hits[0].figure["sha256"] == sha
        assert max(run.verified.values()) >= source_match.CONCLUSIVE_INLIERS
        assert run.ocr_words is None and run.ocr_ms is None  # OCR never started
        monkeypatch.setattr(source_match, "CONCLUSIVE_INLIERS", 1 << 30)  # nothing conclusive
        _wait_for_query_ocr_to_be_free()
        page = service.search_image(query, k=10)
    finally:
        service.settings = base
    run = source_match.last_run()
    assert run.ocr_words and run.ocr_ms is not None and run.ocr_ms > 0
    extra = run.pool[3:]
    assert extra, run.ocr_words
    words = {w.lower() for w in run.ocr_words}
    for figure in service.store.get_figures(extra).values():
        text = " ".join(str(figure.get(key) or "") for key in ("caption", "label", "title",
                                                              "ocr_text")).lower()
        assert any(w in text for w in words), (figure["id"], run.ocr_words)
    assert page.hits[0].figure["sha256"] == sha or sha not in {
        service.store.get_figures([i])[i]["sha256"] for i in run.pool}


def _stored_features(shared_data: Path, row: int):
    path = shared_data / "pmc-figures" / _row(shared_data, row)["image"]
    return source_match.file_features(path), path


@pytest.mark.parametrize("row", (SOURCES[0], 5))
def test_small_crop_is_found_by_guided_rematching(service, shared_data, row):
    """A quarter-side crop holds few of its figure's keypoints: its first fit stays under the
    threshold, and re-matching the region where it lands, at the crop's scale, verifies it."""
    img, sha = _row_image(shared_data, row)
    query_img = _upload(_centre(img, 0.25))
    query = source_match.query_features(query_img)
    candidate, path = _stored_features(shared_data, row)
    fit = source_match.match(query, candidate)
    assert source_match.REFINE_FROM <= fit.count < source_match.MIN_INLIERS  # the weak case
    again = source_match.refine(query, fit, candidate, path)
    assert again >= source_match.REFINE_MIN_INLIERS and again > 5 * fit.count
    # the same placement on another figure finds nothing there
    other, other_path = _stored_features(shared_data, row + 1)
    assert source_match.refine(query, fit, other, other_path) < source_match.REFINE_MIN_INLIERS

    page = service.search_image(query_img, k=10)
    assert page.hits[0].figure["sha256"] == sha, [h.figure["sha256"][:8] for h in page.hits]
    assert _source_signal(page.hits[0]) >= source_match.REFINE_MIN_INLIERS


def test_close_verified_candidates_are_ordered_by_rematching(shared_data):
    """Two verified candidates with close first counts - the wrong one ahead - are re-matched,
    and the source, with hundreds of inliers in its region, goes first; with nothing verified
    the strongest weak fit that re-matches is verified and the others are not."""
    img, _sha = _row_image(shared_data, SOURCES[0])
    query = source_match.query_features(_upload(_centre(img, 0.25)))
    source, path = _stored_features(shared_data, SOURCES[0])
    other, other_path = _stored_features(shared_data, SOURCES[0] + 1)
    fit = source_match.match(query, source)
    tried = {1: source_match.Tried(fit, source, path),
             2: source_match.Tried(fit, other, other_path)}  # a wrong figure, same placement
    ordered = source_match.refined(query, {1: 21, 2: 25}, tried, deadline=float("inf"))
    assert ordered[2] == 25 and ordered[1] >= source_match.REFINE_MIN_INLIERS
    assert max(ordered, key=ordered.__getitem__) == 1
    found = source_match.refined(query, {}, tried, deadline=float("inf"))
    assert list(found) == [1]
    assert source_match.refined(query, {}, tried, deadline=0.0) == {}  # no time: as it was
