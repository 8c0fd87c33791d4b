"""The figure store: upserts, stable ids, FTS sync, filters, errors."""

from __future__ import annotations

import pytest

from figsearch.records import ArticleRecord, FigureRecord
from figsearch.store import FigureFilter, FigureStore, fts_query


def _article(key="PMC1", h="h1", **kw):
    base = dict(key=key, source="test", pmcid=key, title="TREM2 signalling in microglia",
                journal="J Test", year=2020, license_class="cc-by", content_hash=h)
    base.update(kw)
    return ArticleRecord(**base)


def _figs(*captions):
    return [FigureRecord(f"F{i}", label=f"Figure {i}", caption=c) for i, c in enumerate(captions, 1)]


def test_upsert_is_idempotent_and_ids_are_stable(store: FigureStore):
    r1 = store.upsert_article(_article(), _figs("Kaplan-Meier curve", "western blot of p53"))
    assert (r1.status, r1.figures_added) == ("added", 2)
    ids = store.figure_ids_for_article("PMC1")
    assert store.upsert_article(_article(), _figs("x", "y")).status == "unchanged"
    r3 = store.upsert_article(_article(h="h2"), _figs("Kaplan-Meier curve v2", "western blot"))
    assert (r3.status, r3.figures_updated, r3.figures_removed) == ("updated", 2, 0)
    assert store.figure_ids_for_article("PMC1") == ids
    assert store.get_figure(ids[0])["caption"] == "Kaplan-Meier curve v2"


def test_fts_follows_updates_and_deletes(store: FigureStore):
    store.upsert_article(_article(), _figs("Kaplan-Meier survival curve", "western blot"))
    assert [i for i, _ in store.keyword_search("survival", 10)]
    store.upsert_article(_article(h="h2"), _figs("heatmap of expression"))
    assert store.keyword_search("survival", 10) == []
    assert len(store.keyword_search("heatmap", 10)) == 1
    assert len(store.keyword_search("microglia", 10)) == 1  # article title is indexed
    store.remove_article("PMC1")
    assert store.keyword_search("heatmap", 10) == []
    assert store.counts()["figures"] == 0


@pytest.mark.parametrize("q", ['"', "*", "NEAR", "AND(", "((", "a OR", "'; DROP TABLE figures;--"])
def test_keyword_search_never_raises_on_fts_syntax(store: FigureStore, q):
    store.upsert_article(_article(), _figs("drop table of results"))
    store.keyword_search(q, 10)
    assert store.counts()["figures"] == 1


def test_fts_query_quotes_terms():
    assert fts_query('EGFR "NSCLC" AND(') == '"egfr" OR "nsclc" OR "and"'
    assert fts_query("  ") == ""


def test_filters(store: FigureStore):
    store.upsert_article(_article("PMC1", year=2015, license_class="cc-by-nc"), _figs("a"))
    store.upsert_article(_article("PMC2", year=2021, journal="Other"), _figs("b", "c"))
    assert len(store.filtered_ids(FigureFilter(commercial_only=True))) == 2
    assert len(store.filtered_ids(FigureFilter(year_from=2016))) == 2
    assert len(store.filtered_ids(FigureFilter(journal="j test"))) == 1
    assert len(store.filtered_ids(FigureFilter(pmcid="PMC2"))) == 2


def test_errors_are_counted_not_duplicated(store: FigureStore):
    store.record_error("pkg.zip", "no JATS XML", stage="read")
    store.record_error("pkg.zip", "no JATS XML", stage="read")
    errs = store.errors()
    assert len(errs) == 1 and errs[0]["count"] == 2


def test_schema_version_and_wal(tmp_path):
    s = FigureStore(tmp_path / "f.db")
    assert s.schema_version() >= 1 and s.integrity_ok()
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with pytest.raises(FileNotFoundError):
        FigureStore(tmp_path / "missing.db", create=False)


def test_switching_a_new_store_to_wal_waits_out_a_lock_sqlite_will_not_wait_for(tmp_path):
    """The WAL switch of a new file is retried while SQLite answers "database is locked" at
    once (what two processes' switches get when they would deadlock; here: no busy timeout and
    another connection holding the file exclusively), and lands when the lock goes."""
    import sqlite3
    import threading
    import time

    from figsearch.store import _use_wal

    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    opener = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        opener.execute("PRAGMA journal_mode=WAL")  # what the switch alone got
    threading.Timer(0.3, holder.execute, ("COMMIT",)).start()
    start = time.monotonic()
    _use_wal(opener.cursor())
    assert time.monotonic() - start >= 0.25
    assert opener.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    holder.close()
    opener.close()


def _open_store_at_barrier(path: str, barrier) -> int:
    barrier.wait()
    store = FigureStore(path)
    try:
        return store.schema_version()
    finally:
        store.close()


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    # API workers and a build open an upgraded store together: create_all and the migrations
    # must not race ("table ... already exists"), nor their switches of a new file to WAL
    # ("database is locked" at once: 2 of 320 opens of 8 processes before they were retried).
    import multiprocessing as mp

    from figsearch.store import SCHEMA_VERSION

    ctx = mp.get_context("spawn")
    n, stores = 8, 8
    manager = ctx.Manager()
    with ctx.Pool(n) as pool:
        for i in range(stores):
            barrier = manager.Barrier(n)
            path = str(tmp_path / f"s{i}.db")
            assert pool.starmap(_open_store_at_barrier, [(path, barrier)] * n) == \
                [SCHEMA_VERSION] * n, path
    store = FigureStore(tmp_path / "s0.db")
    assert store.keyword_search("anything", 5) == []  # FTS table in place, exactly once
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
