"""Check bench/eval/queries.jsonl against a figure store built from ../shared/data.

Build the store first (about 10 s):

    PYTHONPATH=$PWD .venv/bin/python -m figsearch.cli ingest ../shared/data/pmc-figures/figures.jsonl \
        ../shared/data/jats/plos ../shared/data/jats/pmc-nxml ../shared/data/jats/packages \
        --data-dir /tmp/eval-data

then run

    PYTHONPATH=$PWD .venv/bin/python -m bench.eval.validate_queries --data-dir /tmp/eval-data [--keyword]

(``--build`` runs that ingest into a temporary directory itself). Checks, each failure printed
with the query id:

- every line is a JSON object with the fields of EVAL_FORMAT (id, query, split, kind, source,
  relevant) and allowed values; ids are unique; each query has at least one grade-2 figure;
- every relevant entry (pmcid or doi, plus label) resolves to exactly one figure in the store,
  and the figure's article comes from the data set named by ``source``;
- no query shares a run of more than 5 consecutive words with the caption of any of its
  relevant figures (queries are written in a researcher's words, not copied);
- ``ocr`` queries list the words they take from inside the image in ``ocr_terms``; each term
  occurs in the query and in neither the caption nor the article title of the grade-2 figure
  (case-insensitive, also with punctuation removed, so "IRF-3" counts as present in "IRF3").

It prints counts per split, kind and source, and with ``--keyword`` a rough baseline: hit@1,
hit@10 and MRR of the store's BM25 keyword search (grade-2 figures count as hits).
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figsearch.store import FigureStore

HERE = Path(__file__).resolve().parent
DEFAULT_QUERIES = HERE / "queries.jsonl"
SHARED = Path(os.environ.get("FIGSEARCH_SHARED", HERE.parents[1].parent / "shared")) / "data"
KINDS = {"caption", "ocr", "title", "synonym", "method", "organism"}
SOURCES = {"pmc-figures", "plos", "pmc-nxml", "packages"}
SPLITS = {"dev", "test"}
MAX_SHARED_RUN = 5
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Target:
    """One figure in the store that a relevant entry points at."""

    figure_id: int
    caption: str
    title: str
    article_key: str
    pmcid: str | None
    doi: str | None
    has_image: bool


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    runs: Counter[int] = field(default_factory=Counter)  # longest shared run with the caption
    n_queries: int = 0

    def fail(self, qid: str, message: str) -> None:
        self.errors.append(f"{qid}: {message}")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words, the unit of the copy check."""
    return _WORD.findall(text.lower())


