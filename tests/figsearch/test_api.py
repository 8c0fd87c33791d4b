"""The HTTP API in-process (FastAPI TestClient) over a real small index: contract + bad input."""

from __future__ import annotations

import io
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from figsearch.api.main import create_app
from figsearch.core.config import Settings
from figsearch.store import FigureStore
from tests.figsearch.api_fixtures import COPY_PMCID, SYNTHETIC_KEY, loaded_app

RESULT_FIELDS = {
    "id", "rank", "score", "label", "caption", "caption_highlighted", "figure_type",
    "figure_type_score", "thumbnail_url", "image_url", "pmcid", "article_url", "figure_url",
    "title", "journal", "year", "license", "license_url", "doi", "source", "ocr_snippet",
    "article_license", "figure_license", "rights_statement", "rights_holder", "third_party",
    "reuse", "reusable", "authors", "attribution",
    "signals", "panel",
}
RESPONSE_FIELDS = {"query", "mode", "k", "offset", "index_version", "took_ms", "results",
                   "match_quality", "match_note", "match_evidence", "filters", "permalink"}


@pytest.fixture(scope="module")
def settings(small_index_data_dir, tiny_model_dir) -> Settings:
    return Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                    rate_limit_per_minute=0, dedup_threshold=0.99999, max_upload_mb=1.0,
                    max_image_pixels=4_000_000)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(loaded_app(settings), raise_server_exceptions=True) as c:
        yield c


