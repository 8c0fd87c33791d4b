"""figsearch index / rebuild end to end: real figures, real SQLite, real FAISS, tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from figsearch.cli import main
from figsearch.index import IndexModelMismatch, SearchIndex, current_version_dir
from figsearch.store import FigureStore
from figsearch.version_data import VersionTypes
from indexer.build import list_versions
from indexer.indexing import index_all
from indexer.rebuild import ValidationError, rebuild
from indexer.sources import is_file_list
from tests.indexer.test_embed import ingested_settings, manifest_subset


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from figsearch.encoders import load_model

    return load_model(str(tiny_model_dir), device="cpu", batch_size=8)


def _ids_of(settings) -> set[int]:
    return set(SearchIndex.load(current_version_dir(settings.indexes_dir)).ids.tolist())


def _store_ids(settings, pmcid: str | None = None) -> set[int]:
    store = FigureStore(settings.db_path)
    try:
        if pmcid:
            return set(store.figure_ids_for_article(pmcid))
        return {r[0] for batch in store.iter_figure_rows() for r in batch}
    finally:
        store.close()


def test_index_then_rebuild_adds_new_figures_and_drops_retracted(shared_data, tmp_path, encoder):
    settings = ingested_settings(shared_data, tmp_path, stop=10)
    first = index_all(settings, encoder=encoder, progress=False)
    assert first is not None and first.count == 10 and _ids_of(settings) == _store_ids(settings)
    index = SearchIndex.load(first.version_dir)
    types = VersionTypes.load(first.version_dir, index.manifest, index.ids)
    assert types is not None  # every indexed figure got a zero-shot type, kept in the version
    assert None not in {kind for kind, _ in types.lookup(index.ids)}
    before = _store_ids(settings)

    batch = manifest_subset(shared_data, tmp_path / "batch2.jsonl", 20, 28)
    report = rebuild(settings, [str(batch)], encoder=encoder, progress=False)
    added = _store_ids(settings) - before
    assert len(added) == 8 and _ids_of(settings) == before | added
    assert report.count == 18 and report.previous == first.version_dir.name
    assert len(list_versions(settings.indexes_dir)) == 2

    gone_pmcid = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])["pmcid"]
    gone = _store_ids(settings, gone_pmcid)
    file_list = tmp_path / "oa_bulk.csv"
    file_list.write_text(
        "Article File,Article Citation,AccessionID,LastUpdated (YYYY-MM-DD HH:MM:SS),PMID,"
        f"License,Retracted\noa_package/x/{gone_pmcid}.tar.gz,\"Cit\",{gone_pmcid},"
        "\"2025-01-01 00:00:00\",1,\"CC BY\",yes\n"
    )
    assert is_file_list(str(file_list)) and not is_file_list(str(batch))
    rebuild(settings, [str(file_list)], encoder=encoder, progress=False)
    assert gone and _ids_of(settings) == (before | added) - gone


def test_failed_validation_leaves_current_untouched(shared_data, tmp_path, encoder):
    settings = ingested_settings(shared_data, tmp_path, stop=6)
    first = index_all(settings, encoder=encoder, progress=False)
    assert first is not None

    def corrupt(stage):  # damage the new version after it is written, before validation
        if stage == "renamed":
            newest = list_versions(settings.indexes_dir)[-1]
            with open(newest / "vectors.npy", "r+b") as fh:
                fh.seek(200)
                fh.write(b"\x00" * 16)

    batch = manifest_subset(shared_data, tmp_path / "b.jsonl", 30, 33)
    with pytest.raises(Exception, match="checksum mismatch"):
        rebuild(settings, [str(batch)], encoder=encoder, hook=corrupt, progress=False)
    assert current_version_dir(settings.indexes_dir) == first.version_dir.resolve()
    assert list_versions(settings.indexes_dir) == [first.version_dir]
    rebuild(settings, [str(batch)], encoder=encoder, progress=False)  # a rerun completes
    assert len(_ids_of(settings)) == 9


def test_validation_refuses_a_version_missing_figures(shared_data, tmp_path, encoder):
    from indexer.build import build_version
    from indexer.rebuild import validate_version

    settings = ingested_settings(shared_data, tmp_path, stop=5)
    store = FigureStore(settings.db_path)
    ids = np.array(sorted(_store_ids(settings)))[:-1]
    vdir = build_version(settings.indexes_dir, np.eye(len(ids), encoder.dim), ids,
                         model_spec="s", model_key=encoder.model_key, activate=False)
    with pytest.raises(ValidationError, match="holds 4 figures, the store has 5"):
        validate_version(vdir, store, encoder.model_key)
    store.close()


def test_index_of_one_model_refuses_another(shared_data, tmp_path, encoder):
    settings = ingested_settings(shared_data, tmp_path, stop=3)
    report = index_all(settings, encoder=encoder, progress=False)
    idx = SearchIndex.load(report.version_dir)
    idx.check_model(encoder.model_key, encoder.dim)
    with pytest.raises(IndexModelMismatch, match="figsearch index --model"):
        idx.check_model("other-model@123", encoder.dim)


def test_cli_index_and_rebuild(shared_data, tmp_path, tiny_model_dir, capsys):
    settings = ingested_settings(shared_data, tmp_path, stop=4)
    data_dir = str(settings.data_dir)
    assert main(["index", "--model", str(tiny_model_dir), "--data-dir", data_dir,
                 "--no-progress"]) == 0
    assert "4 figures indexed" in capsys.readouterr().out
    version = current_version_dir(settings.indexes_dir)
    assert main(["rebuild", "--source", str(tmp_path / "missing-dir"), "--data-dir", data_dir,
                 "--no-progress"]) == 1
    assert "index unchanged" in capsys.readouterr().err
    assert current_version_dir(settings.indexes_dir) == version
    batch = manifest_subset(shared_data, tmp_path / "more.jsonl", 40, 42)
    assert main(["rebuild", "--source", str(batch), "--data-dir", data_dir, "--no-progress"]) == 0
    assert "active with 6 figures" in capsys.readouterr().out
    assert main(["index", "--data-dir", str(tmp_path / "empty")]) == 1
