"""``figsearch eval --queries FILE``: ranking quality on a real-figure query set.

Each query of the JSONL file (format: bench/eval/README.md) names its relevant figures by
``pmcid`` + ``label`` (or ``doi`` + ``label``) with a grade (2 = the intended figure, 1 = also
relevant). Every mode runs through the same :class:`~figsearch.search.SearchService` the API
serves (loaded by :class:`~figsearch.serving.VersionLoader` from ``indexes/current``), with the
API's defaults (near-duplicate collapse on, no filters), and is scored by hit@1, hit@10, MRR
(first relevant within the top ``depth``) and nDCG@10 (gain ``2^grade - 1``).

``--tune`` chooses the hybrid fusion (method and weights on a grid, ``--tune-step``) on the *dev*
split only - the centre of the near-best plateau (one-standard-error rule) of the mean of the
four metrics, with a k-fold cross-validation of that procedure inside dev - and then reports
the chosen fusion on the requested split, so the test split is never tuned on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
def jsonl_lines(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(where, value, problem)`` for each non-blank line of a JSONL file: ``where`` is
    ``path:line``; ``problem`` is ``not JSON (...)`` (and ``value`` None) for a line that does
    not parse. Callers decide whether a problem is collected or raised."""
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line), None
        except ValueError as exc:
            yield f"{path}:{n}", None, f"not JSON ({exc})"


