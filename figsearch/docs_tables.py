"""The README's command and settings tables, generated from the code that defines them.

The CLI table comes from :data:`figsearch.cli.COMMANDS` (every verb of the ``figsearch``
console script and its one-line help); the settings table from
:class:`figsearch.core.config.Settings` (every ``FIGSEARCH_<NAME>`` with its default and help).
Each table lives in README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, so the
README cannot drift from the code: ``tests/figsearch/test_docs_tables.py`` fails when it does.

    python -m figsearch.docs_tables --write     # regenerate the tables in README.md
    python -m figsearch.docs_tables --check     # exit 1 (and say so) when README.md differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic.fields import FieldInfo

from figsearch.cli import COMMANDS
from figsearch.core.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
REGENERATE = "python -m figsearch.docs_tables --write"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: pipes escaped, line breaks joined."""
    return " ".join(str(text).split()).replace("|", "\\|")


def cli_table() -> str:
    """One row per ``figsearch`` verb: the command, its one-line help, the module behind it."""
    rows = ["| command | what it does | code |", "| --- | --- | --- |"]
    for verb, (module, help_text) in COMMANDS.items():
        rows.append(f"| `figsearch {verb}` | {_cell(help_text)} | `{module}` |")
    return "\n".join(rows)


def _default_text(field: FieldInfo) -> str:
    """How a setting's default reads in the table; empty strings and None read '(empty)'."""
    default = field.get_default(call_default_factory=True)
    return "(empty)" if default in ("", None) else _cell(str(default))


def settings_table() -> str:
    """One row per setting: its environment variable, default and help text."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{prefix}{name.upper()}` | `{_default_text(field)}` "
                    f"| {_cell(field.description or '')} |")
    return "\n".join(rows)


#: marker name -> the function that renders what goes between its markers
TABLES: dict[str, Callable[[], str]] = {"cli": cli_table, "settings": settings_table}


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name:start -->`` and ``<!-- name:end -->`` set
    to ``body``; a missing or misordered marker pair is an error naming the markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ValueError(f"no '{start}' ... '{end}' markers (in that order)")
    return text[: i + len(start)] + "\n" + body.strip() + "\n" + text[j:]


def render(text: str) -> str:
    """``text`` (a README) with every generated table brought up to date."""
    for name, table in TABLES.items():
        text = replace_section(text, name, table())
    return text


def main(argv: list[str] | None = None) -> int:
    """``--write`` updates the README in place; ``--check`` reports drift with exit code 1."""
    parser = argparse.ArgumentParser(prog="python -m figsearch.docs_tables",
                                     description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the tables in place")
    action.add_argument("--check", action="store_true", help="exit 1 when the README differs")
    parser.add_argument("--readme", type=Path, default=README, help="README to read (and write)")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        updated = render(text)
    except (OSError, ValueError) as exc:
        print(f"error: {args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"{args.readme}: generated tables are out of date; run: {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    print(f"updated {args.readme}" if updated != text else f"{args.readme} already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
