"""``figsearch eval --queries FILE``: ranking quality on a real-figure query set.

Each query of the JSONL file (format: bench/eval/README.md) names its relevant figures by
``pmcid`` + ``label`` (or ``doi`` + ``label``) with a grade (2 = the intended figure, 1 = also
relevant). Every mode runs through the same :class:`~figsearch.search.SearchService` the API
serves (loaded by :class:`~figsearch.api.state.AppState` from ``indexes/current``), with the
API's defaults (near-duplicate collapse on, no filters), and is scored by hit@1, hit@10, MRR
(first relevant within the top ``depth``) and nDCG@10 (gain ``2^grade - 1``).

``--tune`` chooses the hybrid fusion (method and weights on a grid) on the *dev* split only and
then reports the chosen fusion on the requested split, so the test split is never tuned on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from figsearch.core.config import Settings
from figsearch.fusion import METHODS, FusionConfig, SignalResult, fuse, weight_grid
from figsearch.search import SearchService
from figsearch.store import FigureFilter, FigureStore

METRICS = ("hit@1", "hit@10", "mrr", "ndcg@10")
SINGLE_MODES = ("keyword", "caption", "dense")
DEPTH = 100


@dataclass
class EvalQuery:
    """One query with its relevant figures resolved to store ids (id -> grade)."""

    id: str
    query: str
    split: str
    kind: str
    source: str
    relevant: dict[int, int] = field(default_factory=dict)


# -- reading and resolving ----------------------------------------------------------------------
def read_queries(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of a JSONL file and a problem line for each unreadable line."""
    rows, problems = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc})")
            continue
        if not isinstance(row, dict) or not str(row.get("query") or "").strip() \
                or not isinstance(row.get("relevant"), list):
            problems.append(f"{path}:{n}: needs a 'query' string and a 'relevant' list")
            continue
        rows.append(row)
    return rows, problems


def resolve_target(store: FigureStore, target: dict[str, Any]) -> list[int]:
    """Figure ids matching ``{"pmcid"|"doi": ..., "label": ...}`` (non-retracted articles)."""
    key = "pmcid" if target.get("pmcid") else "doi" if target.get("doi") else None
    if key is None or target.get("label") is None:
        return []
    with store.engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT f.id FROM figures f JOIN articles a ON a.id = f.article_id "
            f"WHERE lower(a.{key}) = lower(:v) AND f.label = :label AND a.retracted = 0"),
            {"v": str(target[key]), "label": str(target["label"])}).all()
    return [int(r[0]) for r in rows]


def resolve_queries(store: FigureStore, rows: list[dict[str, Any]]
                    ) -> tuple[list[EvalQuery], list[str]]:
    """Queries with store ids; a query none of whose grade-2 targets resolves is skipped."""
    out, problems = [], []
    for i, row in enumerate(rows):
        qid = str(row.get("id") or f"line{i + 1}")
        relevant: dict[int, int] = {}
        for target in row["relevant"]:
            ids = resolve_target(store, target) if isinstance(target, dict) else []
            if len(ids) != 1:
                problems.append(f"{qid}: target {target} matches {len(ids)} figures")
            for fid in ids[:1]:
                relevant[fid] = max(relevant.get(fid, 0), int(target.get("grade", 2)))
        if not relevant:
            problems.append(f"{qid}: no relevant figure resolves; skipped")
            continue
        out.append(EvalQuery(qid, str(row["query"]), str(row.get("split", "test")),
                             str(row.get("kind", "")), str(row.get("source", "")), relevant))
    return out, problems


