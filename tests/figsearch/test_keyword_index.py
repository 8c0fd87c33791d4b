"""The per-version keyword index (tantivy): rankings equal an exact BM25 over the same rows,
filters mean what the filter columns say, highlights mark what was searched, and a delta update
never touches the served version, even when it crashes.

The fixture is a real store of real PMC captions (the 189 pathway figures of
``shared/data/pmc-figures`` and 600 ROCO captions), with years, journals and licenses spread
over them, so common words occur as often as they do in PMC captions.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import tantivy

from figsearch.columns import AllowedSet
from figsearch.keyword_index import (
    BROAD_FILTER,
    DEFAULT_WEIGHTS,
    KEYWORD_DIR,
    TEXT_FIELDS,
    WHOLE_TEXT,
    KeywordIndex,
    analyse,
    auto_shards,
    mark,
    ocr_snippet,
    query_terms,
    update_keyword_index,
    write_keyword_index,
)
from figsearch.records import ArticleRecord, FigureRecord
from figsearch.store import FigureFilter, FigureStore

LICENSES = ("cc-by", "cc-by-nc", "none")
JOURNALS = ("PLoS ONE", "Frontiers in Immunology", "Viruses", "Sci Rep")
K1, B = 1.2, 0.75
REPO = Path(__file__).resolve().parents[2]


def _captions(shared_data: Path) -> list[tuple[str, str, str]]:
    """(caption, label, article title) of real PMC figures."""
    out = []
    for line in (shared_data / "pmc-figures" / "figures.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append((row["caption"] or "", row.get("figure_number") or "", row.get("paper_title") or ""))
    with open(shared_data / "roco" / "roco_pmc_figures.csv", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if i >= 600:
                break
            out.append((row["caption"], "Figure 1", ""))
    return out


def fill_store(store: FigureStore, shared_data: Path) -> None:
    for i, (caption, label, title) in enumerate(_captions(shared_data)):
        key = f"PMC9{i:06d}"
        article = ArticleRecord(key=key, source="pmc", pmcid=key, title=title,
                                journal=JOURNALS[i % len(JOURNALS)], year=2015 + i % 10,
                                license_class=LICENSES[i % len(LICENSES)], content_hash=key)
        store.upsert_article(article, [FigureRecord(fig_id="f1", label=label, caption=caption)])


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data) -> tuple[FigureStore, Path]:
    root = tmp_path_factory.mktemp("keyword")
    store = FigureStore(root / "figsearch.db")
    fill_store(store, shared_data)
    version = root / "v1"
    version.mkdir()
    write_keyword_index(store, version, progress=False)
    yield store, version
    store.close()


@pytest.fixture(scope="module")
def index(built) -> KeywordIndex:
    loaded = KeywordIndex.load(built[1])
    assert loaded is not None
    return loaded


def _field_tokens(store: FigureStore) -> dict[int, dict[str, Counter]]:
    """Per live figure, per field, its analysed tokens (what the index holds)."""
    out: dict[int, dict[str, Counter]] = {}
    for fid, fig in store.get_figures(range(1, 100_000)).items():
        fields = {"caption": fig["caption"], "label": fig["label"], "title": fig["title"],
                  "ocr": fig["ocr_text"]}
        out[fid] = {f: Counter(analyse(str(fields[f] or ""))) for f in TEXT_FIELDS}
        out[fid][WHOLE_TEXT] = sum(out[fid].values(), Counter())
    return out


def exact_bm25(docs: dict[int, dict[str, Counter]], terms: list[str], match_all: bool,
               allowed: set[int] | None = None) -> list[tuple[int, float]]:
    """Textbook BM25 per field (k1 1.2, b 0.75, IDF ln(1 + (N - df + .5) / (df + .5)), average
    field length over all documents), weighted by the default weights (whole text 1, title 0.3)
    and summed, over every document: the ranking the engine must reproduce without scoring
    every document."""
    n = len(docs)
    scores: dict[int, float] = {}
    for field, weight in DEFAULT_WEIGHTS.items():
        if not weight:
            continue
        avg = sum(sum(d[field].values()) for d in docs.values()) / n
        for term in terms:
            df = sum(1 for d in docs.values() if d[field][term])
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for fid, d in docs.items():
                tf = d[field][term]
                if tf:
                    norm = tf * (K1 + 1) / (tf + K1 * (1 - B + B * sum(d[field].values()) / avg))
                    scores[fid] = scores.get(fid, 0.0) + weight * idf * norm
    def matches(fid: int) -> bool:
        if allowed is not None and fid not in allowed:
            return False
        if not match_all:
            return True
        return all(docs[fid][WHOLE_TEXT][t] for t in terms)
    ranked = sorted(((fid, s) for fid, s in scores.items() if matches(fid)), key=lambda x: -x[1])
    return ranked


def assert_same_top(got: list[tuple[int, float]], exact: list[tuple[int, float]], k: int) -> None:
    """The engine's top k is the exact top k, up to near-ties: tantivy stores field lengths in
    one byte (exact below ~40 tokens, a few % off above: whole captions are longer), so two
    documents within 6 % of each other may swap."""
    assert len(got) == min(k, len(exact))
    exact_score = dict(exact)
    cutoff = exact[min(k, len(exact)) - 1][1]
    for rank, (fid, _score) in enumerate(got):
        assert exact_score[fid] >= cutoff * 0.94, (rank, fid, exact_score[fid], cutoff)
        assert exact_score[fid] >= exact[rank][1] * 0.94 or rank >= len(exact), (rank, fid)
    clearly_in = {f for f, score in exact[:k] if score > cutoff * 1.06}
    assert clearly_in <= {f for f, _ in got}, clearly_in - {f for f, _ in got}


@pytest.fixture(scope="module")
def docs(built) -> dict[int, dict[str, Counter]]:
    return _field_tokens(built[0])


def test_query_terms_drop_stopwords_but_never_everything():
    assert query_terms("the role of the cell in signalling") == ["role", "cell", "signal"]
    assert query_terms("The Of") == ["the", "of"]  # nothing but stopwords: keep them
    assert query_terms("Naïve T-cells") == ["naiv", "t", "cell"]


@pytest.mark.parametrize("query", ["the role of the cell in the expression of the protein",
                                   "effect of treatment on patients with disease",
                                   "results of the analysis in this study"])
def test_common_word_query_ranks_as_exact_bm25(index, docs, query):
    """An any-word query of common words (matching most captions) returns the exact top 20."""
    every_word = list(dict.fromkeys(analyse(query)))
    assert len(exact_bm25(docs, every_word, False)) > len(docs) // 2  # most captions match
    exact = exact_bm25(docs, query_terms(query), match_all=False)
    assert_same_top(index.search(query, 20), exact, 20)


def test_all_words_query_ranks_as_exact_bm25(index, docs):
    query = "virus replication in the cell"
    exact = exact_bm25(docs, query_terms(query), match_all=True)
    assert 10 < len(exact) < len(docs)
    assert_same_top(index.search(query, 10, match_all=True), exact, 10)


@pytest.mark.parametrize("flt", [
    FigureFilter(license_class="cc-by"),                           # a third: after ranking
    FigureFilter(commercial_only=True),                            # two thirds
    FigureFilter(year_from=2016, year_to=2016, journal="sci rep"),  # narrow: inside the engine
    FigureFilter(pmcid="PMC9000000"),                              # one figure
])
def test_filtered_query_ranks_as_exact_bm25_over_the_allowed_rows(built, index, docs, flt):
    store = built[0]
    if flt.pmcid:  # the article of a figure the query matches, far down the unfiltered ranking
        fid = index.search("the role of cells in virus infection", 50)[-1][0]
        flt.pmcid = store.get_figure(fid)["pmcid"]
    allowed = AllowedSet.from_ids(store.filtered_ids(flt), index.count)
    query = "the role of cells in virus infection"
    exact = exact_bm25(docs, query_terms(query), False, set(allowed.ids.tolist()))
    assert exact
    got = index.search(query, 10, allowed=allowed, flt=flt)
    assert all(fid in set(allowed.ids.tolist()) for fid, _ in got)
    assert_same_top(got, exact, 10)
    assert (allowed.selectivity >= BROAD_FILTER) == (flt.license_class is not None
                                                     or flt.commercial_only)


def _held_share(docs: dict[int, dict[str, Counter]], term: str) -> float:
    return sum(1 for d in docs.values() if d[WHOLE_TEXT][term]) / len(docs)


def test_common_terms_are_those_more_figures_hold_than_the_share(index, docs):
    terms = query_terms("cell expression of the viral protein receptor in patients")
    for share in (0.02, 0.05, 0.1):
        held = {t: _held_share(docs, t) for t in terms}
        assert index.common_terms(terms, share) == {t for t, h in held.items() if h > share}
    assert index.common_terms(terms, 0.0) == set()


@pytest.mark.parametrize("query", ["cell expression in the infected tissue of patients",
                                   "protein levels of the receptor after treatment",
                                   "the role of the cell in the expression of the protein"])
def test_a_common_word_cut_finds_candidates_by_rare_words_and_scores_them_by_every_word(
        index, docs, query):
    """With ``common_share`` the any-word candidates come from the words few figures hold, and
    each keeps the exact BM25 of every word (what they do to relevance is the evaluation's
    to judge: docs/scale.md)."""
    terms = query_terms(query)
    common = index.common_terms(terms, 0.05)
    exact = exact_bm25(docs, terms, match_all=False)
    got = index.any_word_search(query, 20, common_share=0.05)
    assert got != [] and len(got) <= 20
    plain = dict(index.search(query, len(docs)))  # the engine's own any-word scores
    for fid, score in got:
        assert score == pytest.approx(plain[fid], rel=1e-5)  # scored by every word
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    if not common or len(common) == len(terms):  # nothing to cut: the exact search itself
        assert got == index.search(query, 20)
        return
    rare = [t for t in terms if t not in common]
    by_rare = exact_bm25(docs, rare, match_all=False)  # the candidates: the rare words' top 20
    assert_same_top([(fid, dict(by_rare)[fid]) for fid, _ in
                     sorted(got, key=lambda h: -dict(by_rare)[h[0]])], by_rare, 20)
    assert {fid for fid, _ in got} != {fid for fid, _ in exact[:20]}  # the cut changed them


def test_no_common_share_is_the_exact_any_word_search(index):
    query = "cell expression in the infected tissue of patients"
    assert index.any_word_search(query, 20) == index.search(query, 20)
    assert index.ranked(query, 20, common_share=0.0) == index.ranked(query, 20)


def test_a_common_word_cut_keeps_to_the_filter(built, index):
    store = built[0]
    flt = FigureFilter(year_from=2016, year_to=2016, journal="sci rep")
    allowed = AllowedSet.from_ids(store.filtered_ids(flt), index.count)
    got = index.any_word_search("cell expression in the infected tissue of patients", 10,
                                allowed=allowed, flt=flt, common_share=0.05)
    assert got and all(fid in set(allowed.ids.tolist()) for fid, _ in got)


def test_empty_filter_and_empty_query_return_nothing(index):
    assert index.search("virus", 10, allowed=AllowedSet.empty(10),
                        flt=FigureFilter(journal="nowhere")) == []
    assert index.search("  ,;  ", 10) == []


def test_field_weights_change_the_ranking(index):
    query = "virus"
    title_heavy = index.search(query, 10, weights={"text": 0.1, "title": 5.0})
    default = index.search(query, 10)
    assert [f for f, _ in title_heavy] != [f for f, _ in default]


def test_highlights_mark_exactly_the_searched_stems():
    terms = set(query_terms("the signalling receptors"))
    assert mark("Receptor signals <b> & the receptor-ligand", terms) == (
        "<mark>Receptor</mark> <mark>signals</mark> &lt;b&gt; &amp; the "
        "<mark>receptor</mark>-ligand")
    assert mark("Café naïve", set(query_terms("cafe naive"))) == "<mark>Café</mark> <mark>naïve</mark>"


def test_ocr_snippet_is_the_best_window_with_ellipses():
    words = " ".join(f"w{i}" for i in range(40))
    text = words + " kinase kinase " + words
    snippet = ocr_snippet(text, set(query_terms("kinase")), tokens=6)
    assert snippet.startswith("…") and snippet.endswith("…")
    assert snippet.count("<mark>kinase</mark>") == 2
    assert ocr_snippet("Nucleus\nQWERTYASE", set(query_terms("qwertyase"))) == \
        "Nucleus\n<mark>QWERTYASE</mark>"
    assert ocr_snippet("nothing here", {"kinas"}) == ""


def _file_digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file() and not p.name.endswith(".lock")}


def test_delta_update_finds_new_text_and_never_writes_the_previous_version(
        tmp_path, shared_data):
    store = FigureStore(tmp_path / "figsearch.db")
    fill_store(store, shared_data)
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir(), v2.mkdir()
    write_keyword_index(store, v1, progress=False)
    before = _file_digests(v1 / KEYWORD_DIR)
    old = KeywordIndex.load(v1)
    old_hits = old.search("interferon", 5)
    # one article changes its caption, one is removed, one is new
    store.upsert_article(ArticleRecord(key="PMC9000003", source="pmc", pmcid="PMC9000003",
                                       content_hash="changed"),
                         [FigureRecord(fig_id="f1", caption="Zyxwvutase in the nucleus")])
    gone = store.figure_ids_for_article("PMC9000010")
    store.remove_article("PMC9000010")
    store.upsert_article(ArticleRecord(key="PMCNEW", source="pmc", pmcid="PMCNEW",
                                       content_hash="new"),
                         [FigureRecord(fig_id="f1", caption="Qwertyase cascade")])
    changed = store.figure_ids_for_article("PMC9000003") + store.figure_ids_for_article("PMCNEW")
    entry = update_keyword_index(v1, v2, store, gone, changed)
    new = KeywordIndex.load(v2)
    assert entry["keyword"]["count"] == new.count == old.count
    assert [f for f, _ in new.search("zyxwvutase", 5)] == store.figure_ids_for_article("PMC9000003")
    assert [f for f, _ in new.search("qwertyase", 5)] == store.figure_ids_for_article("PMCNEW")
    assert not set(gone) & {f for f, _ in new.search(" ".join(analyse("virus cell")), 1000)}
    assert _file_digests(v1 / KEYWORD_DIR) == before
    assert KeywordIndex.load(v1).search("interferon", 5) == old_hits
    store.close()


_UPDATE_SCRIPT = """
import sys
from pathlib import Path
from figsearch.keyword_index import update_keyword_index
from figsearch.store import FigureStore
from indexer.build import build_text_version
root = Path(sys.argv[1])
store = FigureStore(root / "figsearch.db", create=False)
previous = (root / "indexes" / "current").resolve()
changed = store.figure_ids_for_article("PMC9000003")
build_text_version(root / "indexes",
                   lambda d: update_keyword_index(previous, d, store, [], changed), keep=2)
