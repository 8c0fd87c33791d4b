"""Figure types travel with the index version: a rebuild changes nothing users see until the
swap (a real API server on loopback, real rebuilds with two tiny models)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from figsearch.columns import VersionColumns
from figsearch.core.config import Settings
from figsearch.encoders import load_model
from figsearch.index import SearchIndex, current_version_dir
from figsearch.store import FigureFilter, FigureStore
from figsearch.version_data import VersionedStore, VersionTypes, versioned_store
from indexer.build import list_versions
from indexer.indexing import index_all
from indexer.rebuild import rebuild
from tests.figsearch.api_fixtures import loaded_app, serve_in_thread
from tests.indexer.test_embed import ingested_settings, manifest_subset
from tests.trainer.tiny import make_tiny_model_dir


def _types(version_dir) -> dict[int, str]:
    """figure id -> type, as the version directory records them."""
    index = SearchIndex.load(version_dir)
    types = VersionTypes.load(version_dir, index.manifest, index.ids)
    assert types is not None
    return {int(i): str(kind) for i, (kind, _) in zip(index.ids, types.lookup(index.ids), strict=True)}


def _seen(http: httpx.Client, ids: list[int]) -> tuple[list[str], dict[int, str], dict[str, set[int]]]:
    """What users see: facet values, each figure's type, and what each type filter returns."""
    facets = http.get("/v1/facets").json()["figure_types"]
    per_figure = {i: http.get(f"/v1/figures/{i}").json()["figure_type"] for i in ids}
    filtered = {}
    for kind in facets:
        r = http.get("/v1/search", params={"q": "figure", "mode": "dense", "figure_type": kind,
                                           "k": 100, "dedup": "false"})
        assert r.status_code == 200, r.text
        filtered[kind] = {h["id"] for h in r.json()["results"]}
    return facets, per_figure, filtered


def _expected(types: dict[int, str], ids: list[int]) -> tuple[list[str], dict[int, str | None], dict[str, set[int]]]:
    kinds = sorted(set(types.values()))
    return kinds, {i: types.get(i) for i in ids}, {k: {i for i, t in types.items() if t == k} for k in kinds}


def _wait_for_version(http: httpx.Client, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while http.get("/v1/stats").json()["index_version"] != version:
        assert time.monotonic() < deadline, f"the server never loaded {version}"
        time.sleep(0.1)


def test_figure_types_switch_with_current_and_not_before(shared_data, tmp_path, tiny_model_dir):
    settings = ingested_settings(shared_data, tmp_path, stop=10)
    encoder_a = load_model(str(tiny_model_dir), device="cpu", batch_size=4)
    model_b = make_tiny_model_dir(tmp_path / "models" / "tiny-b", seed=3)
    encoder_b = load_model(str(model_b), device="cpu", batch_size=4)
    first = index_all(settings, encoder=encoder_a, progress=False)
    assert first is not None
    types_a = _types(first.version_dir)
    store = FigureStore(settings.db_path)
    # the build wrote the version's filter columns, figure types from the version itself:
    # the API below filters through them (figsearch.columns), and they equal the SQL view's
    columns = VersionColumns.load(first.version_dir, store=store)
    assert columns is not None and columns.vocab["figure_types_from"] == "version"
    index_a = SearchIndex.load(first.version_dir)
    view_a = versioned_store(store, first.version_dir, index_a.manifest, index_a.ids)
    for kind in set(types_a.values()):
        flt = FigureFilter(figure_type=kind)
        assert columns.allowed(flt).ids.tolist() == view_a.filtered_ids(flt).tolist()
    with store.engine.connect() as conn:  # the build wrote no figure type into the store
        assert conn.execute(text("SELECT count(*) FROM figures WHERE figure_type IS NOT NULL")).scalar() == 0

    serve = Settings(data_dir=settings.data_dir, device="cpu", rate_limit_per_minute=0,
                     reload_interval_s=0.1, dedup_threshold=0.99999, admin_token="")
    batch = manifest_subset(shared_data, tmp_path / "more.jsonl", 20, 26)
    with serve_in_thread(loaded_app(serve, start_poller=True)) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        ids = sorted(types_a)
        assert _seen(http, ids) == _expected(types_a, ids)

        def corrupt(stage: str) -> None:  # the new version is damaged before validation
            if stage == "renamed":
                with open(list_versions(settings.indexes_dir)[-1] / "vectors.npy", "r+b") as fh:
                    fh.seek(200)
                    fh.write(b"\x00" * 16)

        with pytest.raises(Exception, match="checksum mismatch"):
            rebuild(settings, [str(batch)], str(model_b), encoder=encoder_b, hook=corrupt,
                    progress=False)
        time.sleep(0.5)  # several poller rounds
        assert current_version_dir(settings.indexes_dir) == first.version_dir.resolve()
        all_ids = sorted({r[0] for b in store.iter_figure_rows() for r in b})
        assert len(all_ids) == 16 and _seen(http, all_ids) == _expected(types_a, all_ids)

        report = rebuild(settings, [str(batch)], str(model_b), encoder=encoder_b, progress=False)
        _wait_for_version(http, report.version)
        types_b = _types(current_version_dir(settings.indexes_dir))
        assert set(types_b) == set(all_ids)
        assert any(types_b[i] != types_a[i] for i in types_a)  # the new model's types differ
        assert _seen(http, all_ids) == _expected(types_b, all_ids)
    store.close()


def test_keyword_search_filters_by_the_versions_types_and_widens(store, tmp_path):
    from figsearch.records import ArticleRecord, FigureRecord

    figs = [FigureRecord(fig_id=f"f{i}", label=f"Fig {i}", caption="kinase signalling cascade")
            for i in range(30)]
    store.upsert_article(ArticleRecord(key="a", source="test", title="t", journal="J", year=2020), figs)
    ids = np.array(sorted(store.figure_ids_for_article("a")), np.int64)
    codes = np.zeros(len(ids), np.int16)
    codes[-2:] = 1  # only the last two are photos
    view = VersionedStore(store, VersionTypes(("chart", "photo"), ids, codes,
                                              np.full(len(ids), 0.5, np.float16)))
    hits = view.keyword_search("kinase", 2, FigureFilter(figure_type="photo"))
    assert [i for i, _ in hits] and {i for i, _ in hits} == set(ids[-2:].tolist())
    assert view.filtered_ids(FigureFilter(figure_type="photo")).tolist() == ids[-2:].tolist()
    assert view.distinct_values("figure_type") == ["chart", "photo"]
    assert view.get_figure(int(ids[0]))["figure_type"] == "chart"
    assert store.get_figure(int(ids[0]))["figure_type"] is None  # the store itself is untouched