# -- metrics ------------------------------------------------------------------------------------
def query_metrics(ranking: Sequence[int], relevant: dict[int, int]) -> dict[str, float]:
    """hit@1, hit@10, MRR and nDCG@10 of one ranking."""
    first = next((r for r, doc in enumerate(ranking, 1) if relevant.get(doc, 0) > 0), None)
    dcg = sum((2 ** relevant.get(doc, 0) - 1) / math.log2(r + 1)
              for r, doc in enumerate(ranking[:10], 1))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum((2 ** g - 1) / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return {"hit@1": float(first == 1), "hit@10": float(first is not None and first <= 10),
            "mrr": 1.0 / first if first else 0.0, "ndcg@10": dcg / idcg if idcg else 0.0}


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric (rounded to 4 places); n = number of queries."""
    n = len(per_query)
    out = {m: round(sum(q[m] for q in per_query) / n, 4) if n else 0.0 for m in METRICS}
    return {**out, "n": n}


def rank_with(service: SearchService, mode: str, depth: int = DEPTH) -> Callable[[str], list[int]]:
    """A ranker running ``mode`` through the service as the API does (dedup on, no filter)."""
    def ranker(query: str) -> list[int]:
        return [h.id for h in service.search_text(query, k=depth, mode=mode).hits]
    return ranker


def evaluate_ranker(ranker: Callable[[str], list[int]], queries: list[EvalQuery]
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean metrics and the per-query rows (id, rank of the first relevant, metrics)."""
    rows: list[dict[str, Any]] = []
    for q in queries:
        ranking = ranker(q.query)
        m = query_metrics(ranking, q.relevant)
        rows.append({"id": q.id, "kind": q.kind, "rank": round(1 / m["mrr"]) if m["mrr"] else None,
                     **{k: round(v, 4) for k, v in m.items()}})
    return mean_metrics([{k: r[k] for k in METRICS} for r in rows]), rows


# -- tuning ------------------------------------------------------------------------------------
def collect_signals(service: SearchService, queries: list[EvalQuery], signals: list[str],
                    depth: int = DEPTH) -> list[dict[str, SignalResult]]:
    """Each query's per-signal candidates (computed once; fusion variants reuse them)."""
    return [service.signal_results(q.query, depth, FigureFilter(), signals) for q in queries]


def tune_fusion(service: SearchService, dev: list[EvalQuery], signals: list[str],
                step: float = 0.1) -> tuple[FusionConfig, dict[str, Any]]:
    """The method + weights with the best mean of nDCG@10 and MRR on dev (ties: hit@10, fewer
    signals), on a grid of weights summing to 1, for each method. (Requiring the fusion to
    match every single signal on every dev metric first was tried and rejected: on a dev split
    where one signal has a perfect-looking hit@10, it only admits near-single-signal weights.)"""
    collected = collect_signals(service, dev, signals)

    def score(config: FusionConfig) -> dict[str, float]:
        return mean_metrics([query_metrics([d for d, _ in fuse(res, config)][:DEPTH], q.relevant)
                             for q, res in zip(dev, collected, strict=True)])

    singles = [score(FusionConfig({s: 1.0})) for s in signals]
    best: tuple[tuple[float, ...], FusionConfig, dict[str, float]] | None = None
    tried = 0
    for method in METHODS:
        for weights in weight_grid(signals, step):
            config = FusionConfig(weights, method)
            means = score(config)
            used = sum(1 for w in weights.values() if w > 0)
            key = ((means["ndcg@10"] + means["mrr"]) / 2, means["hit@10"], -used)
            tried += 1
            if best is None or key > best[0]:
                best = (key, config, means)
    assert best is not None
    return best[1], {"grid_step": step, "configs_tried": tried, "dev_metrics": best[2],
                     "dev_single_signals": dict(zip(signals, singles, strict=True)),
                     "objective": "mean of nDCG@10 and MRR on dev; ties: hit@10, fewer signals"}


# -- the run -----------------------------------------------------------------------------------
def load_service(settings: Settings) -> tuple[Any, SearchService]:
    """(state, service) exactly as the API loads them from ``indexes/current``."""
    from figsearch.api.state import AppState

    state = AppState(settings)
    state.reload()
    assert state.current is not None
    return state, state.current.service


def run(settings: Settings, queries_path: Path, split: str = "test", tune: bool = False,
        modes: Sequence[str] = (*SINGLE_MODES, "hybrid")) -> dict[str, Any]:
    """Evaluate every mode on ``split`` (dev | test | all); optionally tune fusion on dev."""
    started = time.monotonic()
    state, service = load_service(settings)
    try:
        rows, problems = read_queries(queries_path)
        queries, more = resolve_queries(service.store, rows)
        problems += more
        chosen = [q for q in queries if split == "all" or q.split == split]
        if not chosen:
            raise ValueError(f"{queries_path}: no resolvable queries in split {split!r}")
        live = service.signals()
        manifest: dict[str, Any] = getattr(service.index, "manifest", None) or {}
        result: dict[str, Any] = {
            "queries_file": str(queries_path), "split": split, "n_queries": len(chosen),
            "index_version": service.index_version,
            "model_spec": manifest.get("model_spec"), "dense_check": manifest.get("dense_check"),
            "caption_model": (service.captions.encoder.model_key if service.captions else None),
            "signals": live, "problems": problems, "modes": {}, "per_query": {},
        }
        if tune:
            dev = [q for q in queries if q.split == "dev"]
            if not dev:
                raise ValueError(f"{queries_path}: --tune needs dev-split queries")
            signals = [s for s in ("dense", "caption", "keyword") if live.get(s)]
            config, info = tune_fusion(service, dev, signals)
            service.fusion = config
            result["tuning"] = {**info, "n_dev": len(dev), "chosen": config.describe(),
                                "weights": dict(config.weights), "method": config.method}
        result["fusion"] = f"{service.fusion.describe()} over {', '.join(service.fused_signals())}"
        for mode in modes:
            if mode != "hybrid" and not _mode_available(service, mode):
                continue
            means, per_query = evaluate_ranker(rank_with(service, mode), chosen)
            result["modes"][mode] = means
            result["per_query"][mode] = per_query
        result["default_beats_best_single"] = default_vs_best(result["modes"])
    finally:
        state.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _mode_available(service: SearchService, mode: str) -> bool:
    if mode == "caption":
        return service.captions is not None
    if mode == "dense":
        return service.index is not None and service.encoder is not None
    return True


def default_vs_best(modes: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Per metric: is hybrid >= the best single signal?"""
    if "hybrid" not in modes:
        return {}
    singles = [m for m in modes if m != "hybrid"]
    return {m: modes["hybrid"][m] >= max((modes[s][m] for s in singles), default=0.0)
            for m in METRICS}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per mode, columns hit@1 hit@10 MRR nDCG@10."""
    lines = [f"| mode ({result['split']} split, {result['n_queries']} queries) | hit@1 | hit@10 "
             "| MRR | nDCG@10 |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode, m in result["modes"].items():
        name = f"**{mode}** (default: {result['fusion']})" if mode == "hybrid" else mode
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    return "\n".join(lines)


# -- CLI (wired into ``figsearch eval`` by trainer.evaluate) -------------------------------------
def command(args: argparse.Namespace) -> int:
    """``figsearch eval --queries FILE [--split dev|test|all] [--tune] [--out JSON]``."""
    settings: Settings = args.settings
    try:
        result = run(settings, Path(args.queries), args.split or "test", tune=args.tune)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"figsearch eval: {exc}", file=sys.stderr)
        return 2
    for line in result["problems"]:
        print(f"figsearch eval: {line}", file=sys.stderr)
    print(format_table(result))
    if "tuning" in result:
        print(f"fusion tuned on {result['tuning']['n_dev']} dev queries: {result['tuning']['chosen']}")
    print(f"eval: {result['n_queries']} queries, {len(result['modes'])} modes in "
          f"{result['seconds']} s; default >= best single signal: {result['default_beats_best_single']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"metrics -> {args.out}")
    return 0
