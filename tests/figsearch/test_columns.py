"""figsearch.columns: a version's columnar filter metadata answers every filter exactly as
``FigureStore.filtered_ids`` (the SQL) does, and filtered search over a real IVF index returns
the exact top-k of the allowed subset whichever plan runs (real SQLite store, real FAISS)."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import text

from figsearch.columns import AllowedSet, VersionColumns, bit_test, sql_lower, write_columns
from figsearch.core.config import Settings
from figsearch.index import SearchIndex
from figsearch.search import SearchService
from figsearch.store import FigureFilter, FigureStore
from figsearch.version_data import LABELS_KEY, TYPES_FILE, VersionedStore, VersionTypes
from indexer.build import build_text_version, build_version, combine_add_files

faiss.omp_set_num_threads(1)  # OpenMP spin-waits badly on the shared 2-core CI machine

JOURNALS = ["J Test", "j test", "Nature", "NATURE", "Cell Reports", "Émile Journal", "émile journal",
            ""]
LICENSES = ["cc-by", "cc-by", "cc-by-nc", "cc0", "cc-by-nd", "none", "public-domain", "cc-by-sa"]
TYPES = ["chart/plot", "microscopy", "diagram/pathway", "photograph", None]
#: (the figure's own license class, third-party statement): mostly none of either
RIGHTS = [(None, None)] * 6 + [("cc0", None), ("other", None), ("none", None), (None, ""),
                               (None, "Reprinted with permission."), ("cc-by", "© Elsevier")]
N_ARTICLES = 400
FIGS_PER_ARTICLE = 3


def fill(store: FigureStore, seed: int = 0) -> None:
    """N_ARTICLES articles x 3 figures through plain SQL (the store's own schema, FTS triggers
    included): random years (some unknown), journals differing in case, licenses, figure
    types; two articles share a pmcid, two are retracted, and a few figures have no image."""
    rng = np.random.default_rng(seed)
    conn = sqlite3.connect(store.path)
    arts, figs = [], []
    for a in range(1, N_ARTICLES + 1):
        year = None if a % 17 == 0 else int(rng.integers(1995, 2026))
        journal = JOURNALS[int(rng.integers(0, len(JOURNALS)))]
        license_class = LICENSES[int(rng.integers(0, len(LICENSES)))]
        pmcid = "PMC7" if a in (5, 300) else (None if a % 41 == 0 else f"PMC{1000 + a}")
        arts.append((a, f"k{a}", pmcid, f"Article {a}", journal, year, license_class,
                     int(a in (9, 200))))
        for j in range(FIGS_PER_ARTICLE):
            fid = (a - 1) * FIGS_PER_ARTICLE + j + 1 + (a > 100) * 7  # a gap in the ids
            figs.append((fid, f"k{a}/F{j}", a, f"F{j}", f"figure {fid} of cells",
                         int(fid % 23 != 0), TYPES[int(rng.integers(0, len(TYPES)))]))
    conn.executemany(
        "INSERT INTO articles(id, key, pmcid, title, journal, year, license_text, license_url, "
        "license_class, source, content_hash, retracted, ingested_at) "
        "VALUES (?, ?, ?, ?, ?, ?, '', '', ?, 'test', '', ?, '2026-01-01 00:00:00')", arts)
    conn.executemany(
        "INSERT INTO figures(id, key, article_id, fig_id, label, caption, has_image, source, "
        "figure_type, attributes) VALUES (?, ?, ?, ?, 'Figure', ?, ?, 'test', ?, '{}')", figs)
    # figures' own rights (the reusable filter): own licenses, open or not, third-party
    # statements, and an empty statement (not third-party)
    rights = [(RIGHTS[int(rng.integers(0, len(RIGHTS)))], fid) for fid, *_ in figs]
    conn.executemany("UPDATE figures SET rights_license_class = ?, third_party = ? WHERE id = ?",
                     [(lc, tp, fid) for (lc, tp), fid in rights])
    conn.commit()
    conn.close()


FILTERS = [
    FigureFilter(),
    FigureFilter(year_from=2010),
    FigureFilter(year_to=2004),
    FigureFilter(year_from=2005, year_to=2006),
    FigureFilter(year_from=2020, year_to=2010),  # empty range
    FigureFilter(year_from=0),  # unknown years still fail a bound
    FigureFilter(year_to=99999),
    FigureFilter(year_from=-99999),
    FigureFilter(journal="j test"),
    FigureFilter(journal="NATURE"),
    FigureFilter(journal="cell reports"),
    FigureFilter(journal="ÉMILE JOURNAL"),  # SQLite lower() is ASCII-only: É stays É
    FigureFilter(journal="émile journal"),
    FigureFilter(journal="No Such Journal"),
    FigureFilter(license_class="cc-by"),
    FigureFilter(license_class="none"),
    FigureFilter(license_class="CC-BY"),  # license classes are compared exactly
    FigureFilter(commercial_only=True),
    FigureFilter(commercial_only=True, license_class="cc-by-nc"),  # empty
    FigureFilter(figure_type="microscopy"),
    FigureFilter(figure_type="no such type"),
    FigureFilter(pmcid="PMC7"),  # two articles
    FigureFilter(pmcid="PMC1010"),
    FigureFilter(pmcid="PMC1009"),  # article 9 is retracted
    FigureFilter(pmcid="PMC0"),
    FigureFilter(year_from=2000, journal="nature", commercial_only=True),
    FigureFilter(year_to=2015, figure_type="chart/plot", license_class="cc-by"),
    FigureFilter(journal="j test", figure_type="photograph", year_from=2001, year_to=2020),
    FigureFilter(reusable_only=True),
    FigureFilter(reusable_only=True, license_class="none"),  # own cc0 figures of "none" articles
    FigureFilter(reusable_only=True, commercial_only=True, year_from=2010),
    FigureFilter(reusable_only=True, journal="nature", figure_type="microscopy"),
]


@pytest.fixture()
def filled(store: FigureStore) -> FigureStore:
    fill(store)
    return store


@pytest.fixture()
def columns(filled: FigureStore, tmp_path: Path) -> VersionColumns:
    write_columns(filled, tmp_path / "v")
    cols = VersionColumns.load(tmp_path / "v", store=filled)
    assert cols is not None
    return cols


def test_sql_lower_is_sqlites():
    assert sql_lower("J Test") == "j test"
    assert sql_lower("Émile") == "Émile"  # not Python's "émile"


@pytest.mark.parametrize("flt", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_columns_equal_sql(filled: FigureStore, columns: VersionColumns, flt: FigureFilter):
    want = filled.filtered_ids(flt)
    got = columns.allowed(flt)
    assert got.ids.dtype == np.int64 and got.ids.tolist() == want.tolist()
    assert got.count == len(want) == len(got)
    assert got.total == columns.count and got.selectivity == pytest.approx(len(want) / columns.count)
    probe = np.arange(-3, int(columns.ids[-1]) + 5)
    assert (np.flatnonzero(got.contains(probe)) - 3).tolist() == want.tolist()


def test_retracted_figures_are_not_in_the_columns(filled: FigureStore, columns: VersionColumns):
    with filled.engine.connect() as conn:
        retracted = [r[0] for r in conn.execute(text(
            "SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
            "WHERE a.retracted = 1"))]
    assert len(retracted) == 2 * FIGS_PER_ARTICLE
    assert not np.isin(retracted, columns.ids).any()
    assert not columns.allowed(FigureFilter()).contains(np.array(retracted)).any()
    assert columns.count == N_ARTICLES * FIGS_PER_ARTICLE - len(retracted)


def test_columns_files_dtypes_and_cache(filled: FigureStore, tmp_path: Path):
    entry = write_columns(filled, tmp_path / "v")["columns"]
    assert entry["count"] == N_ARTICLES * FIGS_PER_ARTICLE - 6
    cols = VersionColumns.load(tmp_path / "v", store=filled)
    assert cols is not None
    dtypes = {n: str(cols.column(n).dtype) for n in ("ids", "year", "journal", "license",
                                                       "figure_type", "article", "has_image",
                                                       "rights")}
    assert dtypes == {"ids": "int64", "year": "int16", "journal": "int32", "license": "int8",
                      "figure_type": "int8", "article": "int32", "has_image": "bool",
                      "rights": "int8"}
    assert isinstance(cols.ids, np.memmap)
    with filled.engine.connect() as conn:
        with_image = {r[0] for r in conn.execute(text("SELECT id FROM figures WHERE has_image"))}
    assert {int(i) for i in cols.ids[cols.column("has_image")]} == with_image & set(cols.ids.tolist())
    flt = FigureFilter(license_class="cc-by")
    assert cols.allowed(flt) is cols.allowed(FigureFilter(license_class="cc-by"))
    allowed = cols.allowed(flt)
    index_ids = cols.ids[::3].copy()
    assert allowed.row_bits(index_ids)[0] is allowed.row_bits(index_ids)[0]  # cached per index
    assert (allowed.row_mask(index_ids) == np.isin(index_ids, allowed.ids)).all()
    # an index holding figures the columns lack (retracted since, say): never allowed
    odd = np.unique(np.concatenate([cols.ids[1::2], [0, 5000, 99999], cols.ids[-1:] + 1]))
    assert not cols.index_map(odd).same and cols.index_map(odd).found is not None
    for f in (flt, FigureFilter(year_from=2010), FigureFilter(journal="nature")):
        assert (cols.allowed(f).row_mask(odd) == np.isin(odd, cols.allowed(f).ids)).all()
    same = np.array(cols.ids)
    cols.prepare(same)
    assert cols.index_map(same).same
    assert (cols.allowed(flt).row_mask(same) == np.isin(same, allowed.ids)).all()
    assert VersionColumns.load(tmp_path / "no-columns") is None


def test_pmcid_filter_needs_the_store(filled: FigureStore, tmp_path: Path):
    write_columns(filled, tmp_path / "v")
    cols = VersionColumns.load(tmp_path / "v")
    assert cols is not None
    with pytest.raises(ValueError, match="store"):
        cols.allowed(FigureFilter(pmcid="PMC7"))


def test_allowed_set_from_ids():
    s = AllowedSet.from_ids([9, 3, 3, 5], total=10)
    assert s.ids.tolist() == [3, 5, 9] and s.count == 3 and s.selectivity == 0.3
    assert s.contains(np.array([-1, 3, 4, 9, 10, 1000])).tolist() == [False, True, False, True,
                                                                      False, False]
    assert AllowedSet.empty(5).count == 0 and not AllowedSet.empty().contains([1]).any()


def test_figure_types_from_the_version(filled: FigureStore, tmp_path: Path):
    """An image version's own figure types (figure_types.npy) are what its filter uses."""
    ids = filled.filtered_ids(FigureFilter())[::2]  # the image index holds half the figures
    rng = np.random.default_rng(1)
    names = ["gel/blot", "microscopy"]
    codes = rng.integers(-1, 2, len(ids)).astype(np.int16)
    version = build_version(
        tmp_path / "indexes", rng.standard_normal((len(ids), 8)).astype(np.float32), ids,
        model_spec="s", model_key="k", factory="Flat", extra={LABELS_KEY: names},
        row_files={TYPES_FILE: codes, "figure_type_scores.npy": np.ones(len(ids), np.float16)},
        add_files=combine_add_files(None, functools.partial(write_columns, filled,
                                                            type_names=names)))
    index = SearchIndex.load(version)
    types = VersionTypes.load(version, index.manifest, index.ids)
    assert types is not None and index.manifest["columns"]["figure_types_from"] == "version"
    view = VersionedStore(filled, types)
    cols = VersionColumns.load(version, store=view)
    assert cols is not None
    for flt in (FigureFilter(figure_type="gel/blot"), FigureFilter(figure_type="microscopy",
                                                                   year_from=2010),
                FigureFilter(figure_type="chart/plot"), FigureFilter(journal="nature")):
        assert cols.allowed(flt).ids.tolist() == view.filtered_ids(flt).tolist(), flt


