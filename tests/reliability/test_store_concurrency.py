"""The SQLite store under concurrent writers and readers, and under SIGKILL of a writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import text

from figsearch.store import FigureFilter, FigureStore

from .workers import FIGURES_PER_ARTICLE, article

REPO = Path(__file__).resolve().parents[2]


def _spawn_writer(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.workers", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "ready", f"writer did not start: {line!r} {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}"


def _articles_missing_figures(db: Path) -> list[tuple[str, int]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT a.key, count(f.id) FROM articles a LEFT JOIN figures f ON f.article_id = a.id "
            "GROUP BY a.id HAVING count(f.id) != ?", (FIGURES_PER_ARTICLE,)
        ).fetchall()
        fts_orphans = con.execute(
            "SELECT count(*) FROM figures_fts WHERE rowid NOT IN (SELECT id FROM figures)"
        ).fetchone()[0]
        assert fts_orphans == 0, f"{fts_orphans} FTS rows without a figure"
        return rows
    finally:
        con.close()


def _reader_loop(store: FigureStore, stop: threading.Event, errors: list[str], counter: list[int]):
    while not stop.is_set():
        try:
            hits = store.keyword_search("kinase MAPK pathway", 20, FigureFilter(year_from=2005))
            store.get_figures([h[0] for h in hits])
            store.filtered_ids(FigureFilter(journal="J Test"))
            store.counts()
            # One statement is one snapshot: a reader must never see an article without all
            # its figures, since each article is written in one transaction.
            with store.engine.connect() as conn:
                arts, figs = conn.execute(text(
                    "SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM figures)"
                )).one()
            assert figs == arts * FIGURES_PER_ARTICLE, (arts, figs)
            counter[0] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is what this test reports
            errors.append(f"{type(exc).__name__}: {exc}")


def test_readers_never_see_locks_or_partial_articles_during_writes(tmp_path):
    """Two writer processes + four reader threads for ~4 s: no 'database is locked', no errors."""
    db = tmp_path / "figsearch.db"
    seed = FigureStore(db)
    for n in range(50):
        seed.upsert_article(*article(n))
    writers = [_spawn_writer("forever", str(db), str(start)) for start in (1000, 500_000)]
    try:
        for w in writers:
            _wait_ready(w)
        stop, errors, counter = threading.Event(), [], [0]
        readers = [threading.Thread(target=_reader_loop, args=(FigureStore(db), stop, errors, counter))
                   for _ in range(4)]
        for r in readers:
            r.start()
        time.sleep(4)
        stop.set()
        for r in readers:
            r.join(30)
        for w in writers:
            assert w.poll() is None, f"writer died: {w.stderr.read() if w.stderr else ''}"
    finally:
        for w in writers:
            w.kill()
            w.wait(10)
    assert not errors, f"{len(errors)} reader errors, first: {errors[:3]}"
    total = seed.counts()["articles"]
    print(f"\nreaders completed {counter[0]} query rounds while writers reached {total} articles")
    assert counter[0] > 20 and total > 50  # both sides really ran (slower on a busy machine)
    assert seed.integrity_ok()
    assert _articles_missing_figures(db) == []


def test_sigkill_of_writer_leaves_store_consistent_and_rerun_completes(tmp_path):
    """Kill -9 a writer at several random moments; the store stays whole and a rerun finishes."""
    db = tmp_path / "figsearch.db"
    FigureStore(db).close()
    for round_, delay in enumerate((0.3, 0.7, 1.1)):
        w = _spawn_writer("forever", str(db), str(round_ * 100_000))
        _wait_ready(w)
        time.sleep(delay)
        w.send_signal(signal.SIGKILL)
        w.wait(10)
        assert w.returncode == -signal.SIGKILL
        store = FigureStore(db)
        assert store.integrity_ok()
        assert _articles_missing_figures(db) == []
        store.close()
    rerun = _spawn_writer("count", str(db), "0", "200")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    store = FigureStore(db)
    assert store.integrity_ok() and _articles_missing_figures(db) == []
    assert store.counts()["articles"] >= 200
