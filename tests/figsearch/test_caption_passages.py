"""Caption passages (MaxP): long captions are also embedded in overlapping sentence windows, and
a figure scores as its best vector, so what a long caption says late still finds it.

Real offline caption encoder (all-MiniLM-L6-v2), real FAISS indexes written by the build's own
writer (:func:`indexer.captions.write_caption_index`) and read by the service's loader.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.passage_rerank import counted_rows
from figsearch.caption_index import (
    PASSAGE_SLOTS,
    CaptionEncoder,
    PassageIndex,
    caption_passages,
    caption_text,
    load_caption_index,
    passage_key,
)
from figsearch.index import SearchIndex

# Twelve sentences on the methods of a figure, then the one sentence that says what a reader
# searching for it would type: far past the 256 word pieces the encoder reads.
METHODS = [
    f"Panel {chr(65 + i)} shows cultured cells of line {i} fixed with paraformaldehyde, "
    f"permeabilised with detergent, stained with antibody clone {100 + i} and imaged on a "
    f"confocal microscope at {20 + i} degrees with identical exposure settings in every repeat."
    for i in range(12)
]
LATE = ("Kaplan-Meier curves of progression-free survival in EGFR-mutant non-small cell lung "
        "cancer patients treated with osimertinib.")
CAPTIONS = {
    1: " ".join([*METHODS, LATE]),
    2: "Confocal images of stained cultured cells after fixation.",
    3: "Western blot of EGFR phosphorylation in cell lines.",
    4: "Overall survival of breast cancer patients by tumour grade.",
    5: "Flow cytometry gating of T cells from mouse spleen.",
}
QUERY = "Kaplan-Meier survival of EGFR mutant lung cancer under osimertinib"


def test_passages_are_overlapping_windows_of_three_sentences():
    sentences = [f"Sentence {i} about E. coli at p < 0.05 in panel {i}." for i in range(7)]
    got = caption_passages("Figure 2", " ".join(sentences), "A title", limit=8)
    windows = [sentences[0:3], sentences[2:5], sentences[4:7], sentences[6:7]]
    assert got == [caption_text("Figure 2", " ".join(w), "A title") for w in windows]
    assert len(caption_passages("Figure 2", " ".join(sentences), "A title", limit=2)) == 2
    # a caption one window long is its own (only) vector: no passage repeats it
    assert caption_passages("Fig. 1", " ".join(sentences[:3]), "T", limit=8) == [
        caption_text("Fig. 1", sentences[2], "T")]
    assert caption_passages("Fig. 1", "One sentence. Two sentences.", "T", limit=8) == []
    assert caption_passages("Fig. 1", "", "T", limit=8) == []


def test_passage_keys_stay_inside_their_figures_slots():
    assert passage_key(7, 1) // PASSAGE_SLOTS == 7 == passage_key(7, PASSAGE_SLOTS - 1) // PASSAGE_SLOTS
    assert len(caption_passages("F", " ".join(["A b."] * 100), "T", limit=99)) == PASSAGE_SLOTS - 1


@pytest.fixture(scope="module")
def encoder():
    return CaptionEncoder("all-MiniLM-L6-v2")


def _version(tmp_path, encoder, passages: int):
    from indexer.captions import CaptionReport, CaptionVectors, write_caption_index

    ids = np.array(sorted(CAPTIONS), np.int64)
    whole = encoder.encode_texts([caption_text("Figure 1", CAPTIONS[i], "") for i in ids])
    keys, texts = [], []
    for fid in ids:
        for n, t in enumerate(caption_passages("Figure 1", CAPTIONS[fid], "", passages), 1):
            keys.append(passage_key(int(fid), n))
            texts.append(t)
    built = CaptionVectors(ids, whole, np.array(keys, np.int64), encoder.encode_texts(texts),
                           CaptionReport(len(ids), len(ids) + len(keys), 0, 0.0, len(keys)))
    version = tmp_path / f"v-{passages}"
    summary = write_caption_index(version, built, encoder)
    assert summary["passages"] == len(keys)
    return load_caption_index(version)


def test_a_late_sentence_of_a_long_caption_finds_its_figure_only_with_passages(tmp_path, encoder):
    q = encoder.encode_texts([QUERY])
    plain = _version(tmp_path, encoder, passages=0)
    maxp = _version(tmp_path, encoder, passages=8)
    assert isinstance(plain, SearchIndex) and isinstance(maxp, PassageIndex)
    plain_order = plain.search(q, 5)[1][0].tolist()
    maxp_scores, maxp_ids = maxp.search(q, 5)
    # The whole caption's one vector never reaches the last sentence: another figure wins.
    assert plain_order[0] != 1
    assert maxp_ids[0].tolist()[0] == 1
    # Each figure once, best first; the other figures keep their whole-caption scores.
    assert sorted(maxp_ids[0].tolist()) == sorted(CAPTIONS)
    assert (np.diff(maxp_scores[0]) <= 0).all()
    whole = plain.scores_for(q, sorted(CAPTIONS))
    best = maxp.scores_for(q, sorted(CAPTIONS))
    assert best[1] > whole[1] + 0.1
    assert all(best[i] == pytest.approx(whole[i]) for i in (2, 3, 4, 5))
    assert best[1] == pytest.approx(float(maxp_scores[0][0]), abs=1e-5)


def test_passage_search_keeps_to_the_allowed_figures(tmp_path, encoder):
    maxp = _version(tmp_path, encoder, passages=8)
    q = encoder.encode_texts([QUERY])
    scores, ids = maxp.search(q, 5, allowed_ids=np.array([1, 4], np.int64))
    assert ids[0].tolist()[:2] == [1, 4] and (ids[0][2:] == -1).all()
    # the allowed figure keeps its best passage's score, not its whole caption's
    assert scores[0][0] == pytest.approx(maxp.scores_for(q, [1])[1], abs=1e-5)
    assert scores[0][0] > maxp.whole.scores_for(q, [1])[1] + 0.1
    _scores, ids = maxp.search(q, 5, allowed_ids=np.array([2, 3], np.int64))
    assert sorted(ids[0].tolist()[:2]) == [2, 3]
    # an AllowedSet (what version columns hand the service) filters the same way
    from figsearch.columns import AllowedSet

    same_scores, same = maxp.search(q, 5, allowed_ids=AllowedSet.from_ids([4, 1], total=5))
    assert same[0].tolist() == maxp.search(q, 5, allowed_ids=np.array([1, 4]))[1][0].tolist()
    assert same_scores[0][0] == pytest.approx(float(scores[0][0]))


def test_the_service_builds_and_loads_passages(tmp_path, shared_data, tiny_model_dir):
    """`figsearch index`'s code path writes captions/passages/ for the real captions, and the
    service's caption search returns each figure once."""
    from figsearch.api.state import AppState
    from figsearch.core.config import Settings
    from indexer.indexing import index_text_only
    from tests.figsearch.api_fixtures import populate_store

    populate_store(tmp_path, shared_data, n_real=6).close()
    settings = Settings(data_dir=tmp_path, device="cpu", model=str(tiny_model_dir))
    index_text_only(settings)
    state = AppState(settings)
    state.reload()
    try:
        service = state.current.service
        assert isinstance(service.captions.index, PassageIndex)
        assert service.captions.index.passages.ntotal > service.captions.index.ntotal
        ids = [h.id for h in service.search_text("interferon signalling", k=20, mode="caption").hits]
        assert ids and len(ids) == len(set(ids))
    finally:
        state.close()