def test_combine_add_files_merges_and_refuses_clashes(tmp_path: Path):
    def one(d: Path) -> dict[str, int]:
        (d / "one").write_text("1")
        return {"one": 1}

    def two(d: Path) -> dict[str, int]:
        return {"two": 2}

    assert combine_add_files(None, None) is None
    combined = combine_add_files(one, None, two)
    assert combined is not None
    version = build_text_version(tmp_path / "indexes", combined)
    assert (version / "one").is_file()
    clash = combine_add_files(one, one)
    assert clash is not None
    with pytest.raises(ValueError, match="one"):
        clash(tmp_path)


# -- filtered dense search, every plan ----------------------------------------------------------
DIM = 16


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM)).astype(np.float32)
    x = centers[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


PLAN_FILTERS = {  # filter -> its plan (EXACT_SUBSET_MAX = 40, POSTFILTER_MIN = 0.5)
    "exact": FigureFilter(pmcid="PMC7"),
    "exact-empty": FigureFilter(journal="No Such Journal"),
    "bitmap": FigureFilter(year_from=2000, year_to=2004),
    "bitmap-combined": FigureFilter(commercial_only=True, figure_type="microscopy"),
    "postfilter": FigureFilter(commercial_only=True),
    "postfilter-broad": FigureFilter(year_from=2000),
}


def assert_exact_filtered(idx: SearchIndex, queries: np.ndarray, k: int, allowed: AllowedSet,
                          allowed_vectors: np.ndarray) -> np.ndarray:
    """A filtered search returns the exact top k of the allowed figures (float16 scores),
    padded with -1 when fewer pass; returns the ids found."""
    scores, got = idx.search(queries, k, allowed_ids=allowed)
    truth = np.sort(queries @ allowed_vectors.T, axis=1)[:, ::-1][:, :k]
    have = min(k, len(allowed_vectors))
    assert (got[:, have:] == -1).all() and np.isin(got[:, :have], allowed.ids).all()
    assert np.allclose(scores[:, :have], truth, atol=2e-3), k
    return got


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8"])
def test_filtered_search_is_exact_for_every_plan(filled: FigureStore, tmp_path: Path,
                                                 monkeypatch, factory: str):
    import figsearch.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 40)
    monkeypatch.setattr(index_mod, "POSTFILTER_MIN", 0.5)
    ids = filled.filtered_ids(FigureFilter())
    base = _vectors(len(ids))
    version = build_version(tmp_path / "indexes", base, ids, model_spec="s", model_key="k",
                            factory=factory, add_files=functools.partial(write_columns, filled))
    idx = SearchIndex.load(version, nprobe=16)  # every list: the index search itself is exact
    cols = VersionColumns.load(version, store=filled)
    assert cols is not None
    queries = _vectors(6, seed=5)
    stored = idx.vectors_for(ids)
    for name, flt in PLAN_FILTERS.items():
        allowed = cols.allowed(flt)
        assert idx.plan(allowed) == name.split("-")[0], (name, allowed.count)
        for k in (1, 10, 50):
            got = assert_exact_filtered(idx, queries, k, allowed, stored[np.isin(ids, allowed.ids)])
            # the same ids as the old array path gives (same plan, same set)
            _s, got_arr = idx.search(queries, k, allowed_ids=allowed.ids)
            assert (np.sort(got_arr, 1) == np.sort(got, 1)).all(), (name, k)


