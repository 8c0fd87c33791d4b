"""Why a result matched (per-hit signals) and the weak-match state of a query (issue 26).

The fixture is the relevance tests' real store (36 real PMC pathway figures from
``shared/data/pmc-figures`` + a duplicate + a synthetic article) with the in-figure text OCR read
from those real images (``bench/results/ocr_pmc_figures.jsonl``), indexed by ``figsearch index``'s
own code path with the tiny random image model and the real caption encoder (with passages).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from figsearch import explain as ex
from figsearch.core.config import Settings
from figsearch.fusion import FusionConfig, SignalResult, explain, fuse
from figsearch.keyword_index import analyse, query_terms
from tests.figsearch.test_relevance import NAMED

REPO = Path(__file__).resolve().parents[2]
OCR_FILE = REPO / "bench" / "results" / "ocr_pmc_figures.jsonl"
OFF_TOPIC = [json.loads(line)["query"]
             for line in (REPO / "bench" / "eval" / "offtopic.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def explain_dir(tmp_path_factory, shared_data, tiny_model_dir) -> Path:
    """Real store with real in-figure text, and a version built by index_all."""
    from figsearch.caption_index import CaptionEncoder
    from figsearch.encoders import load_model
    from indexer.indexing import index_all
    from tests.figsearch.api_fixtures import populate_store

    data_dir = tmp_path_factory.mktemp("explain")
    store = populate_store(data_dir, shared_data)
    rows = [json.loads(line) for line in OCR_FILE.read_text().splitlines()]
    store.put_ocr([(r["sha256"], r["ocr_text"], len(r["ocr_text"].splitlines()), "test", None)
                   for r in rows if r.get("ocr_text")])
    store.close()
    settings = Settings(data_dir=data_dir, device="cpu")
    index_all(settings, str(tiny_model_dir), encoder=load_model(str(tiny_model_dir), device="cpu"),
              progress=False, caption_encoder=CaptionEncoder("all-MiniLM-L6-v2"))
    return data_dir


@pytest.fixture(scope="module")
def service(explain_dir, tiny_model_dir):
    from figsearch.api.state import AppState

    state = AppState(Settings(data_dir=explain_dir, model=str(tiny_model_dir), device="cpu",
                              rate_limit_per_minute=0))
    state.reload()
    assert state.current is not None
    yield state.current.service
    state.close()


# -- the fused parts -----------------------------------------------------------------------------
def _results() -> dict[str, SignalResult]:
    rng = np.random.default_rng(7)
    out = {}
    for name, n in (("keyword", 30), ("caption", 40), ("dense", 25)):
        ids = rng.permutation(60)[:n].tolist()
        scores = np.sort(rng.random(n))[::-1].tolist()
        out[name] = SignalResult(ids, scores, floor=0.0 if name == "keyword" else None)
    for name in ("caption", "dense"):  # exact scores of the other signals' candidates
        others = {i for r in out.values() for i in r.ids} - set(out[name].ids)
        out[name].extra = {i: float(rng.random() * 0.5) for i in sorted(others)}
    return out


@pytest.mark.parametrize("method", ["score", "rrf"])
def test_fused_parts_add_up_to_the_fused_score_exactly(method):
    results = _results()
    config = FusionConfig({"keyword": 0.5, "caption": 0.3, "dense": 0.2}, method)
    fused = dict(fuse(results, config))
    parts = explain(results, config, list(fused))
    for doc, score in fused.items():
        assert sum(p.contribution for p in parts[doc]) == score, doc
        for p in parts[doc]:
            assert p.weight == config.weight(p.name)
            if method == "score":
                assert 0.0 <= p.normalised <= 1.0 and p.contribution == p.weight * p.normalised
            ids = results[p.name].ids
            assert p.rank == (ids.index(doc) + 1 if doc in ids else None)
    # a signal of weight 0 is no part of any score
    zero = FusionConfig({"keyword": 1.0, "caption": 0.0}, method)
    assert all(p.name == "keyword" for ps in explain(results, zero, range(60)).values() for p in ps)


def test_hybrid_hits_list_their_signals_and_the_contributions_sum_to_the_score(service):
    assert service.fused_signals() == ["keyword", "caption"]  # the random image model fails
    for query in list(NAMED)[:4]:
        page = service.search_text(query, k=10)
        for hit in page.hits:
            names = [s.name for s in hit.signals]
            assert set(names) <= {"keyword", "caption"} and len(names) == len(set(names))
            assert sum(s.contribution for s in hit.signals) == pytest.approx(hit.score, abs=1e-12)
            for s in hit.signals:
                assert s.weight == service.fusion.weight(s.name)
                assert s.contribution == pytest.approx(s.weight * s.normalised)
        # the top hit of a named query is a caption match: its raw score is the exact cosine
        top = page.hits[0]
        caption = next(s for s in top.signals if s.name == "caption")
        cvec = service.captions.encode(query)
        assert caption.raw == pytest.approx(service.captions.index.scores_for(cvec, [top.id])[top.id])


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[^\W_]+", text or "")}


def test_keyword_fields_and_terms_are_really_in_the_figure(service):
    stems = set(query_terms("interferon signalling in virus infected cells"))
    page = service.search_text("interferon signalling in virus infected cells", k=10,
                               mode="keyword")
    assert page.hits
    for hit in page.hits:
        (kw,) = hit.signals
        assert kw.name == "keyword" and kw.raw == kw.contribution == hit.score and kw.fields
        keys = dict(ex.KEYWORD_FIELDS)
        for field, words in kw.fields.items():
            text = str(hit.figure.get(keys[field]) or "")
            for word in words:
                assert word.lower() in _words(text), (field, word)
                assert analyse(word)[0] in stems
        assert kw.terms and set(kw.terms) <= {"interferon", "signalling", "virus", "infected",
                                               "cells"}


def test_a_word_only_drawn_inside_a_figure_is_reported_as_in_figure_text(service):
    """A word of one figure's OCR text that no caption, label or title holds: the keyword hit
    names the in-figure text (``ocr``) and the word as read there, nothing else."""
    figures = service.store.get_figures(list(range(1, 60)))
    outside = set().union(*(_words(f"{f['caption']} {f['label']} {f['title']}")
                            for f in figures.values()))
    candidates = sorted(
        (w, fid) for fid, f in figures.items() for w in _words(f.get("ocr_text") or "")
        if w.isalpha() and len(w) >= 6 and w not in outside
        and sum(w in _words(g.get("ocr_text") or "") for g in figures.values()) == 1)
    assert candidates, "the real OCR text should hold words no caption uses"
    word, fid = candidates[0]
    page = service.search_text(word, k=5, mode="keyword")
    assert [h.id for h in page.hits][:1] == [fid]
    (kw,) = page.hits[0].signals
    assert list(kw.fields) == ["ocr"] and [w.lower() for w in kw.fields["ocr"]] == [word]
    assert kw.terms == [word]
    hybrid = service.search_text(word, k=5)
    hit = next(h for h in hybrid.hits if h.id == fid)
    assert next(s for s in hit.signals if s.name == "keyword").fields.keys() == {"ocr"}


def test_the_caption_passage_is_the_window_that_matched(service):
    """When a passage beat the whole caption, it is a sentence window of the caption and its
    embedding (with label and title, as indexed) scores exactly the hit's caption cosine."""
    from figsearch.caption_index import caption_text

    seen = 0
    for query in NAMED:
        page = service.search_text(query, k=5, mode="caption")
        cvec = service.captions.encode(query)
        for hit in page.hits:
            (cap,) = hit.signals
            if cap.passage is None:
                continue
            seen += 1
            caption = " ".join(hit.figure["caption"].split())
            assert " ".join(cap.passage.split()) in caption and len(cap.passage) < len(caption)
            text = caption_text(hit.figure["label"], cap.passage, hit.figure["title"])
            vec = service.captions.encoder.encode_texts([text])[0]
            assert float(vec @ cvec.reshape(-1)) == pytest.approx(cap.raw, abs=2e-3)
    assert seen >= 3