def longest_shared_run(a: str, b: str) -> int:
    """Length of the longest run of consecutive words that occurs in both texts."""
    x, y = words(a), words(b)
    best = 0
    prev = [0] * (len(y) + 1)
    for i in range(1, len(x) + 1):
        cur = [0] * (len(y) + 1)
        for j in range(1, len(y) + 1):
            if x[i - 1] == y[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def term_present(term: str, text: str) -> bool:
    """True if ``term`` occurs in ``text``, case-insensitively, with or without punctuation."""
    squash = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    return term.lower() in text.lower() or squash(term) in squash(text)


def dataset_of(target: Target) -> str:
    """Which shared data set an article came from, from what the store keeps about it."""
    if target.article_key.endswith("elife-32671") or (target.doi or "").startswith("10.7554/"):
        return "packages"
    if (target.doi or "").startswith("10.1101/"):
        return "packages"
    if target.pmcid is None:
        return "plos"
    # both keyed by PMCID; only the pathway manifest (pmc-figures) comes with images
    return "pmc-figures" if target.has_image else "pmc-nxml"


def resolve(store: FigureStore, entry: dict[str, Any]) -> list[Target]:
    """All figures matching a relevant entry's pmcid/doi + label."""
    from sqlalchemy import text

    if "pmcid" in entry:
        where, ident = "a.pmcid = :ident", entry["pmcid"]
    else:
        where, ident = "lower(a.doi) = lower(:ident)", entry.get("doi", "")
    sql = text(
        "SELECT f.id, f.caption, a.title, a.key, a.pmcid, a.doi, f.has_image FROM figures f "
        f"JOIN articles a ON a.id = f.article_id WHERE {where} AND f.label = :label"
    )
    with store.engine.connect() as conn:
        rows = conn.execute(sql, {"ident": ident, "label": entry.get("label", "")}).all()
    return [Target(int(r[0]), r[1] or "", r[2] or "", r[3], r[4], r[5], bool(r[6])) for r in rows]


def check_fields(q: Any, n: int, report: Report) -> bool:
    """Shape and allowed values of one line; False if the line cannot be checked further."""
    if not isinstance(q, dict):
        report.fail(f"line {n}", "not a JSON object")
        return False
    qid = str(q.get("id", f"line {n}"))
    ok = True
    for key in ("id", "query", "split", "kind", "source", "relevant"):
        if key not in q:
            report.fail(qid, f"missing field {key!r}")
            ok = False
    if not ok:
        return False
    for key, allowed in (("split", SPLITS), ("kind", KINDS), ("source", SOURCES)):
        if q[key] not in allowed:
            report.fail(qid, f"{key} {q[key]!r} not one of {sorted(allowed)}")
    if not isinstance(q["query"], str) or not q["query"].strip():
        report.fail(qid, "empty query")
    rel = q["relevant"]
    if not isinstance(rel, list) or not rel:
        report.fail(qid, "relevant must be a non-empty list")
        return False
    for e in rel:
        if not isinstance(e, dict) or not ({"pmcid", "doi"} & e.keys()) or "label" not in e:
            report.fail(qid, f"relevant entry {e!r} needs pmcid or doi, and label")
            return False
        if e.get("grade") not in (1, 2):
            report.fail(qid, f"grade of {e!r} must be 1 or 2")
    if not any(e.get("grade") == 2 for e in rel):
        report.fail(qid, "no grade-2 (intended) figure")
    return True


def check_query(store: FigureStore, q: dict[str, Any], report: Report) -> list[int]:
    """Resolve, copy and OCR checks for one query; returns the grade-2 figure ids."""
    qid = q["id"]
    intended: list[int] = []
    for e in q["relevant"]:
        found = resolve(store, e)
        if len(found) != 1:
            report.fail(qid, f"{e} resolves to {len(found)} figures, expected exactly 1")
            continue
        t = found[0]
        ds = dataset_of(t)
        if ds != q["source"]:
            report.fail(qid, f"{e} is a {ds} figure but source is {q['source']}")
        run = longest_shared_run(q["query"], t.caption)
        if e.get("grade") == 2:
            report.runs[run] += 1
        if run > MAX_SHARED_RUN:
            report.fail(qid, f"shares {run} consecutive words with the caption of {e['label']}")
        if e.get("grade") == 2:
            intended.append(t.figure_id)
            if q["kind"] == "ocr":
                check_ocr(q, t, report)
    return intended


def check_ocr(q: dict[str, Any], t: Target, report: Report) -> None:
    terms = q.get("ocr_terms")
    if not isinstance(terms, list) or not terms:
        report.fail(q["id"], "ocr query without ocr_terms")
        return
    for term in terms:
        if not term_present(term, q["query"]):
            report.fail(q["id"], f"ocr term {term!r} is not in the query")
        if term_present(term, t.caption) or term_present(term, t.title):
            report.fail(q["id"], f"ocr term {term!r} appears in the caption or title")


def keyword_rank(store: FigureStore, query: str, intended: list[int], k: int = 10) -> int | None:
    """1-based rank of the first intended figure in BM25 keyword search, None beyond k."""
    hits = [fid for fid, _ in store.keyword_search(query, k)]
    for rank, fid in enumerate(hits, 1):
        if fid in intended:
            return rank
    return None


def print_counts(queries: list[dict[str, Any]]) -> None:
    print(f"{len(queries)} queries")
    for key in ("split", "kind", "source"):
        c = Counter(q[key] for q in queries)
        print(f"  {key:7s}: " + ", ".join(f"{v} {n}" for v, n in sorted(c.items())))
    grid = Counter((q["source"], q["kind"], q["split"]) for q in queries)
    print("  source       kind       dev test")
    for src, kind in sorted({(s, k) for s, k, _ in grid}):
        print(f"  {src:12s} {kind:9s} {grid[(src, kind, 'dev')]:4d} {grid[(src, kind, 'test')]:4d}")
    graded = sum(1 for q in queries for e in q["relevant"] if e.get("grade") == 1)
    print(f"  grade-1 (also relevant) entries: {graded}")


def print_keyword(results: list[tuple[dict[str, Any], int | None]]) -> None:
    print("keyword (BM25) baseline: split/kind, n, hit@1, hit@10, MRR@10")
    groups: dict[str, list[int | None]] = {}
    for q, rank in results:
        for g in ("all", q["split"], f"kind={q['kind']}", f"source={q['source']}"):
            groups.setdefault(g, []).append(rank)
    for g, ranks in groups.items():
        n = len(ranks)
        h1 = sum(1 for r in ranks if r == 1) / n
        h10 = sum(1 for r in ranks if r is not None) / n
        mrr = sum(1 / r for r in ranks if r is not None) / n
        print(f"  {g:22s} {n:4d}  {h1:.3f}  {h10:.3f}  {mrr:.3f}")


def build_store(target: Path) -> None:
    """Ingest the shared real figures into ``target`` with the project's own CLI."""
    inputs = [SHARED / "pmc-figures" / "figures.jsonl"] + [
        SHARED / "jats" / d for d in ("plos", "pmc-nxml", "packages")
    ]
    cmd = [sys.executable, "-m", "figsearch.cli", "ingest", *map(str, inputs), "--data-dir", str(target)]
    subprocess.run(cmd, check=True)


def validate(queries_path: Path, data_dir: Path, keyword: bool) -> int:
    """Run every check; print counts (and the keyword baseline); return the exit status."""
    report = check_file(queries_path, data_dir, keyword)
    for err in report.errors:
        print("ERROR", err)
    print(f"{len(report.errors)} problems in {report.n_queries} queries")
    return 1 if report.errors else 0


def check_file(queries_path: Path, data_dir: Path, keyword: bool = False) -> Report:
    """All checks of a query file against the store in ``data_dir``; prints the counts."""
    store = FigureStore(data_dir / "figsearch.db", create=False)
    report = Report()
    queries: list[dict[str, Any]] = []
    for n, line in enumerate(queries_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            report.fail(f"line {n}", f"invalid JSON: {exc}")
            continue
        if check_fields(q, n, report):
            queries.append(q)
    for qid, count in Counter(q["id"] for q in queries).items():
        if count > 1:
            report.fail(qid, f"id used {count} times")
    for text_, count in Counter(q["query"].lower() for q in queries).items():
        if count > 1:
            report.fail(text_, f"query text used {count} times")
    ranks: list[tuple[dict[str, Any], int | None]] = []
    for q in queries:
        intended = check_query(store, q, report)
        if keyword and intended:
            ranks.append((q, keyword_rank(store, q["query"], intended)))
    print_counts(queries)
    print("  longest word run shared with the intended caption: "
          + ", ".join(f"{n} words: {c}" for n, c in sorted(report.runs.items())))
    if keyword:
        print_keyword(ranks)
    report.n_queries = len(queries)
    store.close()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    ap.add_argument("--data-dir", type=Path, help="a data dir built by ingesting ../shared/data")
    ap.add_argument("--build", action="store_true", help="ingest ../shared/data into a temp dir first")
    ap.add_argument("--keyword", action="store_true", help="also report the BM25 keyword baseline")
    args = ap.parse_args(argv)
    if args.build:
        with tempfile.TemporaryDirectory(prefix="eval-data-") as tmp:
            build_store(Path(tmp))
            return validate(args.queries, Path(tmp), args.keyword)
    if args.data_dir is None:
        ap.error("give --data-dir (a store built from ../shared/data) or --build")
    return validate(args.queries, args.data_dir, args.keyword)


if __name__ == "__main__":
    sys.exit(main())
