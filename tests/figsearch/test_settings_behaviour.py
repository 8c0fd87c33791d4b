"""Each setting changes what it says it changes (besides being documented): one test per
setting that had none - API URL of the client, public base URL of links, stored image and
thumbnail sizes, index versions kept."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image

from figsearch.client import APIUnavailable, FigSearchClient
from figsearch.core.config import Settings
from figsearch.index import current_version_dir
from figsearch.netutil import free_port
from figsearch.store import FigureStore
from indexer.build import list_versions
from indexer.indexing import index_all
from indexer.ingest import ingest_paths
from tests.figsearch.api_fixtures import loaded_app, serve_in_thread


def test_api_url_is_the_clients_default(small_index_settings, monkeypatch):
    with serve_in_thread(loaded_app(small_index_settings)) as url:
        monkeypatch.setenv("FIGSEARCH_API_URL", url)
        with FigSearchClient() as api:
            assert api.base_url == url and api.stats()["ready"] is True
    monkeypatch.setenv("FIGSEARCH_API_URL", f"http://127.0.0.1:{free_port()}")
    with FigSearchClient() as api:
        try:
            api.stats()
            raise AssertionError("a client of a closed port answered")
        except APIUnavailable as exc:
            assert str(api.base_url) in exc.message


def test_public_base_url_makes_the_image_links(small_index_settings):
    settings = small_index_settings.model_copy(
        update={"public_base_url": "https://figs.example.org/api"})
    with TestClient(loaded_app(settings)) as client:
        hit = client.get("/v1/search", params={"q": "pathway", "k": 1}).json()["results"][0]
    assert hit["thumbnail_url"] == f"https://figs.example.org/api/v1/figures/{hit['id']}/thumbnail"


def _manifest(folder, n=3):
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (400, 300), (60 * i, 100, 200 - 50 * i)).save(buf, format="PNG")
        (folder / f"f{i}.png").write_bytes(buf.getvalue())
        rows.append({"image": f"f{i}.png", "caption": f"figure {i} of the lab",
                     "collection": "lab", "id": f"f{i}"})
    path = folder / "figures.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _stored_sizes(settings):
    store = FigureStore(settings.db_path)
    try:
        fig = next(iter(store.get_figures([1]).values()))
    finally:
        store.close()
    with Image.open(settings.images_dir / fig["thumb_path"]) as thumb:
        return (fig["width"], fig["height"]), thumb.size


def test_image_and_thumbnail_sizes(tmp_path):
    manifest = _manifest(tmp_path / "m", n=1)
    default = Settings(data_dir=tmp_path / "default")
    small = Settings(data_dir=tmp_path / "small", image_max_side=100, thumb_max_side=32)
    for settings in (default, small):
        ingest_paths([manifest], settings, workers=1)
    assert _stored_sizes(default) == ((400, 300), (256, 192))
    assert _stored_sizes(small) == ((100, 75), (32, 24))


def test_index_keep_versions(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path / "data", device="cpu", num_workers=0,
                        index_keep_versions=1)
    ingest_paths([_manifest(tmp_path / "m")], settings, workers=1)
    for _ in range(3):
        index_all(settings, str(tiny_model_dir), progress=False)
    current = current_version_dir(settings.indexes_dir)
    others = [v for v in list_versions(settings.indexes_dir) if v.resolve() != current]
    assert len(others) == 1  # the default (3) would have kept both older versions