def test_prepare_reads_an_exact_plan_ahead(filled: FigureStore, tmp_path: Path, monkeypatch):
    """``prepare`` (what the service runs while a query is encoded) leaves an exact plan's
    vectors read and a bitmap plan's selector made, so the search reads nothing more; an
    exact subset beyond the kept-vectors budget is left to the search. Every plan still
    answers exactly, and the service prepares the filter of a query."""
    import figsearch.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 40)
    monkeypatch.setattr(index_mod, "POSTFILTER_MIN", 0.5)
    ids = filled.filtered_ids(FigureFilter())
    base = _vectors(len(ids))
    version = build_version(tmp_path / "indexes", base, ids, model_spec="s", model_key="k",
                            factory="IVF16,SQ8", add_files=functools.partial(write_columns, filled))
    idx = SearchIndex.load(version, nprobe=16)
    cols = VersionColumns.load(version, store=filled)
    assert cols is not None
    queries, stored = _vectors(4, seed=6), idx.vectors_for(ids)
    exact, bitmap = cols.allowed(PLAN_FILTERS["exact"]), cols.allowed(PLAN_FILTERS["bitmap"])
    assert idx.prepare(exact) == "exact" and idx._subset(exact).vectors is not None
    assert idx.prepare(bitmap) == "bitmap" and idx._subset(bitmap).selector is not None
    for allowed in (exact, bitmap):
        assert_exact_filtered(idx, queries, 10, allowed, stored[np.isin(ids, allowed.ids)])

    assert exact.count > 0
    monkeypatch.setattr(index_mod, "EXACT_VECTORS_BYTES", 1)
    over_budget = SearchIndex.load(version, nprobe=16)
    assert over_budget.prepare(exact) == "exact" and over_budget._subset(exact).vectors is None
    assert_exact_filtered(over_budget, queries, 10, exact, stored[np.isin(ids, exact.ids)])

    monkeypatch.setattr(index_mod, "EXACT_VECTORS_BYTES", 48 << 20)
    service = SearchService(filled, SearchIndex.load(version, nprobe=16), None,
                            Settings(data_dir=tmp_path / "data"), columns=cols)
    flt = PLAN_FILTERS["exact"]
    service._prepare_filter(flt, ["dense"])
    prepared = service.index._subset(cols.allowed(flt))
    assert prepared.plan == "exact" and prepared.vectors is not None