@pytest.mark.parametrize("preset", [None, "2"])
def test_the_demos_first_version_skips_passages_unless_asked(tmp_path, shared_data, monkeypatch,
                                                             preset):
    """`make demo`'s text-only version embeds whole captions only (the search box comes up
    sooner), unless FIGSEARCH_CAPTION_PASSAGES is set; the setting is left as it was."""
    from figsearch.caption_index import CAPTIONS_DIR, PASSAGES_DIR
    from figsearch.core.config import Settings
    from figsearch.demo import ensure_text_index
    from figsearch.index import current_version_dir
    from tests.figsearch.api_fixtures import populate_store

    monkeypatch.delenv("FIGSEARCH_CAPTION_PASSAGES", raising=False)
    if preset is not None:
        monkeypatch.setenv("FIGSEARCH_CAPTION_PASSAGES", preset)
    populate_store(tmp_path, shared_data, n_real=4).close()
    settings = Settings(data_dir=tmp_path)
    ensure_text_index(settings)
    version = current_version_dir(settings.indexes_dir)
    assert version is not None and (version / CAPTIONS_DIR).is_dir()
    assert (version / CAPTIONS_DIR / PASSAGES_DIR).is_dir() == (preset is not None)
    assert os.environ.get("FIGSEARCH_CAPTION_PASSAGES") == preset