def test_real_queries_are_strong_and_off_topic_queries_are_weak(service):
    for query in NAMED:
        page = service.search_text(query, k=10)
        assert page.match is not None and page.match.quality == "strong", (query, page.match)
        assert page.match.note == ""
    weak = [q for q in OFF_TOPIC if service.search_text(q, k=10).match.quality == "weak"]
    assert len(weak) >= 0.9 * len(OFF_TOPIC), set(OFF_TOPIC) - set(weak)
    page = service.search_text("chocolate cake recipe", k=10)
    assert page.match.quality == "weak" and page.hits  # still listed under the notice
    assert page.match.note.startswith("No strong match for “chocolate cake recipe”")
    # every mode and page judges the query, not the page; keyword search finds no figure
    # holding any of its words at all
    assert service.search_text("chocolate cake recipe", k=5, mode="caption").match.quality == "weak"
    assert service.search_text("chocolate cake recipe", k=5, mode="keyword").match.quality == "none"
    assert service.search_text(list(NAMED)[0], k=5, offset=5).match.quality == "strong"


def test_no_results_is_none_and_vector_queries_are_not_judged(service):
    page = service.search_text("zzzqqxx", k=5, mode="keyword")
    assert not page.hits and page.match.quality == "none"
    similar = service.similar(service.search_text(list(NAMED)[0], k=1).hits[0].id, k=3)
    assert similar.match is None
    for hit in similar.hits:
        (dense,) = hit.signals
        assert dense.name == "dense" and dense.raw == hit.score


def test_the_api_returns_signals_and_the_match_state(explain_dir, tiny_model_dir):
    from fastapi.testclient import TestClient

    from figsearch.api.main import create_app
    from figsearch.client import signals_line

    settings = Settings(data_dir=explain_dir, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0)
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/search", params={"q": list(NAMED)[1], "k": 5}).json()
        assert body["match_quality"] == "strong" and body["match_note"] == ""
        assert body["match_evidence"]["caption_cosine"] >= ex.STRONG_CAPTION_COSINE
        for hit in body["results"]:
            assert sum(s["contribution"] for s in hit["signals"]) == pytest.approx(hit["score"],
                                                                                 abs=1e-5)
        line = signals_line(body["results"][0]["signals"])
        assert re.match(r"^(keyword|caption) \d\.\d\d", line), line
        weak = client.get("/v1/search", params={"q": "football league standings 2019"}).json()
        assert weak["match_quality"] == "weak" and weak["results"]
        assert "No strong match" in weak["match_note"]
