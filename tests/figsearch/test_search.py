"""SearchService over a real small store + FAISS index + tiny model (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest

from figsearch.keyword_index import query_terms
from figsearch.search import (
    FigureNotFound,
    SearchInputError,
    SearchService,
    article_url,
    figure_url,
    reciprocal_rank_fusion,
)
from figsearch.store import FigureFilter
from tests.figsearch.api_fixtures import COPY_PMCID, SYNTHETIC_KEY, small_search_service


@pytest.fixture(scope="module")
def service(small_index_data_dir, tiny_model_dir):
    with small_search_service(small_index_data_dir, tiny_model_dir) as svc:
        yield svc


def test_rrf_rewards_agreement_and_is_ordered():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    ids = [i for i, _ in fused]
    assert ids[:2] == [1, 3]  # in both lists, near the top
    assert set(ids) == {1, 2, 3, 4}
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert all(a[1] >= b[1] for a, b in zip(fused, fused[1:], strict=False))
    assert reciprocal_rank_fusion([]) == []


def test_links_none_for_synthetic():
    real = {"pmcid": "PMC123", "fig_id": "F2", "source": "pmc"}
    assert article_url(real) == "https://pmc.ncbi.nlm.nih.gov/articles/PMC123/"
    assert figure_url(real) == "https://pmc.ncbi.nlm.nih.gov/articles/PMC123/figure/F2/"
    assert article_url({"pmcid": None, "fig_id": "f", "source": "synthetic"}) is None
    assert figure_url({"pmcid": "PMC1", "fig_id": "f", "source": "synthetic"}) is None


@pytest.mark.parametrize("mode", ["hybrid", "dense", "keyword"])
def test_modes_return_ranked_results(service, mode):
    page = service.search_text("signaling pathway", k=5, mode=mode)
    assert page.mode == mode and page.index_version == service.index.version
    assert len(page.hits) == 5
    assert [h.rank for h in page.hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(page.hits, page.hits[1:], strict=False))
    if mode == "keyword":
        assert all("<mark>" in h.caption_highlighted for h in page.hits)


def test_keyword_finds_exact_term(service):
    page = service.search_text("TREM2", k=3, mode="keyword")
    assert page.hits and "TREM2" in page.hits[0].figure["caption"]
    assert "<mark>TREM2</mark>" in page.hits[0].caption_highlighted


def test_filter_applies_before_truncation(service):
    nc = service.store.filtered_ids(FigureFilter(license_class="cc-by-nc"))
    assert 3 <= len(nc) < service.index.ntotal / 2
    page = service.search_text("pathway", k=len(nc), mode="dense",
                               flt=FigureFilter(license_class="cc-by-nc"))
    assert sorted(h.id for h in page.hits) == sorted(nc.tolist())
    commercial = service.search_text("pathway", k=10, flt=FigureFilter(commercial_only=True))
    assert len(commercial.hits) == 10
    assert all(h.figure["license_class"] in {"cc-by", "cc0"} for h in commercial.hits)


def test_year_and_type_filters(service):
    page = service.search_text("chart", k=10, flt=FigureFilter(figure_type="chart/plot"))
    assert {h.figure["figure_type"] for h in page.hits} == {"chart/plot"} and len(page.hits) == 2
    none = service.search_text("pathway", k=10, flt=FigureFilter(year_from=1900, year_to=1901))
    assert none.hits == []


def test_paging_is_consistent(service):
    whole = service.search_text("protein", k=12, mode="dense")
    first = service.search_text("protein", k=6, offset=0, mode="dense")
    second = service.search_text("protein", k=6, offset=6, mode="dense")
    assert [h.id for h in first.hits + second.hits] == [h.id for h in whole.hits]
    assert [h.rank for h in second.hits] == list(range(7, 13))


def test_exact_duplicates_collapse_by_default(service):
    copy_ids = service.store.figure_ids_for_article(COPY_PMCID)
    copy = service.store.get_figure(copy_ids[0])
    pair = [i for i, f in service.store.get_figures(range(1, 100)).items()
            if f["sha256"] == copy["sha256"]]
    assert len(pair) == 2
    vec = service.index.vectors_for(np.array([copy_ids[0]]))[0]
    kept = {h.id for h in service.search_vector(vec, k=service.index.ntotal - 1).hits}
    assert len(kept & set(pair)) == 1
    everything = {h.id for h in service.search_vector(vec, k=service.index.ntotal, dedup=False).hits}
    assert set(pair) <= everything


def test_cosine_near_duplicates_collapse(service):
    loose = SearchService(service.store, service.index, service.encoder,
                          service.settings.model_copy(update={"dedup_threshold": 0.5}), keywords=service.keywords)
    vec = service.index.vectors_for(np.array([1]))[0]
    # The random tiny model puts every image within cosine 0.5 of the others: one survives.
    assert len(loose.search_vector(vec, k=10).hits) == 1
    assert len(loose.search_vector(vec, k=10, dedup=False).hits) == 10


def test_similar_excludes_itself_and_copies(service):
    page = service.similar(1, k=10)
    ids = [h.id for h in page.hits]
    assert 1 not in ids and len(ids) == 10
    sha = service.store.get_figure(1)["sha256"]
    assert all(h.figure["sha256"] != sha for h in page.hits)
    with pytest.raises(FigureNotFound):
        service.similar(99_999)


def test_synthetic_results_have_no_pmc_links(service):
    ids = service.store.figure_ids_for_article(SYNTHETIC_KEY)
    page = service.search_text("synthetic bar chart survival", k=3, mode="keyword")
    assert {h.id for h in page.hits[:2]} == set(ids)
    assert all(article_url(h.figure) is None for h in page.hits[:2])


@pytest.mark.parametrize("query", [
    '"unbalanced', "kinase*", "NEAR(a b)", "AND(", "((()", "'; DROP TABLE figures; --",
    "caption:foo", "a OR", "^start", "🧬 DNA",
])
def test_hostile_text_just_searches(service, query):
    for mode in ("hybrid", "keyword", "dense"):
        page = service.search_text(query, k=3, mode=mode)
        assert len(page.hits) <= 3
    assert service.store.counts()["figures"] == 39


@pytest.mark.parametrize("query,k,offset,mode,message", [
    ("", 5, 0, "hybrid", "empty"),
    ("   \t", 5, 0, "hybrid", "empty"),
    ("x" * 513, 5, 0, "hybrid", "limit is 512"),
    ("ok", 0, 0, "hybrid", "k must be"),
    ("ok", 201, 0, "hybrid", "k must be"),
    ("ok", 5, -1, "hybrid", "offset"),
    ("ok", 5, 1001, "hybrid", "offset"),
    ("ok", 5, 0, "fuzzy", "unknown mode"),
])
def test_bad_text_queries(service, query, k, offset, mode, message):
    with pytest.raises(SearchInputError, match=message):
        service.search_text(query, k=k, offset=offset, mode=mode)


@pytest.mark.parametrize("vector,message", [
    ([0.1] * 31, "31 dimensions"),
    ([float("nan")] + [0.1] * 31, "NaN"),
    ([float("inf")] + [0.1] * 31, "NaN or infinite"),
    ([0.0] * 32, "all zeros"),
    (["a"] * 32, "not a list of numbers"),
])
def test_bad_vectors(service, vector, message):
    with pytest.raises(SearchInputError, match=message):
        service.search_vector(vector, k=3)


def test_keyword_prefers_figures_with_every_word(service):
    every = {i for i, _ in service.store.keyword_search("viral RNA", 100, match_all=True)}
    some = {i for i, _ in service.store.keyword_search("viral RNA", 100)}
    assert 3 <= len(every) < len(some)
    page = service.search_text("viral RNA", k=3, mode="keyword")
    assert {h.id for h in page.hits} <= every
    wide = service.search_text("viral RNA", k=len(every) + 2, mode="keyword")
    assert {h.id for h in wide.hits} <= some and len(wide.hits) == len(every) + 2


def test_hybrid_keyword_side_uses_only_all_word_matches(service):
    every = {i for i, _ in service.store.keyword_search("viral RNA", 100, match_all=True)}
    some = {i for i, _ in service.store.keyword_search("viral RNA", 100)}
    assert len(some - every) > 0
    narrow = service._keyword("viral RNA", 50, FigureFilter(), widen=False)
    assert set(narrow.ids) == every and narrow.exhausted
    wide = service._keyword("viral RNA", 50, FigureFilter(), widen=True)
    assert set(wide.ids) == some
    single = service._keyword("TREM2", 50, FigureFilter(), widen=False)
    assert single.ids  # one word: the all-words and any-word queries are the same


def test_only_the_default_mode_leaves_common_words_out_of_its_keyword_candidates(
        service, monkeypatch):
    """``keyword_common_share`` changes the hybrid keyword signal's any-word candidates (found
    by the less common words, scored by all), never the keyword mode's ranking."""
    assert service.keywords is not None
    query = "viral replication in infected cells of the host"
    terms = query_terms(query)
    held = sorted(sum(int(s.doc_freq("text", t)) for s in service.keywords.searchers)
                  / service.keywords.count for t in terms)
    share = held[-2]  # only the commonest word is held by more figures than that
    assert len(service.keywords.common_terms(terms, share)) == 1
    n, flt = 50, FigureFilter()

    def with_share(value: float) -> None:
        monkeypatch.setattr(service, "settings", service.settings.model_copy(
            update={"keyword_common_share": value}))

    with_share(0.0)
    exact = service._keyword(query, n, flt, hybrid=True)
    assert exact.ids == service._keyword(query, n, flt).ids
    with_share(share)
    cut = service._keyword(query, n, flt, hybrid=True)
    assert cut.ids != exact.ids
    assert list(zip(cut.ids, cut.scores, strict=True)) == \
        service.keywords.any_word_search(query, n, common_share=share)
    assert service._keyword(query, n, flt).ids == exact.ids  # keyword mode: every word


def test_dense_hits_get_fts_highlights_exactly_where_the_index_matches(service):
    page = service.search_text("signaling pathway", k=20, mode="dense")
    matching = {i for i, _ in service.store.keyword_search("signaling pathway", 10_000)}
    assert page.hits
    for hit in page.hits:
        marked = hit.id in matching and "<mark>" in hit.caption_highlighted
        assert marked or "<mark>" not in hit.caption_highlighted
        if "<mark>" in hit.caption_highlighted:
            assert hit.id in matching
    assert any("<mark>" in h.caption_highlighted for h in page.hits)