def test_passages_share_the_caption_indexs_memory_budget():
    """At scale the factory rule picks PQ codes to fit ``index_memory_gb``: passages take their
    share of it instead of a budget of their own (which would multiply the caption RAM)."""
    from figsearch.index import choose_factory
    from indexer.captions import caption_budgets

    assert caption_budgets(100, 0, 16.0) == (12.0, 0.0)  # the image index keeps a quarter
    whole_gb, passages_gb = caption_budgets(15_000_000, 45_000_000, 16.0)
    assert whole_gb + passages_gb == pytest.approx(12.0) and passages_gb == pytest.approx(9.0)
    # 45 M passages of 384 dims under their share: PQ codes whose total stays inside it
    factory = choose_factory(45_000_000, 384, passages_gb)
    code = int(factory.rsplit("PQ", 1)[1])
    assert 45_000_000 * (code + 8) <= passages_gb * 2**30


def _code_bytes(factory: str, dim: int) -> int:
    """Bytes a vector takes in an index's lists: its code and its 8-byte id."""
    codec = factory.rsplit(",", 1)[-1]
    per_vector = {"Flat": 4 * dim, "SQ8": dim}.get(codec) or int(codec.removeprefix("PQ"))
    return per_vector + 8


@pytest.mark.parametrize("figures, passages_per_figure", [
    (1_000_000, 2.0), (15_000_000, 2.0), (15_000_000, 3.25)])
def test_a_versions_codes_fit_its_one_memory_budget(figures, passages_per_figure):
    """``index_memory_gb`` bounds all of a version's codes, not each index's: the image index
    (92 % of figures, 512-d) takes a quarter, whole captions and passages (384-d) the rest. With
    the default budget, 15 M figures fit in it with PQ codes of at least 16 bytes (the image
    index's 32); 1 M keep SQ8 codes, as they had when every index had the whole budget."""
    from figsearch.core.config import Settings
    from figsearch.index import choose_factory, image_budget
    from indexer.captions import caption_budgets

    budget = Settings().index_memory_gb
    images, passages = int(figures * 0.92), int(figures * passages_per_figure)
    whole_gb, passages_gb = caption_budgets(figures, passages, budget)
    factories = [(images, 512, choose_factory(images, 512, image_budget(budget))),
                 (figures, 384, choose_factory(figures, 384, whole_gb)),
                 (passages, 384, choose_factory(passages, 384, passages_gb))]
    total = sum(n * _code_bytes(factory, dim) for n, dim, factory in factories)
    assert total <= budget * 2**30
    codecs = [factory.rsplit(",", 1)[-1] for _, _, factory in factories]
    if figures < 10_000_000:
        assert codecs == ["SQ8", "SQ8", "SQ8"]
    else:
        assert codecs[0] == "PQ32" and all(int(c.removeprefix("PQ")) >= 16 for c in codecs)


def _maxp_as_read_in_full(maxp, q, k, allowed=None):
    """What a MaxP search returns when every candidate's vectors are read again: the whole
    search's figures and the figures of the 2k nearest parts, each scored by ``scores_for``."""
    _s, whole = maxp.whole.search(q, k, allowed)
    _s, parts = maxp.parts.search(q, 2 * k, rerank_factor=maxp.part_rerank_factor(10))
    found = parts[0][parts[0] >= 0] // PASSAGE_SLOTS
    if allowed is not None:
        found = found[np.isin(found, allowed)]
    candidates = np.unique(np.concatenate([whole[0][whole[0] >= 0], found])).tolist()
    best = sorted(maxp.scores_for(q[0], candidates).items(), key=lambda kv: (-kv[1], kv[0]))
    return best[:k]


