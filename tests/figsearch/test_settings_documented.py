"""Every setting is documented in the README (datasette's rule), with its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from figsearch.core.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_setting_is_in_readme(name):
    text = README.read_text()
    row = next((line for line in text.splitlines() if f"`FIGSEARCH_{name.upper()}`" in line), None)
    assert row is not None, f"FIGSEARCH_{name.upper()} is not documented in README.md"
    field = Settings.model_fields[name]
    assert field.description and field.description in row


def test_settings_read_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FIGSEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FIGSEARCH_MAX_K", "7")
    s = Settings()
    assert s.data_dir == tmp_path and s.max_k == 7
    assert s.db_path == tmp_path / "figsearch.db"