def png_bytes(size=(64, 48), colour=(10, 120, 200), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def assert_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment.lower() in body["detail"].lower(), body


# -- contract ---------------------------------------------------------------------------------
def test_search_response_has_exact_fields(client):
    r = client.get("/v1/search", params={"q": "signaling pathways", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == RESPONSE_FIELDS
    assert body["mode"] == "hybrid" and body["k"] == 5 and len(body["results"]) == 5
    for hit in body["results"]:
        assert set(hit) == RESULT_FIELDS
        assert hit["thumbnail_url"].endswith(f"/v1/figures/{hit['id']}/thumbnail")
    assert any("<mark>" in h["caption_highlighted"] for h in body["results"])


def test_links_for_pmc_and_synthetic(client):
    hits = client.get("/v1/search", params={"q": "synthetic bar chart", "k": 40,
                                            "mode": "keyword"}).json()["results"]
    synthetic = [h for h in hits if h["source"] == "synthetic"]
    assert len(synthetic) == 2 and all(h["article_url"] is None for h in synthetic)
    real = client.get("/v1/search", params={"q": "TREM2", "mode": "keyword"}).json()["results"][0]
    assert real["article_url"] == f"https://pmc.ncbi.nlm.nih.gov/articles/{real['pmcid']}/"
    assert real["figure_url"].startswith(real["article_url"] + "figure/")


def test_filters_and_paging(client):
    r = client.get("/v1/search", params={"q": "pathway", "k": 10, "license": "commercial",
                                         "year_from": 2015, "year_to": 2019})
    hits = r.json()["results"]
    assert hits and all(h["license"] in ("cc-by", "cc0") and 2015 <= h["year"] <= 2019
                        for h in hits)
    page2 = client.get("/v1/search", params={"q": "pathway", "k": 5, "offset": 5, "mode": "dense"})
    both = client.get("/v1/search", params={"q": "pathway", "k": 10, "mode": "dense"})
    assert [h["id"] for h in page2.json()["results"]] == [h["id"] for h in both.json()["results"][5:]]
    typed = client.get("/v1/search", params={"q": "chart", "figure_type": "chart/plot"}).json()
    assert {h["figure_type"] for h in typed["results"]} == {"chart/plot"}
    known_but_absent = client.get("/v1/search", params={"q": "x", "figure_type": "CT"})
    assert known_but_absent.status_code == 200 and known_but_absent.json()["results"] == []


def test_reusable_license_filter(client):
    """``license=reusable``: only figures whose own rights allow reuse (here all of the open
    ones, non-commercial included: no fixture figure has rights of its own)."""
    every = client.get("/v1/search", params={"q": "pathway", "k": 50, "mode": "keyword"}).json()
    r = client.get("/v1/search", params={"q": "pathway", "k": 50, "mode": "keyword",
                                         "license": "reusable"})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert hits and all(h["reusable"] and h["reuse"].endswith("attribution") or
                        h["reuse"] == "cc0: free to reuse" for h in hits)
    assert {h["id"] for h in hits} == {h["id"] for h in every["results"] if h["reusable"]}
    assert any(h["license"] == "cc-by-nc" for h in hits)
    hit = hits[0]
    assert hit["attribution"].startswith(hit["label"] or "Figure")
    assert "License: CC BY" in hit["attribution"]


def test_batch_text_and_vector_queries(client):
    vec = [0.5] * 32
    r = client.post("/v1/search", json={"queries": [{"q": "TREM2"}, {"vector": vec}], "k": 3,
                                        "mode": "keyword"})
    assert r.status_code == 200, r.text
    first, second = r.json()["responses"]
    assert first["mode"] == "keyword" and "TREM2" in first["results"][0]["caption"]
    assert second["mode"] == "dense" and len(second["results"]) == 3


def test_image_search_and_similar(client, shared_data):
    jpg = next((shared_data / "pmc-figures" / "images").glob("*.jpg")).read_bytes()
    r = client.post("/v1/search/image", params={"k": 4}, files={"image": ("q.jpg", jpg, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4
    sim = client.get("/v1/figures/3/similar", params={"k": 4}).json()
    assert len(sim["results"]) == 4 and 3 not in [h["id"] for h in sim["results"]]


def test_figure_article_facets_stats(client):
    fig = client.get("/v1/figures/1").json()
    assert fig["id"] == 1 and fig["in_index"] and fig["fig_id"]
    art = client.get(f"/v1/articles/{fig['pmcid']}").json()
    assert art["pmcid"] == fig["pmcid"] and 1 in [f["id"] for f in art["figures"]]
    synthetic = client.get(f"/v1/articles/{SYNTHETIC_KEY}").json()
    assert synthetic["article_url"] is None and len(synthetic["figures"]) == 2
    facets = client.get("/v1/facets").json()
    assert set(facets["figure_types"]) == {"chart/plot", "diagram/pathway", "multi-panel figure"}
    assert "commercial" in facets["license_options"] and facets["years"]["min"] == 2001
    assert COPY_PMCID not in facets["journals"]
    stats = client.get("/v1/stats").json()
    assert stats["ready"] and stats["index_count"] == 39 and stats["dim"] == 32
    assert client.get("/readyz").status_code == 200 and client.get("/healthz").json()["status"] == "ok"


def test_image_routes_cache_headers_and_etag(client):
    r = client.get("/v1/figures/1/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    Image.open(io.BytesIO(r.content)).verify()
    again = client.get("/v1/figures/1/image", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    thumb = client.get("/v1/figures/1/thumbnail")
    assert thumb.status_code == 200 and len(thumb.content) < len(r.content)


def test_metrics_count_requests_by_route(client):
    client.get("/v1/figures/2")
    body = client.get("/metrics").text
    assert 'figsearch_http_requests_total{method="GET",route="/v1/figures/{figure_id}",status="200"}' in body
    assert "figsearch_http_request_duration_seconds_bucket" in body


# -- bad input -> 4xx JSON, never 5xx ------------------------------------------------------------
@pytest.mark.parametrize("params,status,fragment", [
    ({"q": ""}, 400, "empty"),
    ({"q": "   "}, 400, "empty"),
    ({"q": "x" * 600}, 400, "limit is 512"),
    ({"q": "a", "k": 0}, 422, "query parameter k"),
    ({"q": "a", "k": 500}, 400, "k must be between 1 and 200"),
    ({"q": "a", "k": "ten"}, 422, "valid integer"),
    ({"q": "a", "offset": -3}, 422, "query parameter offset"),
    ({"q": "a", "offset": 5000}, 400, "offset must be"),
    ({"q": "a", "mode": "fuzzy"}, 422, "mode"),
    ({"q": "a", "license": "free"}, 422, "license"),
    ({"q": "a", "figure_type": "selfie"}, 400, "unknown figure_type"),
    ({"q": "a", "year_from": "20x0"}, 422, "year_from"),
    ({"q": "a", "year_from": 2020, "year_to": 2010}, 400, "after year_to"),
    ({}, 422, "query parameter q: field required"),
])
def test_bad_search_parameters(client, params, status, fragment):
    assert_error(client.get("/v1/search", params=params), status, fragment)


def test_validation_errors_have_detail_and_errors(client):
    body = client.get("/v1/search", params={"q": "a", "k": -1, "mode": "x"}).json()
    assert isinstance(body["detail"], str) and len(body["errors"]) == 2
    assert {tuple(e["loc"]) for e in body["errors"]} == {("query", "k"), ("query", "mode")}


@pytest.mark.parametrize("q", ['"', "kinase*", "NEAR(a b, 2)", "AND(", "((a)", "x) OR (y",
                               "1; DROP TABLE figures--", "' OR 1=1 --", "%", "\\"])
def test_fts_and_sql_strings_just_search(client, q):
    for mode in ("hybrid", "keyword"):
        r = client.get("/v1/search", params={"q": q, "mode": mode})
        assert r.status_code == 200, r.text
    assert client.get("/v1/stats").json()["store"]["figures"] == 39


@pytest.mark.parametrize("payload,fragment", [
    (b"this is not an image", "not a recognised image"),
    (b"", "empty"),
    (png_bytes(fmt="JPEG")[:200], "truncated"),
    (png_bytes(size=(2500, 2000)), "decompression bomb"),
    (png_bytes(size=(2000, 20)), "aspect ratio"),
])
def test_bad_uploads(client, payload, fragment):
    r = client.post("/v1/search/image", files={"image": ("x.png", payload, "image/png")})
    assert_error(r, 400, fragment)


def test_upload_without_file_is_422(client):
    assert_error(client.post("/v1/search/image", data={"x": "1"}), 422, "image")


def test_upload_over_limit_by_content_length(client):
    big = b"\0" * (1024 * 1024 + 10)
    r = client.post("/v1/search/image", files={"image": ("big.png", big, "image/png")})
    assert_error(r, 413, "limit")


def test_upload_over_limit_when_streamed_without_length(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = client.post("/v1/search/image", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "limit")


@pytest.mark.parametrize("body,status,fragment", [
    ({"queries": []}, 422, "at least 1"),
    ({"queries": [{}]}, 422, "exactly one"),
    ({"queries": [{"q": "a", "vector": [1.0]}]}, 422, "exactly one"),
    ({"queries": [{"vector": [0.1] * 31}]}, 400, "queries[0]: vector has 31 dimensions"),
    ({"queries": [{"q": "ok"}, {"q": " "}]}, 400, "queries[1]: query is empty"),
    ({"queries": [{"vector": ["x"] * 32}]}, 422, "valid number"),
    ({"queries": [{"q": "a"}], "k": 0}, 422, "body field k:"),
])
def test_bad_batch_bodies(client, body, status, fragment):
    assert_error(client.post("/v1/search", json=body), status, fragment)


def test_non_finite_vector_is_400(client):
    raw = '{"queries": [{"vector": [NaN' + ", 0.1" * 31 + "]}]}"
    r = client.post("/v1/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "detail" in r.json()
    inf = '{"queries": [{"vector": [Infinity' + ", 0.1" * 31 + "]}]}"
    r = client.post("/v1/search", content=inf, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "detail" in r.json()


def test_malformed_json_is_422(client):
    r = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "json")


@pytest.mark.parametrize("path,status", [
    ("/v1/figures/999999", 404), ("/v1/figures/0", 422), ("/v1/figures/abc", 422),
    ("/v1/figures/999999/image", 404), ("/v1/figures/999999/thumbnail", 404),
    ("/v1/figures/999999/similar", 404), ("/v1/articles/PMC000", 404),
    ("/v1/figures/..%2F..%2Fetc%2Fpasswd/image", 404), ("/v1/figures/1/../../etc/passwd", 404),
    ("/v1/nothing", 404),
])
def test_unknown_ids_and_paths(client, path, status):
    r = client.get(path)
    assert r.status_code == status and "detail" in r.json()


def test_stored_path_traversal_is_refused(small_index_data_dir, settings, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_index_data_dir, data, symlinks=True)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(png_bytes(fmt="JPEG"))
    store = FigureStore(data / "figsearch.db")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE figures SET image_path = '../../secret.jpg', "
                          "thumb_path = '/etc/passwd' WHERE id = 2"))
    store.close()
    with TestClient(loaded_app(settings.model_copy(update={"data_dir": data}))) as c:
        assert_error(c.get("/v1/figures/2/image"), 404, "escapes the image directory")
        assert_error(c.get("/v1/figures/2/thumbnail"), 404, "escapes the image directory")


# -- readiness, admin, access ---------------------------------------------------------------------
def test_not_ready_without_index(tmp_path, tiny_model_dir):
    s = Settings(data_dir=tmp_path, model=str(tiny_model_dir), rate_limit_per_minute=0)
    with TestClient(create_app(s)) as c:
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "no index")
        assert_error(c.get("/v1/search", params={"q": "x"}), 503, "not ready")
        assert c.get("/v1/stats").json()["ready"] is False
        assert_error(c.get("/v1/figures/1"), 503, "no figure store")


def test_admin_reload_is_off_without_token(client):
    assert_error(client.post("/v1/admin/reload"), 404, "disabled")
    assert_error(client.post("/v1/admin/reload", headers={"Authorization": "Bearer x"}), 404,
                 "disabled")


def test_admin_reload_needs_the_token(settings):
    app = loaded_app(settings.model_copy(update={"admin_token": "s3cret"}))
    with TestClient(app) as c:
        assert_error(c.post("/v1/admin/reload"), 401, "bearer")
        assert_error(c.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"}), 403,
                     "wrong")
        ok = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["reloaded"] is False


def test_cors_closed_by_default_and_configurable(client, settings):
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=headers).headers
    app = loaded_app(settings.model_copy(update={"cors_origins": "https://ui.example"}))
    with TestClient(app) as c:
        ok = c.options("/v1/search", headers={**headers, "Origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        bad = c.get("/healthz", headers=headers)
        assert "access-control-allow-origin" not in bad.headers


def test_rate_limit_returns_429_with_retry_after(settings):
    app = loaded_app(settings.model_copy(update={"rate_limit_per_minute": 3}))
    with TestClient(app) as c:
        codes = [c.get("/v1/figures/1").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.get("/v1/figures/1")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # probes are never limited


def test_api_is_read_only(client):
    for method, path in [("PUT", "/v1/figures/1"), ("DELETE", "/v1/figures/1"),
                         ("POST", "/v1/figures/1"), ("PATCH", "/v1/articles/PMC1")]:
        assert client.request(method, path).status_code == 405


def test_in_figure_text_is_searchable_highlighted_and_shown(small_index_data_dir, settings,
                                                             tmp_path, tiny_model_dir):
    """In-figure text read after a version was built is searchable from the next version (the
    keyword index is derived from the store with the version), highlighted and shown."""
    from figsearch.encoders import load_model
    from tests.figsearch.api_fixtures import build_index

    data = tmp_path / "data"
    shutil.copytree(small_index_data_dir, data, symlinks=True)
    store = FigureStore(data / "figsearch.db")
    sha = store.get_figure(2)["sha256"]
    store.put_ocr([(sha, "Nucleus\nQWERTYASE\nCytoplasm", 3, "test", None)])
    store.close()
    app_settings = settings.model_copy(update={"data_dir": data})
    with TestClient(loaded_app(app_settings)) as c:
        body = c.get("/v1/search", params={"q": "qwertyase", "mode": "keyword"}).json()
        assert body["results"] == []  # the served version was built before the text was read
    build_index(data, load_model(str(tiny_model_dir), device="cpu"), str(tiny_model_dir))
    with TestClient(loaded_app(app_settings)) as c:
        for mode in ("keyword", "hybrid"):
            body = c.get("/v1/search", params={"q": "qwertyase", "mode": mode, "k": 3}).json()
            hits = {h["id"]: h for h in body["results"]}  # hybrid: tied with the dense top 1
            assert body["results"][0]["id"] == 2 or mode == "hybrid"
            hit = hits[2]
            assert all(h["ocr_snippet"] == "" for i, h in hits.items() if i != 2)
            assert hit["ocr_snippet"] == "Nucleus\n<mark>QWERTYASE</mark>\nCytoplasm"
        assert c.get("/v1/figures/2").json()["ocr_text"] == "Nucleus\nQWERTYASE\nCytoplasm"
        assert c.get("/v1/figures/3").json()["ocr_text"] is None


def test_a_mode_the_index_cannot_serve_is_a_conflict_not_a_bad_request(client):
    """mode=caption is schema-valid; this index version has no caption index, so the answer is
    409 naming what is missing (found by schemathesis: 400 told clients their valid request
    was malformed). In a batch the status survives and detail names the query."""
    assert client.get("/v1/stats").json()["signals"]["caption"] is False
    single = client.get("/v1/search", params={"q": "kinase", "mode": "caption"})
    assert single.status_code == 409 and "no caption index" in single.json()["detail"]
    batch = client.post("/v1/search", json={"queries": [{"q": "kinase"},
                                                        {"q": "kinase", "mode": "caption"}]})
    assert batch.status_code == 409
    assert batch.json()["detail"].startswith("queries[1]: caption search is unavailable")
    bad = client.post("/v1/search", json={"queries": [{"q": "kinase"}, {"q": "  "}]})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("queries[1]:")


# -- panels of compound figures -------------------------------------------------------------------
def _pd1_figure_id(settings: Settings) -> int:
    """PMC6479336 Fig. 1: (A) PD-1 engagement above (B) PD-1 blockade (a real compound figure)."""
    import sqlite3

    with sqlite3.connect(settings.db_path) as con:
        rows = con.execute("SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
                           "WHERE a.pmcid = 'PMC6479336'").fetchall()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def test_panels_of_a_compound_figure_and_their_crops(client, settings):
    fid = _pd1_figure_id(settings)
    r = client.get(f"/v1/figures/{fid}/panels")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["figure_id"] == fid and body["compound"] is True
    assert [(p["number"], p["letter"]) for p in body["panels"]] == [(1, "A"), (2, "B")]
    assert body["panels"][0]["subcaption"].startswith("(A) Engagement of the PD-1 receptor")
    assert body["panels"][1]["subcaption"].startswith("(B) Blocking the PD-1")
    top, bottom = (p["box"] for p in body["panels"])
    assert top[3] <= bottom[1]  # (A) above (B)
    # the boxes are in the stored image's pixels, whose size comes with them (to outline them)
    stored = Image.open(io.BytesIO(client.get(f"/v1/figures/{fid}/image").content)).size
    assert all(p["figure_size"] == list(stored) for p in body["panels"])
    assert 0 <= top[0] < top[2] <= stored[0] and bottom[3] <= stored[1]
    for panel in body["panels"]:
        crop = client.get(panel["crop_url"])
        assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
        x0, y0, x1, y1 = panel["box"]
        assert Image.open(io.BytesIO(crop.content)).size == (x1 - x0, y1 - y0)
        again = client.get(panel["crop_url"], headers={"If-None-Match": crop.headers["etag"]})
        assert again.status_code == 304
    assert_error(client.get(f"/v1/figures/{fid}/panels/3/image"), 404,
                 "has 2 panels; there is no panel 3")
    assert_error(client.get("/v1/figures/999999/panels"), 404, "no figure with id 999999")
    assert client.get(f"/v1/figures/{fid}/panels/0/image").status_code == 422


def test_a_figure_that_is_not_compound_is_one_panel(client, settings):
    import sqlite3

    with sqlite3.connect(settings.db_path) as con:
        fid = con.execute("SELECT f.id FROM figures f JOIN figure_panels p ON p.sha256 = "
                          "f.sha256 WHERE f.source = 'pmc' AND json_array_length(p.panels) = 1 "
                          "ORDER BY f.id").fetchone()[0]
    body = client.get(f"/v1/figures/{fid}/panels").json()
    assert body["compound"] is False and len(body["panels"]) == 1
    assert body["panels"][0]["letter"] is None and body["panels"][0]["subcaption"] is None


def test_a_version_without_panel_indexes_searches_and_picks_panels_by_words(client, settings):
    """The fixture's version was built before panel search (no panels/, no caption index): text
    search still picks a compound hit's panel by the query's words alone; image search works."""
    from figsearch.index import current_version_dir

    version = current_version_dir(settings.indexes_dir)
    assert version is not None and not (version / "panels").exists()
    fid = _pd1_figure_id(settings)
    r = client.get("/v1/search", params={
        "q": "blocking the PD-1 checkpoint so effector T cells attack infected glia",
        "mode": "keyword", "k": 5})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == fid
    assert top["panel"]["number"] == 2 and top["panel"]["letter"] == "B"
    assert top["panel"]["signal"] == "keyword" and top["panel"]["subcaption"].startswith("(B)")
    assert top["panel"]["crop_url"].endswith(f"/v1/figures/{fid}/panels/2/image")
    listed = client.get(f"/v1/figures/{fid}/panels").json()["panels"][1]
    assert top["panel"]["box"] == listed["box"] and top["panel"]["figure_size"] == listed["figure_size"]
    general = client.get("/v1/search", params={"q": "glial modulation of T lymphocytes",
                                              "mode": "keyword"})  # words of the intro
    hit = next(h for h in general.json()["results"] if h["id"] == fid)
    assert hit["panel"] is None
    jpg = client.get(f"/v1/figures/{fid}/panels/1/image").content
    image = client.post("/v1/search/image", params={"k": 3},
                        files={"image": ("q.jpg", jpg, "image/jpeg")})
    assert image.status_code == 200 and all(h["panel"] is None for h in image.json()["results"])