def _pq_passage_index(tmp_path, n=3000, dim=32, seed=3):
    """A MaxP layer at PQ size (re-ranked from stored vectors): n figures of 0-3 passages,
    clustered. Returns (the PassageIndex, {"whole"|"parts": SearchIndex}, ids, a function
    drawing unit vectors of the same clusters)."""
    from indexer.build import build_version

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim)).astype(np.float32)

    def unit(count):
        x = centres[rng.integers(0, 30, count)] + 0.4 * rng.standard_normal((count, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    ids = np.arange(1, n + 1, dtype=np.int64)
    per_figure = rng.integers(0, 4, n)  # 0-3 passages a figure
    keys = np.array([passage_key(int(f), p) for f, c in zip(ids, per_figure, strict=True)
                     for p in range(1, c + 1)], np.int64)
    versions = {}
    for name, vectors, rows in (("whole", unit(n), ids), ("parts", unit(len(keys)), keys)):
        versions[name] = SearchIndex.load(build_version(
            tmp_path / name, vectors, rows, model_spec="s", model_key="k", factory="IVF16,PQ8"),
            nprobe=4)
    maxp = PassageIndex(versions["whole"], versions["parts"])
    assert maxp.whole.compressed and maxp.parts.compressed
    return maxp, versions, ids, unit


def _counting(versions, run, *args):
    """``run(*args)`` with each index's row reads counted: (its result, {index: rows read})."""
    with counted_rows(versions) as counted:
        result = run(*args)
    return result, {name: c.read for name, c in counted.items()}


def test_a_passage_search_reads_no_vector_its_searches_already_scored(tmp_path):
    """At PQ size a passage search re-ranks the whole captions and the passages from their
    stored vectors; scoring the candidates by their best vector then reads only the vectors
    not re-ranked, and ranks exactly as reading them all again would."""
    maxp, versions, ids, unit = _pq_passage_index(tmp_path)
    rng = np.random.default_rng(4)
    allowed = np.sort(rng.choice(ids, len(ids) // 3, replace=False))
    for flt in (None, allowed):
        maxp.search(unit(1), 20, flt)  # a filter's plan reads its rows once, on first use
        for q in unit(5)[:, None, :]:
            expected, in_full = _counting(versions, _maxp_as_read_in_full, maxp, q, 20, flt)
            (scores, found), read = _counting(versions, maxp.search, q, 20, flt)
            assert found[0].tolist() == [f for f, _ in expected]
            assert scores[0].tolist() == pytest.approx([s for _, s in expected], abs=0)
            if flt is not None:
                assert np.isin(found[0], flt).all()
            # not read again: the whole search's 20 figures, and the 40 nearest passages of
            # the figures that are candidates (the filter's, when there is one)
            _s, top_parts = maxp.parts.search(q, 40, rerank_factor=maxp.part_rerank_factor(10))
            kept = top_parts[0] // PASSAGE_SLOTS
            kept = kept[np.isin(kept, flt)] if flt is not None else kept
            assert read["whole"] == in_full["whole"] - 20
            assert read["parts"] == in_full["parts"] - len(kept) > 0
    # without re-ranking (PQ scores) every candidate vector is read, as before
    q = unit(1)
    approx_scores, approx = maxp.search(q, 20, rerank=False)
    exact = maxp.scores_for(q[0], approx[0].tolist())
    assert approx_scores[0].tolist() == pytest.approx([exact[f] for f in approx[0].tolist()],
                                                      abs=0)


def _exact_maxp(maxp, q, k):
    """The exact MaxP top k: every figure scored by its best vector, read in full."""
    scores = maxp.scores_for(q, maxp.whole.ids.tolist())
    return [f for f, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def test_the_parts_search_reranks_half_as_deep_and_keeps_the_exact_top(tmp_path):
    """The parts search only names candidates, each then scored exactly by its best vector:
    it re-ranks half as deep as the whole search (2k parts x 5 rows, not x 10) and the
    result still holds the exact MaxP top 20 as well as re-ranking in full does."""
    maxp, versions, _ids, unit = _pq_passage_index(tmp_path, n=4000)
    queries = unit(30)
    k = 20
    assert maxp.part_rerank_factor(10) == 5 and maxp.part_rerank_factor(1) == 1

    def run(share):
        maxp.part_rerank_share = share
        rows, overlap = [], []
        for q in queries:
            (_s, found), read = _counting(versions, maxp.search, q[None, :], k)
            rows.append(read["parts"])
            overlap.append(len(set(found[0].tolist()) & set(_exact_maxp(maxp, q, k))) / k)
        return np.array(rows), float(np.mean(overlap))

    try:
        full_rows, full_recall = run(1.0)
        half_rows, half_recall = run(0.5)
    finally:
        maxp.part_rerank_share = type(maxp).part_rerank_share
    # the parts search reads 2k x 5 = 200 rows fewer per query; what it saves in re-ranking,
    # scoring the candidates may partly read back (a part it no longer scored exactly)
    assert np.median(full_rows - half_rows) >= 100
    assert half_recall >= 0.95
    assert half_recall >= full_recall - 0.02