def test_narrow_probes_still_return_k(filled: FigureStore, tmp_path: Path, monkeypatch):
    """With 1 of 16 lists probed, the bitmap and post-filter plans widen until k allowed hits
    exist (or fall back to exact search)."""
    import figsearch.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 40)
    monkeypatch.setattr(index_mod, "POSTFILTER_MIN", 0.5)
    ids = filled.filtered_ids(FigureFilter())
    version = build_version(tmp_path / "indexes", _vectors(len(ids)), ids, model_spec="s",
                            model_key="k", factory="IVF16,Flat",
                            add_files=functools.partial(write_columns, filled))
    idx = SearchIndex.load(version, nprobe=1)
    cols = VersionColumns.load(version, store=filled)
    assert cols is not None
    for flt in (PLAN_FILTERS["bitmap"], PLAN_FILTERS["postfilter"]):
        allowed = cols.allowed(flt)
        _scores, got = idx.search(_vectors(4, seed=9), 60, allowed_ids=allowed)
        assert (got >= 0).all() and np.isin(got, allowed.ids).all()
        assert all(len(set(row)) == 60 for row in got.tolist())


def test_service_uses_columns_and_falls_back_without(filled: FigureStore, tmp_path: Path):
    """Same pages with and without columns; a version built without them has none."""
    ids = filled.filtered_ids(FigureFilter())
    plain = build_version(tmp_path / "indexes", _vectors(len(ids)), ids, model_spec="s",
                          model_key="k", factory="Flat", activate=False)
    assert VersionColumns.load(plain, store=filled) is None
    idx = SearchIndex.load(plain)
    write_columns(filled, tmp_path / "cols")
    settings = Settings(data_dir=tmp_path / "data")
    sql = SearchService(filled, idx, None, settings)
    col = SearchService(filled, idx, None, settings,
                        columns=VersionColumns.load(tmp_path / "cols", store=filled))
    assert col.columns is not None and sql.columns is None
    q = _vectors(1, seed=3)[0]
    for flt in FILTERS[1:]:
        a = sql.search_vector(q, k=15, flt=flt, dedup=False)
        b = col.search_vector(q, k=15, flt=flt, dedup=False)
        assert [h.id for h in a.hits] == [h.id for h in b.hits], flt
        assert {h.id for h in b.hits} <= set(filled.filtered_ids(flt).tolist())


