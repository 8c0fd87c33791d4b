"""figsearch.arrivals: each figure's first index version, carried from version to version by
the filter columns every build writes (real SQLite store, real text-only builds).

Covers what the end-to-end feed test (test_feeds.py) does not: a data dir whose versions
predate the column starts cleanly, a version built but never made current is not history, a
retracted figure leaves the column, and the ``first_versions`` filter selects by arrival."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from figsearch.arrivals import COLUMN, published_time, select_versions
from figsearch.columns import COLUMNS_DIR, VOCAB_FILE, VersionColumns, write_columns
from figsearch.index import current_version_dir
from figsearch.store import FigureFilter, FigureStore
from indexer.build import build_text_version


def _add_figures(store: FigureStore, ids: range, retracted: bool = False) -> None:
    """One article per figure (plain SQL, the store's own schema)."""
    conn = sqlite3.connect(store.path)
    for fid in ids:
        conn.execute(
            "INSERT INTO articles(id, key, pmcid, title, journal, year, license_text, "
            "license_url, license_class, source, content_hash, retracted, ingested_at) "
            "VALUES (?, ?, ?, 'T', 'J', 2020, '', '', 'cc-by', 'test', '', ?, "
            "'2026-01-01 00:00:00')", (fid, f"k{fid}", f"PMC{fid}", int(retracted)))
        conn.execute(
            "INSERT INTO figures(id, key, article_id, fig_id, label, caption, has_image, source, "
            "attributes) VALUES (?, ?, ?, 'F1', 'Figure 1', 'cells', 1, 'test', '{}')",
            (fid, f"k{fid}/F1", fid))
    conn.commit()
    conn.close()


def _build(indexes: Path, store: FigureStore, activate: bool = True) -> Path:
    return build_text_version(indexes, lambda d: write_columns(store, d), activate=activate)


def _arrivals(version_dir: Path) -> dict[int, str]:
    columns = VersionColumns.load(version_dir)
    assert columns is not None and columns.history is not None
    names = [h["version"] for h in columns.history]
    codes = np.asarray(columns.column(COLUMN))
    return {int(i): names[int(c)] for i, c in zip(columns.ids, codes, strict=True)}


def _strip_column(version_dir: Path) -> None:
    """Make a version look as if built before the column existed."""
    cols = version_dir / COLUMNS_DIR
    (cols / f"{COLUMN}.npy").unlink()
    vocab = json.loads((cols / VOCAB_FILE).read_text())
    del vocab[COLUMN]
    (cols / VOCAB_FILE).write_text(json.dumps(vocab))


@pytest.fixture()
def store(tmp_path):
    s = FigureStore(tmp_path / "figsearch.db")
    yield s
    s.close()


def test_carried_forward_and_new_ids_get_the_new_version(store, tmp_path):
    indexes = tmp_path / "indexes"
    _add_figures(store, range(1, 6))
    v1 = _build(indexes, store)
    assert set(_arrivals(v1).values()) == {v1.name}
    _add_figures(store, range(6, 9))
    _add_figures(store, range(9, 10), retracted=True)  # never served: absent
    v2 = _build(indexes, store)
    got = _arrivals(v2)
    assert got == {**{i: v1.name for i in range(1, 6)}, **{i: v2.name for i in range(6, 9)}}
    columns = VersionColumns.load(v2, store=store)
    assert columns is not None
    assert [h["version"] for h in columns.history or []] == [v1.name, v2.name]
    only_new = columns.allowed(FigureFilter(first_versions=(v2.name,)))
    assert only_new.ids.tolist() == [6, 7, 8]
    assert columns.allowed(FigureFilter(first_versions=("no-such",))).count == 0
    assert columns.allowed(FigureFilter(first_versions=(v1.name, v2.name))).count == 8


def test_versions_without_the_column_start_cleanly(store, tmp_path):
    """Figures of the oldest kept version get it; those first seen later get that one."""
    indexes = tmp_path / "indexes"
    _add_figures(store, range(1, 4))
    v1 = _build(indexes, store)
    _add_figures(store, range(4, 6))
    v2 = _build(indexes, store)
    _strip_column(v1)
    _strip_column(v2)
    _add_figures(store, range(6, 7))
    v3 = _build(indexes, store)
    got = _arrivals(v3)
    assert got == {1: v1.name, 2: v1.name, 3: v1.name, 4: v2.name, 5: v2.name, 6: v3.name}
    history = VersionColumns.load(v3).history  # type: ignore[union-attr]
    assert [h["version"] for h in history] == [v1.name, v2.name, v3.name]
    assert all(h["published"] for h in history)  # the old versions' manifest built_at


def test_a_version_never_made_current_is_not_history(store, tmp_path):
    indexes = tmp_path / "indexes"
    _add_figures(store, range(1, 3))
    v1 = _build(indexes, store)
    _add_figures(store, range(3, 5))
    failed = _build(indexes, store, activate=False)  # e.g. it failed validation
    assert current_version_dir(indexes) == v1.resolve()
    v3 = _build(indexes, store)
    got = _arrivals(v3)
    assert got == {1: v1.name, 2: v1.name, 3: v3.name, 4: v3.name}
    assert failed.name not in {h["version"] for h in VersionColumns.load(v3).history or []}


def test_select_versions_by_count_and_date():
    t0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)
    history = [{"version": f"v{i}", "published": (t0 + timedelta(days=i)).isoformat()}
               for i in range(4)]
    assert select_versions(history, 2) == ["v2", "v3"]
    assert select_versions(history) == ["v3"]
    assert select_versions(history, 99) == ["v0", "v1", "v2", "v3"]
    assert select_versions(history, since=t0 + timedelta(days=1)) == ["v1", "v2", "v3"]
    # no recorded time: the time in the version's name
    assert published_time({"version": "20261201T020304000000Z-abcdef", "published": ""}) == \
        datetime(2026, 12, 1, 2, 3, 4, tzinfo=timezone.utc)


def test_the_filter_has_no_sql_form():
    with pytest.raises(ValueError, match="columns"):
        FigureFilter(first_versions=("v1",)).sql()
    assert not FigureFilter(first_versions=()).is_empty()
