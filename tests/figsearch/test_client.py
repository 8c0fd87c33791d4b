"""figsearch.client against a real uvicorn server on loopback."""

from __future__ import annotations

import socket

import pytest

from figsearch.client import APIUnavailable, FigSearchClient, FigSearchError
from figsearch.core.config import Settings
from figsearch.netutil import free_port
from tests.figsearch.api_fixtures import loaded_app, serve_in_thread


@pytest.fixture(scope="module")
def base_url(small_index_data_dir, tiny_model_dir):
    settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, dedup_threshold=0.99999)
    with serve_in_thread(loaded_app(settings)) as url:
        yield url


@pytest.fixture()
def api(base_url):
    with FigSearchClient(base_url, timeout=30) as client:
        yield client


def test_search_and_filters(api):
    body = api.search("signaling pathway", k=4, mode="hybrid", license="commercial")
    assert body["k"] == 4 and len(body["results"]) == 4
    assert all(r["license"] in ("cc-by", "cc0") for r in body["results"])
    keyword = api.search("TREM2", mode="keyword", year_from=2010, year_to=2020)
    assert "TREM2" in keyword["results"][0]["caption"]


def test_image_search_by_path_and_bytes(api, shared_data):
    path = next((shared_data / "pmc-figures" / "images").glob("*.jpg"))
    by_path = api.search_image(path, k=3)
    by_bytes = api.search_image(path.read_bytes(), k=3)
    assert [r["id"] for r in by_path["results"]] == [r["id"] for r in by_bytes["results"]]
    assert len(by_path["results"]) == 3


def test_records_similar_stats_health(api):
    fig = api.figure(1)
    assert fig["id"] == 1
    assert api.similar(1, k=3)["results"][0]["id"] != 1
    assert api.article(fig["pmcid"])["pmcid"] == fig["pmcid"]
    assert api.stats()["index_count"] == 39
    assert "diagram/pathway" in api.facets()["figure_types"]
    assert api.health() is True
    assert api.image_url(1) == f"{api.base_url}/v1/figures/1/image"
    assert api.image_bytes(1, thumbnail=True)[:2] == b"\xff\xd8"  # JPEG


def test_panels_of_a_figure_and_their_crops(api):
    """The real compound figure PMC6479336 Fig. 1: (A) above (B), each crop its box's size."""
    import io

    from PIL import Image

    hit = api.search("blocking the PD-1 checkpoint so effector T cells attack infected glia",
                     mode="keyword", k=1)["results"][0]
    assert hit["pmcid"] == "PMC6479336" and hit["panel"]["letter"] == "B"
    panels = api.panels(hit["id"])["panels"]
    assert [p["letter"] for p in panels] == ["A", "B"]
    x0, y0, x1, y1 = panels[1]["box"]
    crop = api.panel_image_bytes(hit["id"], 2)
    assert Image.open(io.BytesIO(crop)).size == (x1 - x0, y1 - y0)
    assert api.panel_image_url(hit["id"], 2) == hit["panel"]["crop_url"]
    with pytest.raises(FigSearchError, match="no panel 5"):
        api.panel_image_bytes(hit["id"], 5)


def test_batch_search(api):
    out = api.search_batch([{"q": "kinase"}, {"vector": [0.2] * 32}], k=2)
    assert [len(r["results"]) for r in out["responses"]] == [2, 2]


def test_api_errors_carry_the_detail(api):
    with pytest.raises(FigSearchError) as info:
        api.search("   ")
    assert info.value.status_code == 400 and "empty" in info.value.message
    with pytest.raises(FigSearchError) as info:
        api.search("x", k=0)
    assert info.value.status_code == 422 and "query parameter k" in info.value.message
    with pytest.raises(FigSearchError) as info:
        api.figure(987654)
    assert info.value.status_code == 404 and "987654" in str(info.value)
    with pytest.raises(FigSearchError) as info:
        api.search_image(b"not an image")
    assert "not a recognised image" in info.value.message
    with pytest.raises(TypeError, match="unknown filter"):
        api.similar(1, colour="red")


def test_unreachable_api_raises_api_unavailable():
    with FigSearchClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        assert client.health() is False
        with pytest.raises(APIUnavailable) as info:
            client.search("anything")
        assert info.value.status_code == 0 and "unreachable" in info.value.message


def test_timeout_raises_api_unavailable():
    with socket.socket() as listener:  # accepts connections but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with FigSearchClient(f"http://127.0.0.1:{port}", timeout=0.3) as client:
            with pytest.raises(APIUnavailable, match="timed out"):
                client.stats()


def test_not_ready_is_api_unavailable(tmp_path, tiny_model_dir):
    from figsearch.api.main import create_app

    settings = Settings(data_dir=tmp_path, model=str(tiny_model_dir), rate_limit_per_minute=0)
    with serve_in_thread(create_app(settings)) as url, FigSearchClient(url) as client:
        assert client.health() is False
        with pytest.raises(APIUnavailable) as info:
            client.search("x")
        assert info.value.status_code == 503 and "not ready" in info.value.message