def test_bit_test_both_ways():
    rng = np.random.default_rng(4)
    mask = rng.random(10_000) < 0.3
    bits = np.packbits(mask, bitorder="little")
    for ids in (rng.integers(-5, 10_010, 20), rng.integers(0, 10_000, 50_000),
                np.array([], np.int64)):
        want = np.zeros(len(ids), bool)
        inside = (ids >= 0) & (ids < len(mask))
        want[inside] = mask[ids[inside]]
        assert (bit_test(bits, ids) == want).all()


def test_lookups_and_counts_need_no_bitmap_or_row_mask(columns: VersionColumns):
    """contains() by binary search and count_in() from packed bits agree with the bitmap by id
    and the row mask they replace on a filter's first use, for an index holding every column
    row, one holding some, and one holding figures the columns lack (retracted ones)."""
    import figsearch.columns as columns_mod

    all_ids = np.asarray(columns.ids)
    rng = np.random.default_rng(8)
    indexes = {"same": all_ids.copy(), "some": np.sort(rng.choice(all_ids, len(all_ids) // 2,
                                                                  replace=False)),
               "beyond": np.union1d(all_ids[::3], [int(all_ids[-1]) + 5, int(all_ids[-1]) + 9])}
    probe = np.concatenate([rng.integers(-3, int(all_ids[-1]) + 20, 400), all_ids[:50]])
    for flt in FILTERS:
        allowed = columns.allowed(flt)
        if allowed.count in (0, len(all_ids)):
            continue
        looked_up = allowed.contains(probe)
        assert allowed._bits is None  # few ids: looked up, no bitmap by id built
        assert (looked_up == np.isin(probe, allowed.ids)).all(), flt
        assert (bit_test(allowed.bits(), probe) == looked_up).all()
        for name, index_ids in indexes.items():
            fresh = columns_mod.AllowedSet(allowed._base, allowed._column_mask(), allowed.total,
                                           columns=columns)
            counted = fresh.count_in(index_ids)
            assert not fresh._rows  # counted without a row mask
            mask = fresh.row_mask(index_ids)
            assert counted == int(mask.sum()) == int(np.isin(index_ids, allowed.ids).sum()), \
                (flt, name)
            assert (mask == np.isin(index_ids, allowed.ids)).all(), (flt, name)
            rows = fresh.rows_in(index_ids)  # an exact plan's rows, no id read
            if name == "beyond":
                assert rows is None  # ranks are not rows there: the plan looks ids up
            else:
                assert rows is not None and (rows == np.flatnonzero(mask)).all(), (flt, name)


