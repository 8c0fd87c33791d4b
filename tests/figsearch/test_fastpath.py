"""The per-request fast path: stage timings, row fetching, vectorised collapse, lean JSON."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from figsearch import timing
from figsearch.api.present import search_payload
from figsearch.api.schemas import SearchResponse
from figsearch.core.config import Settings
from figsearch.search import SearchService
from tests.figsearch.api_fixtures import loaded_app, small_search_service


@pytest.fixture(scope="module")
def service(small_index_data_dir, tiny_model_dir):
    with small_search_service(small_index_data_dir, tiny_model_dir) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(small_index_data_dir, tiny_model_dir):
    settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0, dedup_threshold=0.99999)
    with TestClient(loaded_app(settings)) as c:
        yield c


def reference_collapse(svc: SearchService, ids: list[int], threshold: float) -> list[int]:
    """The obvious greedy collapse over every candidate, one comparison at a time."""
    figures = svc.store.get_figures(ids)
    kept: list[int] = []
    seen: set[str] = set()
    for fid in ids:
        if fid not in figures:
            continue
        sha = figures[fid]["sha256"]
        vec = svc.index.vectors_for([fid])[0]
        vec = vec / np.linalg.norm(vec)
        if sha in seen:
            continue
        if any(float(vec @ (v := svc.index.vectors_for([j])[0]) / np.linalg.norm(v)) > threshold
               for j in kept):
            continue
        seen.add(sha)
        kept.append(fid)
    return kept


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.99999])
def test_vectorised_collapse_matches_greedy_reference(service, threshold):
    svc = SearchService(service.store, service.index, service.encoder,
                        service.settings.model_copy(update={"dedup_threshold": threshold}), keywords=service.keywords)
    query = service.index.vectors_for([3])[0]
    everything = svc.search_vector(query, k=service.index.ntotal, dedup=False)
    ranked = [h.id for h in everything.hits]
    expected = reference_collapse(svc, ranked, threshold)
    got = svc.search_vector(query, k=min(len(expected), 12))
    assert [h.id for h in got.hits] == expected[:12]
    if threshold > 0.99:
        assert len(expected) == len(ranked) - 1  # only the one stored copy collapses
    # Pages of the collapsed list never overlap and add up to the whole list.
    pages = [svc.search_vector(query, k=3, offset=o).hits for o in range(0, len(expected), 3)]
    assert [h.id for page in pages for h in page] == expected


def test_rows_fetched_for_a_page_only(service, monkeypatch):
    query = service.index.vectors_for([5])[0]
    asked: list[int] = []
    real = service.store.get_figures

    def counting(ids):  # observe how many rows the real store call returns
        asked.extend(ids)
        return real(ids)

    monkeypatch.setattr(service.store, "get_figures", counting)
    page = service.search_vector(query, k=5, dedup=False)
    assert len(page.hits) == 5 and len(asked) == 5  # not the 2k+10 candidates
    asked.clear()
    page = service.search_vector(query, k=5)
    assert len(page.hits) == 5 and 5 <= len(asked) <= 5 + 5 // 4 + 5


def test_lean_payload_equals_the_pydantic_model(service):
    page = service.search_text("signaling pathway", k=8, mode="hybrid")
    lean = search_payload(page, "http://x")
    assert len(lean["results"]) == 8
    model = SearchResponse.model_validate(lean)  # valid against the schema, field for field
    assert model.model_dump(mode="json") == lean


def test_server_timing_header_and_stage_histogram(client):
    r = client.get("/v1/search", params={"q": "kinase pathway", "k": 5, "mode": "hybrid"})
    assert r.status_code == 200
    stages = timing.parse_server_timing(r.headers["server-timing"])
    for name in ("tokenise", "encode", "search", "keyword", "metadata", "collapse",
                 "serialise", "total"):
        assert name in stages, stages
    assert stages["total"] >= stages["encode"] + stages["search"] + stages["metadata"]
    r = client.post("/v1/search", json={"queries": [{"vector": [1.0] * 32}], "k": 3})
    assert r.status_code == 200, r.text
    stages = timing.parse_server_timing(r.headers["server-timing"])
    assert "search" in stages and "encode" not in stages
    assert "server-timing" not in client.get("/healthz").headers  # nothing timed, no header
    body = client.get("/metrics").text
    assert 'figsearch_stage_duration_seconds_count{stage="encode"}' in body


def test_stage_is_a_no_op_outside_a_request():
    assert timing.current() is None
    with timing.stage("search"):
        pass
    acc, token = timing.begin()
    with timing.stage("search"):
        pass
    timing.add("search", 1.0)
    timing.end(token)
    assert acc["search"] >= 1.0 and timing.current() is None
