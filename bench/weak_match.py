"""Calibrate the weak-match state (figsearch.explain) and measure what explanations cost.

Runs every real-figure query (bench/eval/queries.jsonl) and every off-topic query
(bench/eval/offtopic.jsonl: things PMC figures do not answer) through the search service in
the default (hybrid) mode, as the API does, and records per query the two pieces of evidence
:func:`figsearch.explain.assess` decides on (best caption cosine, best keyword match's share of
the query's words) and the time of the ``explain`` stage (signals of the page's hits plus the
match decision) next to the whole query's time.

The thresholds are chosen on the *dev* split only: every (caption cosine, keyword coverage)
pair of a grid is scored by balanced accuracy (the mean of: share of real queries kept strong,
share of off-topic queries flagged weak); among the pairs with the best dev score the one
nearest their mean is chosen (the centre of the plateau, as fusion tuning does). The test split
then reports the chosen pair and the pair the code ships (``STRONG_*`` in figsearch/explain.py).

    PYTHONPATH=$PWD .venv/bin/python -m bench.weak_match --data-dir /work/eval-data

writes ``bench/results/weak_match_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, write_result
from figsearch import explain, timing
from figsearch.core.config import Settings
from figsearch.evaluation import load_service, read_queries

CAPTION_GRID = np.round(np.arange(0.20, 0.801, 0.01), 2).tolist()
#: Keyword coverage thresholds; above 1 means "never strong by keywords alone".
COVERAGE_GRID = [0.5, 0.6, 0.67, 0.75, 0.8, 0.9, 1.0, 1.01]


def measure(service: Any, rows: list[dict[str, Any]], kind: str, k: int) -> list[dict[str, Any]]:
    """Per query: split, the evidence, the shipped decision and the explain / total times."""
    out = []
    for row in rows:
        acc, token = timing.begin()
        start = time.perf_counter()
        try:
            page = service.search_text(str(row["query"]), k=k)
        finally:
            timing.end(token)
        total = (time.perf_counter() - start) * 1000.0
        m = page.match
        out.append({"id": row.get("id"), "kind": kind, "split": row.get("split", "test"),
                    "query": row["query"], "caption_cosine": m.caption_cosine,
                    "keyword_coverage": m.keyword_coverage, "quality": m.quality,
                    "explain_ms": round(acc.get("explain", 0.0), 3), "total_ms": round(total, 3),
                    "signals_per_hit": round(sum(len(h.signals) for h in page.hits)
                                             / max(len(page.hits), 1), 2)})
    return out


def strong(row: dict[str, Any], caption: float, coverage: float) -> bool:
    """The decision of :func:`figsearch.explain.assess` at the given thresholds."""
    c, v = row["caption_cosine"], row["keyword_coverage"]
    return (c is not None and c >= caption) or (v is not None and v >= coverage)


def accuracy(rows: list[dict[str, Any]], caption: float, coverage: float) -> dict[str, float]:
    """Real queries kept strong, off-topic queries flagged weak, and their mean."""
    real = [r for r in rows if r["kind"] == "real"]
    off = [r for r in rows if r["kind"] == "offtopic"]
    kept = sum(strong(r, caption, coverage) for r in real) / max(len(real), 1)
    flagged = sum(not strong(r, caption, coverage) for r in off) / max(len(off), 1)
    return {"real_strong": round(kept, 4), "offtopic_weak": round(flagged, 4),
            "balanced": round((kept + flagged) / 2, 4), "n_real": len(real), "n_offtopic": len(off)}


def calibrate(dev: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(caption threshold, coverage threshold, plateau size) chosen on dev (module doc)."""
    grid = [(c, v) for c in CAPTION_GRID for v in COVERAGE_GRID]
    scores = np.array([accuracy(dev, c, v)["balanced"] for c, v in grid])
    plateau = [grid[i] for i in np.flatnonzero(scores >= scores.max() - 1e-12)]
    centre = np.mean(np.array(plateau), axis=0)
    best = min(plateau, key=lambda p: ((p[0] - centre[0]) ** 2 + (p[1] - centre[1]) ** 2, p))
    return float(best[0]), float(best[1]), len(plateau)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.weak_match", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="data dir with a built index")
    p.add_argument("--queries", type=Path, default=REPO_ROOT / "bench/eval/queries.jsonl")
    p.add_argument("--offtopic", type=Path, default=REPO_ROOT / "bench/eval/offtopic.jsonl")
    p.add_argument("--k", type=int, default=20, help="results per query (the API's default)")
    p.add_argument("--name", default="weak_match_eval", help="result name in bench/results")
    args = p.parse_args(argv)
    real, problems = read_queries(args.queries)
    offtopic = [json.loads(line) for line in args.offtopic.read_text().splitlines() if line.strip()]
    if problems:
        print("\n".join(problems), file=sys.stderr)
    opened, service = load_service(Settings(data_dir=args.data_dir))
    try:
        service.search_text("warm up the encoders", k=args.k)
        rows = measure(service, real, "real", args.k) + measure(service, offtopic, "offtopic",
                                                                 args.k)
    finally:
        opened.close()
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    caption, coverage, plateau = calibrate(dev)
    shipped = (explain.STRONG_CAPTION_COSINE, explain.STRONG_KEYWORD_COVERAGE)
    explain_ms = [r["explain_ms"] for r in rows]
    total_ms = [r["total_ms"] for r in rows]
    figures = {
        "chosen_caption_cosine": caption, "chosen_keyword_coverage": coverage,
        "plateau_size": plateau,
        "shipped_caption_cosine": shipped[0], "shipped_keyword_coverage": shipped[1],
        "shipped_matches_chosen": shipped == (caption, coverage),
        **{f"dev_{k}": v for k, v in accuracy(dev, caption, coverage).items()},
        **{f"test_{k}": v for k, v in accuracy(test, *shipped).items()},
        "explain_ms_p50": round(statistics.median(explain_ms), 3),
        "explain_ms_mean": round(statistics.fmean(explain_ms), 3),
        "query_ms_p50": round(statistics.median(total_ms), 3),
        "explain_share_of_query_p50": round(statistics.median(
            e / t for e, t in zip(explain_ms, total_ms, strict=True) if t > 0), 4),
        "test_misjudged": [f"{r['kind']} {r['id']}: {r['query']}" for r in test
                           if strong(r, *shipped) != (r["kind"] == "real")],
        "per_query": rows,
    }
    params = {"data_dir": str(args.data_dir), "k": args.k, "mode": "hybrid",
              "queries": str(args.queries.relative_to(REPO_ROOT) if args.queries.is_absolute()
                             and args.queries.is_relative_to(REPO_ROOT) else args.queries),
              "fusion": service.fusion.describe(), "index_version": service.index_version}
    path = write_result(args.name, params, figures)
    for key, value in figures.items():
        if key != "per_query":
            print(f"{key}: {value}")
    print(f"-> {path}")
    if shipped != (caption, coverage):
        print(f"note: the shipped thresholds {shipped} differ from the dev choice "
              f"{(caption, coverage)}; update figsearch/explain.py", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