def test_index_map_rows_by_rank_match_a_search_by_id():
    """An index's rows of a set of column rows, from prefix popcounts over many 64-bit words,
    equal the rows a binary search of their figure ids finds; rows the index lacks drop out."""
    from figsearch.columns import IndexMap

    rng = np.random.default_rng(12)
    column_ids = np.sort(rng.choice(10**7, 20_000, replace=False)).astype(np.int64)
    for share in (1.0, 0.92, 0.3, 0.01):
        index_ids = column_ids if share == 1.0 else \
            np.sort(rng.choice(column_ids, int(len(column_ids) * share), replace=False))
        index_map = IndexMap.build(column_ids, index_ids)
        for picked in (0, 1, 500, 20_000):
            column_rows = np.sort(rng.choice(len(column_ids), picked, replace=False))
            rows = index_map.rows_of(column_rows)
            ids = column_ids[column_rows]
            want = np.flatnonzero(np.isin(index_ids, ids))
            assert rows is not None and (rows == want).all(), (share, picked)
            assert (index_ids[rows] == ids[np.isin(ids, index_ids)]).all()


def test_only_the_bitmap_plan_builds_a_row_mask(filled: FigureStore, tmp_path: Path,
                                                monkeypatch):
    """Over an index holding some of the columns' figures, an exact plan finds its rows from
    the allowed ids and a post-filter tests candidates by id (no row mask: at 15 M figures
    each is a 20-35 ms compress); only the bitmap plan builds one. All answer exactly."""
    import figsearch.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET_MAX", 40)
    monkeypatch.setattr(index_mod, "POSTFILTER_MIN", 0.5)
    all_ids = filled.filtered_ids(FigureFilter())
    held = np.sort(np.random.default_rng(2).choice(all_ids, int(len(all_ids) * 0.8),
                                                   replace=False))
    base = _vectors(len(held))
    version = build_version(tmp_path / "indexes", base, held, model_spec="s", model_key="k",
                            factory="IVF16,Flat", add_files=functools.partial(write_columns, filled))
    idx = SearchIndex.load(version, nprobe=16)
    cols = VersionColumns.load(version, store=filled)
    assert cols is not None and not cols.index_map(idx.ids).same
    queries = _vectors(5, seed=11)
    for name, flt in PLAN_FILTERS.items():
        allowed = cols.allowed(flt)
        plan = name.split("-")[0]
        assert idx.plan(allowed) == plan, (name, allowed.count)
        assert bool(allowed._rows) == (plan == "bitmap"), name
        for k in (1, 10, 30):
            assert_exact_filtered(idx, queries, k, allowed, base[np.isin(held, allowed.ids)])
