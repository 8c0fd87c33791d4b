"""A data directory that can move: the index records its model relative to the data dir, so a
copied data dir searches from any working directory after the original is gone; ``serve``
exits with the reason when the model cannot load; an empty FIGSEARCH_MODEL means the current
index's model for ``figsearch index`` too."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from figsearch.api.server import command as serve_command
from figsearch.cli import main
from figsearch.core.config import Settings
from figsearch.datadir import DATA_DIR_PREFIX, portable_path, resolve_path
from figsearch.index import current_version_dir, read_manifest
from indexer.indexing import index_all


@pytest.fixture(scope="module")
def built_data_dir(tmp_path_factory, small_index_data_dir, tiny_model_dir) -> Path:
    """A data dir whose index was built with a model kept inside it (as the demo does)."""
    data = tmp_path_factory.mktemp("movable") / "figsearch-data"
    shutil.copytree(small_index_data_dir, data, symlinks=True)
    shutil.copytree(tiny_model_dir, data / "models" / "tiny-clip")
    settings = Settings(data_dir=data, device="cpu", num_workers=0)
    index_all(settings, str(data / "models" / "tiny-clip"), progress=False)
    return data


def test_index_records_its_model_relative_to_the_data_dir(built_data_dir):
    manifest = read_manifest(current_version_dir(built_data_dir / "indexes"))
    assert manifest["model_spec"] == DATA_DIR_PREFIX + "models/tiny-clip"


def test_copied_data_dir_searches_from_elsewhere(built_data_dir, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(built_data_dir, moved, symlinks=True)
    shutil.rmtree(built_data_dir)  # the original is gone
    workdir = tmp_path / "somewhere-else"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("FIGSEARCH_MODEL", "")
    monkeypatch.setenv("FIGSEARCH_DEVICE", "cpu")
    code = main(["search", "signaling pathway", "--mode", "dense", "--k", "3",
                 "--data-dir", str(moved)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("dense search for 'signaling pathway'") and len(out.splitlines()) == 4
    # An empty FIGSEARCH_MODEL means the current index's model for `figsearch index` too.
    monkeypatch.setenv("FIGSEARCH_NUM_WORKERS", "0")
    before = current_version_dir(moved / "indexes")
    assert main(["index", "--data-dir", str(moved), "--no-progress"]) == 0, capsys.readouterr().err
    after = current_version_dir(moved / "indexes")
    assert after != before
    assert read_manifest(after)["model_spec"] == DATA_DIR_PREFIX + "models/tiny-clip"
    assert read_manifest(after)["model_key"] == read_manifest(before)["model_key"]


def test_serve_exits_with_the_reason_when_the_model_cannot_load(
        small_index_data_dir, tmp_path, capsys):
    settings = Settings(data_dir=small_index_data_dir, model=str(tmp_path / "missing-model"),
                        device="cpu")
    args = argparse.Namespace(settings=settings, host="127.0.0.1", port=1, workers=1,
                              log_level="warning")
    assert serve_command(args) == 1
    err = capsys.readouterr().err
    assert "figsearch serve: cannot serve" in err and "missing-model" in err
    assert "does not exist" in err


def test_recorded_paths(tmp_path):
    data = tmp_path / "data"
    (data / "models" / "m").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    assert portable_path(str(data / "models" / "m"), data) == "data-dir:models/m"
    assert portable_path(str(tmp_path / "outside"), data) == str(tmp_path / "outside")
    assert portable_path("hf-hub:org/repo", data) == "hf-hub:org/repo"
    assert portable_path("figclip-mini", data) == "figclip-mini"
    assert resolve_path("data-dir:models/m", data) == str(data / "models" / "m")
    # An index built before paths were portable names the model relative to its old cwd.
    assert resolve_path("figsearch-data/models/m", data) == str(data / "models" / "m")
    assert resolve_path("hf-hub:org/repo", data) == "hf-hub:org/repo"