def read_queries(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of a JSONL file and a problem line for each unreadable line."""
    rows, problems = [], []
    for where, row, problem in jsonl_lines(path):
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if not isinstance(row, dict) or not str(row.get("query") or "").strip() \
                or not isinstance(row.get("relevant"), list):
            problems.append(f"{where}: needs a 'query' string and a 'relevant' list")
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


#: Weight grid of ``--tune`` (weights summing to 1) and its near-best rule: configurations whose
#: dev objective is within TUNE_SE standard errors of the best (the standard error of the
#: per-query difference to the best; the "one-standard-error rule") form the plateau - the
#: differences the dev split cannot resolve.
TUNE_STEP = 0.05
TUNE_SE = 1.0


def config_metrics(queries: list[EvalQuery], collected: list[dict[str, SignalResult]],
                   config: FusionConfig) -> np.ndarray:
    """Per-query metrics (rows: queries, columns: METRICS) of one fusion on collected signals."""
    return np.array([[m[k] for k in METRICS] for m in (
        query_metrics([d for d, _ in fuse(res, config)][:DEPTH], q.relevant)
        for q, res in zip(queries, collected, strict=True))]).reshape(len(queries), len(METRICS))


def near_best(configs: Sequence[FusionConfig], per_query: np.ndarray,
              se: float = TUNE_SE) -> list[int]:
    """The plateau: indexes of the configs that share the best one's method and whose objective
    (the mean of the four metrics; ``per_query`` is [config, query, metric]) is within ``se``
    standard errors of the best, the standard error being that of the per-query difference."""
    per_query_objective = per_query.mean(axis=2)
    objective = per_query_objective.mean(axis=1)
    best = int(np.argmax(objective))
    n = per_query.shape[1]
    diff = per_query_objective[best][None, :] - per_query_objective
    stderr = diff.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(configs))
    return [i for i in range(len(configs)) if objective[i] >= objective[best] - se * stderr[i]
            and configs[i].method == configs[best].method]


def plateau_centre(configs: Sequence[FusionConfig], per_query: np.ndarray,
                   se: float = TUNE_SE) -> int:
    """Index of the chosen config: the member of the near-best plateau (:func:`near_best`)
    nearest the plateau's mean weights (ties: the higher objective). The centre of the plateau
    is less at the mercy of a few queries than the single best grid point."""
    objective = per_query.mean(axis=(1, 2))
    near = near_best(configs, per_query, se)
    names = sorted({n for i in near for n in configs[i].weights})
    w = np.array([[configs[i].weight(n) for n in names] for i in near])
    dist = ((w - w.mean(axis=0)) ** 2).sum(axis=1)
    return near[min(range(len(near)), key=lambda j: (round(float(dist[j]), 9), -objective[near[j]]))]


def cross_validate(configs: Sequence[FusionConfig], per_config: np.ndarray, singles: np.ndarray,
                   se: float = TUNE_SE, folds: int = 5, repeats: int = 4,
                   seed: int = 0) -> dict[str, Any]:
    """Repeated k-fold cross-validation of the tuning procedure *inside* dev: choose on k-1
    folds, measure on the held-out one against the best single signal of that fold.
    ``per_config``: [config, query, metric]; ``singles``: [signal, query, metric]."""
    n = per_config.shape[1]
    if n < 2 * folds:
        return {}
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(repeats):
        for held in np.array_split(rng.permutation(n), folds):
            train = np.setdiff1d(np.arange(n), held)
            c = plateau_centre(configs, per_config[:, train], se)
            gaps.append(per_config[c, held].mean(axis=0) - singles[:, held].mean(axis=1).max(axis=0))
    g = np.array(gaps)
    return {"folds": folds, "repeats": repeats,
            "mean_gap_vs_best_single": dict(zip(METRICS, np.round(g.mean(axis=0), 4).tolist(),
                                                strict=True)),
            "share_of_folds_at_least_best_single": dict(zip(
                METRICS, np.round((g >= -1e-12).mean(axis=0), 3).tolist(), strict=True))}


def tune_fusion(service: SearchService, dev: list[EvalQuery], signals: list[str],
                step: float = TUNE_STEP, se: float = TUNE_SE
                ) -> tuple[FusionConfig, dict[str, Any]]:
    """Choose the hybrid fusion on dev: every method x weights on a grid of ``step`` summing to
    1 is scored per query; the objective is the mean of hit@1, hit@10, MRR and nDCG@10 (the
    target is "at least the best single signal on every metric"); the choice is the centre of
    the near-best plateau (:func:`plateau_centre`). The same procedure is cross-validated inside
    dev (:func:`cross_validate`) as an estimate of how it carries over to unseen queries.
    This procedure was itself chosen by that cross-validation, against the highest objective,
    the largest worst-case margin over the single signals and fixed-width plateaus
    (docs/benchmarks.md, "How the fusion weights were chosen"); requiring the fusion to match
    every single signal on every dev metric admits only near-single-signal weights."""
    from tqdm import tqdm

    collected = collect_signals(service, dev, signals)
    configs = [FusionConfig(w, m) for m in METHODS for w in weight_grid(signals, step)]
    per_config = np.stack([config_metrics(dev, collected, c)
                           for c in tqdm(configs, desc="tune", unit="config", leave=False)])
    singles = np.stack([config_metrics(dev, collected, FusionConfig({s: 1.0})) for s in signals])
    chosen = plateau_centre(configs, per_config, se)
    plateau = len(near_best(configs, per_config, se))
    return configs[chosen], {
        "grid_step": step, "plateau_se": se, "configs_tried": len(configs),
        "plateau_size": plateau, "dev_metrics": mean_metrics(
            [dict(zip(METRICS, row, strict=True)) for row in per_config[chosen].tolist()]),
        "dev_single_signals": {s: mean_metrics([dict(zip(METRICS, row, strict=True))
                                                for row in singles[i].tolist()])
                               for i, s in enumerate(signals)},
        "cross_validation": cross_validate(configs, per_config, singles, se),
        "objective": f"mean of hit@1, hit@10, MRR and nDCG@10 on dev; among the configs within "
                     f"{se:g} standard error(s) of the best (same method) the one nearest their "
                     "mean weights",
    }


# -- the run -----------------------------------------------------------------------------------
def load_service(settings: Settings) -> tuple[Any, SearchService]:
    """(opened version, service) exactly as the API loads them from ``indexes/current``
    (:func:`figsearch.serving.open_current`); close the first when done."""
    from figsearch.serving import open_current

    opened = open_current(settings, warm_up=True)
    return opened, opened.service


def run(settings: Settings, queries_path: Path, split: str = "test", tune: bool = False,
        modes: Sequence[str] = (*SINGLE_MODES, "hybrid"), tune_step: float = TUNE_STEP
        ) -> dict[str, Any]:
    """Evaluate every mode on ``split`` (dev | test | all); optionally tune fusion on dev."""
    if tune and (not 0 < tune_step <= 0.5 or abs(1 / tune_step - round(1 / tune_step)) > 1e-6):
        raise ValueError(f"--tune-step {tune_step:g}: use 1/n for a whole n >= 2, e.g. 0.05")
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
            config, info = tune_fusion(service, dev, signals, tune_step)
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
        result = run(settings, Path(args.queries), args.split or "test", tune=args.tune,
                     tune_step=getattr(args, "tune_step", None) or TUNE_STEP)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"figsearch eval: {exc}", file=sys.stderr)
        return 2
    for line in result["problems"]:
        print(f"figsearch eval: {line}", file=sys.stderr)
    print(format_table(result))
    if "tuning" in result:
        tuning = result["tuning"]
        print(f"fusion tuned on {tuning['n_dev']} dev queries: {tuning['chosen']} "
              f"({tuning['configs_tried']} configurations, plateau of {tuning['plateau_size']})")
        if tuning["cross_validation"]:
            cv = tuning["cross_validation"]
            print(f"cross-validated inside dev ({cv['repeats']} x {cv['folds']}-fold), mean gap "
                  f"to the best single signal: {cv['mean_gap_vs_best_single']}")
    print(f"eval: {result['n_queries']} queries, {len(result['modes'])} modes in "
          f"{result['seconds']} s; default >= best single signal: {result['default_beats_best_single']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"metrics -> {args.out}")
    return 0
