"""Issue 26, feeds and pinned searches, end to end: real figures ingested from the shared PMC
manifest, real builds (a first index, a nightly delta, a full rebuild), the real API app.

* ``/v1/search.atom`` parses as valid Atom (feedparser) and lists exactly the figures a second
  ingest + rebuild added, newest version first; a query narrows it to the new figures it finds.
* ``version=`` answers from the kept older version after the swap; responses echo the version,
  query, mode and filters with a permalink that re-runs the same search; an unknown version is a
  404 and a pruned one a 410, both naming the kept versions.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import feedparser
import numpy as np
import pytest
from fastapi.testclient import TestClient

from figsearch.columns import VersionColumns
from figsearch.core.config import Settings
from figsearch.index import current_version_dir, read_manifest
from figsearch.store import FigureStore
from indexer.build import prune_versions
from indexer.indexing import index_all
from indexer.rebuild import rebuild
from tests.figsearch.api_fixtures import loaded_app
from tests.indexer.test_embed import ingested_settings, manifest_subset


def _store_ids(settings: Settings) -> set[int]:
    store = FigureStore(settings.db_path)
    try:
        return {r[0] for batch in store.iter_figure_rows() for r in batch}
    finally:
        store.close()


@pytest.fixture(scope="module")
def history(shared_data, tmp_path_factory, tiny_model_dir):
    """A data dir indexed three times: v1 (12 figures, full build), v2 (+2 figures: a nightly
    delta), v3 (+3 figures, a full rebuild). Returns settings, versions and each one's ids."""
    from figsearch.encoders import load_model

    tmp = tmp_path_factory.mktemp("feeds")
    encoder = load_model(str(tiny_model_dir), device="cpu", batch_size=8)
    settings = ingested_settings(shared_data, tmp, stop=12)
    settings = settings.model_copy(update={"index_keep_versions": 5})
    first = index_all(settings, encoder=encoder, progress=False)
    assert first is not None
    ids = {first.version_dir.name: _store_ids(settings)}
    versions = [first.version_dir.name]
    for n, (start, stop, full) in enumerate([(20, 22, False), (30, 33, True)]):
        batch = manifest_subset(shared_data, tmp / f"batch{n}.jsonl", start, stop)
        before = _store_ids(settings)
        report = rebuild(settings, [str(batch)], encoder=encoder, progress=False, full=full)
        versions.append(report.version)
        ids[report.version] = _store_ids(settings) - before
    # the second build was a delta, the third a full one: arrivals are carried by both
    assert "delta" in read_manifest(settings.indexes_dir / versions[1])
    assert "delta" not in read_manifest(settings.indexes_dir / versions[2])
    return settings, versions, ids


@pytest.fixture(scope="module")
def client(history):
    settings, _versions, _ids = history
    with TestClient(loaded_app(settings)) as c:
        yield c


def _new_figure_word(settings: Settings, ids: set[int]) -> tuple[dict, str]:
    """One of these figures and the longest word of its caption."""
    store = FigureStore(settings.db_path)
    try:
        target = store.get_figures(sorted(ids))[min(ids)]
    finally:
        store.close()
    return target, max((w.strip(".,;:()[]") for w in target["caption"].split()), key=len)


def _entry_ids(parsed) -> list[int]:
    return [int(e.id.rsplit("/", 1)[1]) for e in parsed.entries]


