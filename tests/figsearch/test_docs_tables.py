"""README's CLI and settings tables are what the code generates (datasette's rule, enforced)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from figsearch import docs_tables
from figsearch.cli import COMMANDS
from figsearch.core.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tables_match_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    expected = docs_tables.render(text)
    if expected != text:
        diff = "".join(list(difflib.unified_diff(
            text.splitlines(keepends=True), expected.splitlines(keepends=True),
            "README.md", "generated", n=0))[:40])
        pytest.fail(f"README.md's generated tables drifted from the code; run "
                    f"`{docs_tables.REGENERATE}` and commit README.md.\n{diff}")


def test_every_verb_and_setting_has_a_row() -> None:
    cli, settings = docs_tables.cli_table(), docs_tables.settings_table()
    for verb, (_, help_text) in COMMANDS.items():
        assert f"| `figsearch {verb}` | {help_text} |" in cli
    rows = settings.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert row.startswith(f"| `FIGSEARCH_{name.upper()}` |")
        assert field.description and docs_tables._cell(field.description) in row
    assert "| `FIGSEARCH_DATA_DIR` | `figsearch-data` |" in settings
    assert "| `FIGSEARCH_MODEL` | `(empty)` |" in settings


def test_cells_cannot_break_the_table() -> None:
    assert docs_tables._cell("auto|on\n  off") == "auto\\|on off"


def test_check_and_write_on_a_stale_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    stale = ("# x\n<!-- cli:start -->\n| old |\n<!-- cli:end -->\nmiddle\n"
             "<!-- settings:start -->\n<!-- settings:end -->\nend\n")
    readme.write_text(stale, encoding="utf-8")
    assert docs_tables.main(["--check", "--readme", str(readme)]) == 1
    assert docs_tables.REGENERATE in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == stale  # --check writes nothing
    assert docs_tables.main(["--write", "--readme", str(readme)]) == 0
    written = readme.read_text(encoding="utf-8")
    assert written.startswith("# x\n<!-- cli:start -->\n| command |") and "middle\n" in written
    assert "`FIGSEARCH_MAX_K`" in written and written.endswith("<!-- settings:end -->\nend\n")
    assert docs_tables.main(["--check", "--readme", str(readme)]) == 0


def test_missing_markers_are_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- cli:start -->\n<!-- cli:end -->\nno settings markers\n")
    assert docs_tables.main(["--write", "--readme", str(readme)]) == 2
    assert "<!-- settings:start -->" in capsys.readouterr().err