"""


@pytest.mark.parametrize("fault", ["keyword-deleted", "keyword-committed"])
def test_a_crash_during_a_keyword_update_leaves_the_served_version_searchable(
        tmp_path, shared_data, fault):
    """SIGKILL in the middle of a delta update (before or after tantivy's commit): ``current``
    still points at the previous version, which answers as before; a rerun completes."""
    from figsearch.index import current_version_dir
    from indexer.build import build_text_version

    store = FigureStore(tmp_path / "figsearch.db")
    fill_store(store, shared_data)
    served = build_text_version(tmp_path / "indexes",
                                lambda d: write_keyword_index(store, d, progress=False))
    hits = KeywordIndex.load(served).search("interferon receptor", 10)
    store.upsert_article(ArticleRecord(key="PMC9000003", source="pmc", pmcid="PMC9000003",
                                       content_hash="changed"),
                         [FigureRecord(fig_id="f1", caption="Zyxwvutase in the nucleus")])
    store.close()
    env = {**os.environ, "FIGSEARCH_FAULT_AT": fault, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", _UPDATE_SCRIPT, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    assert current_version_dir(tmp_path / "indexes") == served.resolve()
    survivor = KeywordIndex.load(served)
    assert survivor.search("interferon receptor", 10) == hits
    assert survivor.search("zyxwvutase", 5) == []
    env.pop("FIGSEARCH_FAULT_AT")
    rerun = subprocess.run([sys.executable, "-c", _UPDATE_SCRIPT, str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    fresh = KeywordIndex.load(current_version_dir(tmp_path / "indexes"))
    assert len(fresh.search("zyxwvutase", 5)) == 1
    assert fresh.count == survivor.count


def test_nightly_keyword_delta_sees_new_ocr_text_licence_changes_and_removals(
        tmp_path, shared_data):
    """write_or_update_keyword_index diffs the store itself: figures gone, new ones, articles
    re-ingested (here: only the licence changed) and in-figure text read since the previous
    index read the store."""
    from sqlalchemy import text

    from figsearch.keyword_index import write_or_update_keyword_index

    store = FigureStore(tmp_path / "figsearch.db")
    fill_store(store, shared_data)
    with store.engine.begin() as conn:  # yesterday's ingest
        conn.execute(text("UPDATE articles SET ingested_at = '2026-01-01 00:00:00.000000'"))
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir(), v2.mkdir()
    entry = write_or_update_keyword_index(store, v1, None, progress=False)
    (v1 / "manifest.json").write_text(json.dumps(entry))
    store.upsert_article(ArticleRecord(key="PMC9000005", source="pmc", pmcid="PMC9000005",
                                       license_class="cc0", content_hash="relicensed"),
                         [FigureRecord(fig_id="f1", caption=_captions(shared_data)[5][0],
                                       sha256="ab" * 32)])
    store.put_ocr([("ab" * 32, "Qwertyase kinase", 2, "test", None)])
    gone = store.figure_ids_for_article("PMC9000011")
    store.remove_article("PMC9000011")
    entry2 = write_or_update_keyword_index(store, v2, v1, progress=False)
    assert entry2["keyword"]["delta"] == {"removed": 1, "upserted": 1, "from": "v1"}
    new = KeywordIndex.load(v2)
    (fid,) = store.figure_ids_for_article("PMC9000005")
    assert [f for f, _ in new.search("qwertyase", 5)] == [fid]
    cc0 = FigureFilter(license_class="cc0")
    hits = new.search("qwertyase", 5, allowed=AllowedSet.from_ids([fid], new.count), flt=cc0)
    assert [f for f, _ in hits] == [fid]  # the licence filter field follows the re-ingest
    assert not set(gone) & {f for f, _ in new.search(" ".join(analyse("virus cell")), 1000)}
    assert new.count == KeywordIndex.load(v1).count - 1
    store.close()


# -- shards -------------------------------------------------------------------------------------
def test_auto_shards_follow_size_and_cores():
    assert auto_shards(1_000_000, cores=2) == 1
    assert auto_shards(15_000_000, cores=2) == 2
    assert auto_shards(15_000_000, cores=16) == 8
    assert auto_shards(0, cores=4) == 1


@pytest.fixture(scope="module")
def sharded(built, tmp_path_factory) -> KeywordIndex:
    version = tmp_path_factory.mktemp("sharded")
    entry = write_keyword_index(built[0], version, progress=False, shards=3)
    assert entry["keyword"]["shards"] == 3
    loaded = KeywordIndex.load(version)
    assert loaded is not None
    return loaded


def test_shards_hold_each_figure_once_by_id(sharded, index):
    assert len(sharded.searchers) == 3 and sharded.count == index.count
    for i, searcher in enumerate(sharded.searchers):
        ids = searcher.fast_field_values("id", [a for _, a in searcher.search(
            tantivy.Query.all_query(), index.count).hits])
        assert ids and all(fid % 3 == i for fid in ids)


@pytest.mark.parametrize("query", ["the role of the cell in the expression of the protein",
                                   "effect of treatment on patients with disease",
                                   "interferon receptor signalling", "virus replication"])
def test_sharded_search_keeps_exact_bm25s_top(sharded, docs, query):
    """Shards score with their own statistics, so the merged top 20 is the exact one up to
    wider near-ties: at ~260 figures a shard (here) a figure within 20 % of the exact 20th
    may swap in; at 7.5 M a shard, within ~5 % (97.6 % of the one-shard top 20 at 15 M,
    docs/scale.md)."""
    exact = exact_bm25(docs, query_terms(query), match_all=False)
    exact_score, cutoff = dict(exact), exact[19][1]
    got = sharded.search(query, 20)
    assert len(got) == 20
    assert len({f for f, _ in exact[:20]} & {f for f, _ in got}) >= 16
    assert min(exact_score[f] for f, _ in got) >= 0.8 * cutoff
    assert got[0][0] in {f for f, _ in exact[:3]}


def test_a_delta_update_keeps_the_shards_and_routes_by_id(built, sharded, tmp_path):
    store = built[0]
    store.upsert_article(ArticleRecord(key="PMCSHARD", source="pmc", pmcid="PMCSHARD",
                                       content_hash="s"),
                         [FigureRecord(fig_id="f1", caption="Plokmijnase in shards")])
    new_ids = store.figure_ids_for_article("PMCSHARD")
    try:
        v2 = tmp_path / "v2"
        v2.mkdir()
        entry = update_keyword_index(sharded.path.parent, v2, store, [], new_ids)
        assert entry["keyword"]["shards"] == 3
        after = KeywordIndex.load(v2)
        assert [f for f, _ in after.search("plokmijnase", 5)] == new_ids
        assert after.count == sharded.count + 1
        assert KeywordIndex.load(sharded.path.parent).search("plokmijnase", 5) == []
    finally:
        store.remove_article("PMCSHARD")
