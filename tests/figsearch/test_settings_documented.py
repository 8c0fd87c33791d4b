"""Settings read the environment. That every setting is documented in the README, with its
default, is tests/figsearch/test_docs_tables.py's job: the README's table is generated."""

from __future__ import annotations

from figsearch.core.config import Settings


def test_settings_read_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FIGSEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FIGSEARCH_MAX_K", "7")
    s = Settings()
    assert s.data_dir == tmp_path and s.max_k == 7
    assert s.db_path == tmp_path / "figsearch.db"
