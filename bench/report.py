"""Regenerate the benchmark table in docs/benchmarks.md from ``bench/results/*.json``.

Only the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is replaced; the
rest of the page (the measurements written up by topic) is left byte for byte as it was.

    .venv/bin/python -m bench.report                    # docs/benchmarks.md from bench/results
    .venv/bin/python -m bench.report --doc /tmp/benchmarks.md --results /tmp/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/x.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, load_results, markdown_table  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine_summary(machine: dict[str, Any] | None) -> str:
    """'2 cores Intel Xeon, 24 GB, no GPU' from a result's machine block."""
    if not machine:
        return "?"
    gpu = machine.get("gpu") or "no GPU"
    ram = f", {machine['ram_gb']:g} GB" if machine.get("ram_gb") else ""
    return f"{machine.get('cores', '?')} cores {machine.get('cpu', '?')}{ram}, {gpu}"


def params_summary(params: dict[str, Any] | None, limit: int = 70) -> str:
    """Scalar parameters as 'k=v, ...' (nested values left out), cut at ``limit`` chars."""
    items = [f"{k}={v}" for k, v in (params or {}).items()
             if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 40]
    text = ", ".join(items)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """One markdown table: a row per figure of every result."""
    rows: list[list[Any]] = []
    for name, res in sorted(results.items()):
        figures = res.get("figures") or {}
        params = params_summary(res.get("params"))
        machine = machine_summary(res.get("machine"))
        date = str(res.get("timestamp", ""))[:10]
        first = True
        for key, value in figures.items():
            if isinstance(value, (dict, list)):
                continue
            # parameters, machine and date once per benchmark: the table stays readable
            rows.append([name, key, value] + ([params, machine, date] if first else ["", "", ""]))
            first = False
    if not rows:
        return "_No benchmark results yet: run the scripts in bench/ (see bench/README.md)._"
    return markdown_table(["bench", "figure", "value", "parameters", "machine", "date"], rows)


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with everything between the markers replaced by ``body``."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"no '{START}' ... '{END}' markers (in that order)")
    return text[: start + len(START)] + "\n" + body.strip() + "\n" + text[end:]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.report", description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
                   help="page to update (default docs/benchmarks.md)")
    p.add_argument("--results", type=Path, default=None, help="results dir (default bench/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = results_table(load_results(args.results))
    try:
        text = args.doc.read_text(encoding="utf-8")
        updated = replace_between_markers(text, table)
    except (OSError, ValueError) as exc:
        print(f"error: {args.doc}: {exc}", file=sys.stderr)
        return 2
    if updated != text:
        tmp = args.doc.with_name(args.doc.name + ".tmp")
        tmp.write_text(updated, encoding="utf-8")
        tmp.replace(args.doc)
    print(table)
    print(f"\nupdated {args.doc}" if updated != text else f"\n{args.doc} already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
