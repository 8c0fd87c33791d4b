"""Access control of the API: read-only, admin off by default, CORS, rate limit, no URL
fetching, images served only from the data dir. Real uvicorn servers on loopback."""

from __future__ import annotations

import ast
import http.server
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from figsearch.core.config import Settings

from .servers import api_thread, copy_data_dir

API_SOURCES = Path(__file__).resolve().parents[2] / "figsearch" / "api"
READ_ONLY_POSTS = {"/v1/search", "/v1/search/image"}  # searches: POST only for bodies
ADMIN_ROUTES = {"/v1/admin/reload"}


def _routes():
    from figsearch.api.main import create_app

    app = create_app(Settings(data_dir=Path("/nonexistent")), start_poller=False)
    return [(r.path, m) for r in app.routes for m in getattr(r, "methods", set()) or ()]


def test_only_searches_and_admin_accept_writes():
    """Every state-changing method is absent except the admin reload."""
    writes = {(p, m) for p, m in _routes() if m not in ("GET", "HEAD", "OPTIONS")}
    assert {p for p, _ in writes} <= READ_ONLY_POSTS | ADMIN_ROUTES, writes
    assert all(m == "POST" for _, m in writes), writes


def test_reload_is_off_by_default(default_api):
    r = httpx.post(f"{default_api}/v1/admin/reload", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and "disabled" in r.json()["detail"]
    assert httpx.post(f"{default_api}/v1/admin/reload").status_code == 404


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
def test_write_methods_are_refused_everywhere(default_api, method):
    paths = ["/v1/figures/1", "/v1/figures/1/image", "/v1/articles/PMC1", "/v1/stats",
             "/v1/facets", "/healthz", "/metrics", "/v1/admin", "/v1/figures"]
    if method != "POST":
        paths += ["/v1/search", "/v1/search/image", "/v1/admin/reload"]
    for path in paths:
        r = httpx.request(method, f"{default_api}{path}", content=b"{}")
        assert r.status_code in (404, 405), (method, path, r.status_code)


def test_admin_reload_needs_the_token(small_index_settings):
    settings = small_index_settings.model_copy(update={"admin_token": "s3cret-token"})
    with api_thread(settings) as url:
        assert httpx.post(f"{url}/v1/admin/reload").status_code == 401
        assert httpx.post(f"{url}/v1/admin/reload",
                          headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert httpx.post(f"{url}/v1/admin/reload",
                          headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        assert httpx.post(f"{url}/v1/admin/reload?token=s3cret-token").status_code == 401
        ok = httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200, ok.text


def test_cors_closed_by_default(default_api):
    origin = {"Origin": "https://evil.example"}
    r = httpx.get(f"{default_api}/v1/search", params={"q": "kinase"}, headers=origin)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{default_api}/v1/search", headers={
        **origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_open_to_configured_origin_only(small_index_settings):
    settings = small_index_settings.model_copy(
        update={"cors_origins": "https://ui.example.org, http://localhost:8501"})
    with api_thread(settings) as url:
        good = {"Origin": "https://ui.example.org"}
        r = httpx.get(f"{url}/v1/search", params={"q": "kinase"}, headers=good)
        assert r.headers.get("access-control-allow-origin") == "https://ui.example.org"
        pre = httpx.options(f"{url}/v1/search", headers={
            **good, "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200
        assert pre.headers.get("access-control-allow-origin") == "https://ui.example.org"
        bad = httpx.get(f"{url}/v1/search", params={"q": "kinase"},
                        headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        bad_pre = httpx.options(f"{url}/v1/search", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert bad_pre.headers.get("access-control-allow-origin") != "https://evil.example"
        put_pre = httpx.options(f"{url}/v1/search", headers={
            **good, "Access-Control-Request-Method": "DELETE"})
        assert "DELETE" not in put_pre.headers.get("access-control-allow-methods", "")


def test_rate_limit_returns_429_past_the_limit(small_index_settings):
    settings = small_index_settings.model_copy(update={"rate_limit_per_minute": 20})
    with api_thread(settings) as url, httpx.Client(base_url=url) as client:
        t0 = time.monotonic()
        codes = [client.get("/v1/stats").status_code for _ in range(30)]
        refilled = (time.monotonic() - t0) * 20 / 60  # tokens that came back meanwhile
        assert codes[:20] == [200] * 20, codes
        assert codes.count(200) <= 20 + int(refilled) + 1, (codes, refilled)
        assert 429 in codes, codes
        r = client.get("/v1/search", params={"q": "kinase"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200  # probes are never limited


# -- no URL fetching ----------------------------------------------------------------------------
URL_WORDS = ("url", "uri", "href", "link", "src", "fetch", "callback", "webhook")


def test_no_route_takes_a_url_parameter(small_index_settings):
    """Grep-level: no parameter or body field of the OpenAPI schema is a URL to fetch."""
    from figsearch.api.main import create_app

    schema = create_app(small_index_settings, start_poller=False).openapi()
    names = []
    for path, ops in schema["paths"].items():
        for op in ops.values():
            for param in op.get("parameters", []):
                names.append((path, param["name"], param.get("schema", {}).get("format")))
    for comp_name, comp in schema["components"]["schemas"].items():
        if comp_name.endswith("Request") or comp_name.startswith("Body_"):
            for field, spec in comp.get("properties", {}).items():
                names.append((comp_name, field, spec.get("format")))
    bad = [n for n in names if n[2] == "uri" or any(w in n[1].lower() for w in URL_WORDS)]
    assert not bad, f"inputs that look like URLs: {bad}"


def test_api_code_has_no_outbound_http_client():
    """The API package never imports an HTTP client or opens URLs."""
    forbidden = {"httpx", "requests", "urllib.request", "aiohttp", "http.client", "urllib3"}
    for path in API_SOURCES.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            hit = [m for m in mods if any(m == f or m.startswith(f + ".") for f in forbidden)]
            assert not hit, f"{path.name} imports {hit}"


@pytest.fixture()
def canary():
    """A local HTTP server counting requests: proof that nothing fetched a posted URL."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/canary.png", hits
    server.shutdown()


def test_posting_a_url_gets_4xx_and_fetches_nothing(default_api, canary):
    url, hits = canary
    r = httpx.post(f"{default_api}/v1/search/image", data={"image": url})
    assert 400 <= r.status_code < 500, r.status_code
    r = httpx.post(f"{default_api}/v1/search/image", data={"url": url})
    assert 400 <= r.status_code < 500
    r = httpx.post(f"{default_api}/v1/search/image", files={"image": ("x.url", url.encode())})
    assert r.status_code == 400
    r = httpx.post(f"{default_api}/v1/search", json={"queries": [{"url": url}]})
    assert 400 <= r.status_code < 500
    r = httpx.post(f"{default_api}/v1/search", json={"queries": [{"q": url}], "image_url": url})
    assert r.status_code in (200, 422)
    r = httpx.get(f"{default_api}/v1/search", params={"q": url, "image_url": url, "url": url})
    assert r.status_code == 200  # searched as words
    assert hits == [], f"the API fetched a posted URL: {hits}"


# -- images only from the data dir --------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/v1/figures/..%2F..%2F..%2Fetc%2Fpasswd/image", "/v1/figures/1/..%2F..%2Fetc%2Fpasswd",
    "/v1/figures/%2e%2e/%2e%2e/etc/passwd", "/v1/figures/1/image/../../../../etc/passwd",
    "/v1/figures//etc/passwd/image", "/v1/figures/1%00/image", "/v1/figures/-1/image",
    "/v1/figures/99999999999999999999/thumbnail", "/static/../etc/passwd", "/images/../figsearch.db",
    "/v1/figures/1/image?path=../../etc/passwd", "/figsearch.db", "/images/",
])
def test_path_traversal_on_image_routes(default_api, path):
    with httpx.Client() as client:
        r = client.get(default_api + path)
    # 200 only when an unknown query parameter was ignored and figure 1's own JPEG served
    ok = r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff" and "?" in path
    assert ok or r.status_code in (400, 404, 405, 422), (path, r.status_code)
    assert b"root:x:0" not in r.content and b"SQLite format" not in r.content


def _tamper(data_dir: Path, sql: str, *params) -> None:
    con = sqlite3.connect(data_dir / "figsearch.db")
    with con:
        con.execute(sql, params)
    con.close()


def test_stored_paths_and_symlinks_cannot_escape_images_dir(small_index_data_dir, tiny_model_dir, tmp_path):
    """A tampered image_path or a symlink inside images/ pointing outside is refused (404)."""
    data = copy_data_dir(small_index_data_dir, tmp_path / "data")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff SECRET-OUTSIDE-DATA-DIR")
    con = sqlite3.connect(data / "figsearch.db")
    (fid1, rel1), (fid2, rel2), (fid3, _rel3) = con.execute(
        "SELECT id, image_path FROM figures WHERE has_image = 1 ORDER BY id LIMIT 3").fetchall()
    con.close()
    _tamper(data, "UPDATE figures SET image_path = ? WHERE id = ?", "../../secret.jpg", fid1)
    target = data / "images" / rel2
    target.unlink()
    os.symlink(secret, target)
    _tamper(data, "UPDATE figures SET image_path = ? WHERE id = ?", str(secret), fid3)
    settings = Settings(data_dir=data, model=str(tiny_model_dir), device="cpu")
    with api_thread(settings) as url:
        for fid in (fid1, fid2, fid3):
            r = httpx.get(f"{url}/v1/figures/{fid}/image")
            assert r.status_code == 404, (fid, r.status_code)
            assert b"SECRET" not in r.content
        # the untouched thumbnails still work: refusal is targeted, not a broken route
        assert httpx.get(f"{url}/v1/figures/{fid2}/thumbnail").status_code == 200