def _feed(client, **params):
    r = client.get("/v1/search.atom", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/atom+xml")
    parsed = feedparser.parse(r.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return parsed


def test_every_build_records_when_each_figure_arrived(history):
    settings, versions, ids = history
    columns = VersionColumns.load(current_version_dir(settings.indexes_dir))
    assert columns is not None and columns.history is not None
    assert [h["version"] for h in columns.history] == versions
    codes = np.asarray(columns.column("first_version"))
    for code, version in enumerate(versions):
        got = set(np.asarray(columns.ids)[codes == code].tolist())
        assert got == ids[version], version


def test_feed_lists_exactly_the_figures_of_the_last_rebuild(history, client):
    settings, versions, ids = history
    parsed = _feed(client, versions=1)
    assert sorted(_entry_ids(parsed)) == sorted(ids[versions[2]])
    base = "http://testserver"
    entry = parsed.entries[0]
    assert entry.id == f"{base}/v1/figures/{_entry_ids(parsed)[0]}"
    assert entry.summary  # the caption
    assert entry.link.startswith("http")  # the figure's (or article's) page
    published = datetime.fromisoformat(read_manifest(settings.indexes_dir / versions[2])
                                        ["built_at"])
    when = datetime(*entry.updated_parsed[:6], tzinfo=timezone.utc)
    assert abs((when - published).total_seconds()) < 120
    assert parsed.feed.id.startswith(f"{base}/v1/search.atom?")

    # the last two versions: the delta's figures too, newest version first
    two = _entry_ids(_feed(client, versions=2, k=100))
    new, older = ids[versions[2]], ids[versions[1]]
    assert set(two) == new | older
    assert set(two[: len(new)]) == new and set(two[len(new):]) == older


def test_feed_since_a_date_and_with_a_query(history, client):
    settings, versions, ids = history
    columns = VersionColumns.load(current_version_dir(settings.indexes_dir))
    assert columns is not None and columns.history is not None
    published = datetime.fromisoformat(columns.history[1]["published"])  # the delta's
    since = published.isoformat()
    assert set(_entry_ids(_feed(client, since=since, k=100))) == ids[versions[1]] | ids[versions[2]]
    future = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert _feed(client, since=future).entries == []  # still a valid (empty) feed

    # a word of one new figure's caption: the feed finds it, and only new figures
    target, word = _new_figure_word(settings, ids[versions[2]])
    entries = _entry_ids(_feed(client, q=word, mode="keyword", versions=1))
    assert target["id"] in entries and set(entries) <= ids[versions[2]]
    everywhere = client.get("/v1/search", params={"q": word, "mode": "keyword", "k": 50}).json()
    assert len(everywhere["results"]) >= len(entries)


def test_feed_bad_input(client):
    r = client.get("/v1/search.atom", params={"versions": 1, "since": "2026-01-01"})
    assert r.status_code == 400 and "not both" in r.json()["detail"]
    r = client.get("/v1/search.atom", params={"since": "yesterday"})
    assert r.status_code == 400 and "ISO date" in r.json()["detail"]
    # markup and control characters in the query: escaped or dropped, still valid Atom
    parsed = _feed(client, q="<b>cells</b> & \x01\x1b", versions=3)
    assert "<b>cells</b> & " in parsed.feed.title


def test_pinned_search_answers_from_the_old_version(history, client):
    settings, versions, ids = history
    old, new = versions[0], versions[2]
    new_ids = ids[versions[1]] | ids[versions[2]]
    target, word = _new_figure_word(settings, ids[new])
    params = {"q": word, "mode": "keyword", "k": 50, "license": "any", "year_from": 1990}
    now = client.get("/v1/search", params=params).json()
    assert now["index_version"] == new
    assert target["id"] in {r["id"] for r in now["results"]}  # the rebuild's figure is found
    pinned = client.get("/v1/search", params={**params, "version": old}).json()
    assert pinned["index_version"] == old
    got = {r["id"] for r in pinned["results"]}
    assert not got & new_ids and got <= ids[old]
    # the old version's own answer: hybrid over its figures finds some
    hybrid = client.get("/v1/search", params={"q": word, "k": 50, "version": old}).json()
    assert hybrid["results"] and {r["id"] for r in hybrid["results"]} <= ids[old]
    assert pinned["query"] == word and pinned["mode"] == "keyword"
    assert pinned["filters"] == {"year_from": 1990}

    # the permalink re-runs the same search on the same version
    link = pinned["permalink"]
    assert parse_qs(urlsplit(link).query)["version"] == [old]
    again = client.get(link).json()
    assert [r["id"] for r in again["results"]] == [r["id"] for r in pinned["results"]]
    # batch search pins the same way
    batch = client.post("/v1/search", json={"queries": [{"q": word}], "mode": "keyword",
                                            "k": 50, "year_from": 1990, "version": old}).json()
    assert [r["id"] for r in batch["responses"][0]["results"]] == \
        [r["id"] for r in pinned["results"]]


def test_unknown_and_pruned_versions_name_the_kept_ones(history, tmp_path):
    settings, versions, _ids = history
    copy = settings.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(settings.data_dir, copy.data_dir, symlinks=True)
    with TestClient(loaded_app(copy)) as c:
        r = c.get("/v1/search", params={"q": "cells", "version": "20000101T000000000000Z-abc"})
        assert r.status_code == 404 and versions[0] in r.json()["detail"]
        assert c.get("/v1/search", params={"q": "cells", "version": versions[0]}).status_code == 200
        prune_versions(copy.indexes_dir, keep=1)  # v1 goes (v2 kept besides current v3)
        r = c.get("/v1/search", params={"q": "cells", "version": versions[0]})
        assert r.status_code == 410, r.text
        assert "pruned" in r.json()["detail"] and versions[1] in r.json()["detail"]


def test_the_python_client_pins_reruns_and_reads_feeds(history):
    from figsearch.client import FigSearchClient, FigSearchError
    from tests.figsearch.api_fixtures import serve_in_thread

    settings, versions, ids = history
    with serve_in_thread(loaded_app(settings)) as url, FigSearchClient(url) as api:
        target, word = _new_figure_word(settings, ids[versions[2]])
        pinned = api.search(word, mode="keyword", k=50, version=versions[0])
        assert pinned["index_version"] == versions[0]
        assert {r["id"] for r in pinned["results"]} <= ids[versions[0]]
        again = api.rerun(pinned["permalink"])
        assert again["index_version"] == versions[0] and again["results"] == pinned["results"]
        with pytest.raises(FigSearchError) as err:
            api.search(word, version="nope")
        assert err.value.status_code == 404
        link = api.feed_url(versions=1, license="any", journal=None)
        assert link.startswith(f"{url}/v1/search.atom?") and "versions=1" in link
        parsed = feedparser.parse(api.feed(versions=1))
        assert not parsed.bozo and sorted(_entry_ids(parsed)) == sorted(ids[versions[2]])


def test_pinned_versions_stay_bounded(history, monkeypatch):
    """At most PINNED_VERSIONS old versions are held open; an evicted one opens again."""
    from figsearch.api import state as state_module
    from figsearch.api.state import AppState

    settings, versions, ids = history
    monkeypatch.setattr(state_module, "PINNED_VERSIONS", 1)
    app_state = AppState(settings)
    try:
        app_state.reload()
        current = app_state.current
        assert current is not None and app_state.pinned(current, None) is current
        first = app_state.pinned(current, versions[0])
        assert first.version == versions[0] and app_state.pinned(current, versions[0]) is first
        second = app_state.pinned(current, versions[1])
        assert list(app_state._pinned) == [versions[1]]  # the first was closed
        again = app_state.pinned(current, versions[0])
        assert again is not first and list(app_state._pinned) == [versions[0]]
        # the shared model survives the eviction: the re-opened version still searches
        page = again.service.search_text("figure", k=5, mode="dense")
        assert page.hits and {h.id for h in page.hits} <= ids[versions[0]]
        assert second.version == versions[1]
    finally:
        app_state.close()
