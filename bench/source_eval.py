"""Find the source of a figure: hit@1 / hit@10 of altered real figures sent as image queries.

    FIGSEARCH_DATA_DIR=/work/eval-source PYTHONPATH=$PWD .venv/bin/python -m bench.source_eval \\
        --shared ../shared/data --split dev [--limit N] [--http]

For every figure of the shared data whose image is in the data dir's current index version
(matched by the sha256 of the original file) and whose article falls in ``--split`` (sha1 of the
PMCID, :func:`bench.source_queries.split_of`), the queries of :mod:`bench.source_queries`
(crops, panels, screenshots, partial screenshots, shrunk, rotated) go through
:meth:`figsearch.search.SearchService.search_image`, decoded as the API decodes an upload:

- ``dense``: verification off (``source_verify=False``), the baseline;
- ``verified``: source verification as served (``settings``), with every stored image's
  features computed first (warm cache, the serving steady state);
- ``cold``: the first ``--cold`` queries again with the feature cache emptied before each one
  (every candidate's features computed within the time budget).

Per alteration: hit@1, hit@10 and the share of queries whose source was among the candidates
verification tried (``in_pool``: dense top ``source_candidates``, visual-word and query-OCR
candidates).
Also: the share of queries where another figure than the source would be verified
(``false_source_rate``, leave-one-out: what a query without a source in the index gets), latency p50/p95 of
the whole image query (decode + encode + search), and - with ``--tune`` (dev) - the sweep of the
inlier threshold from which :data:`figsearch.source_match.MIN_INLIERS` was chosen. With
``--http`` one pass of ``verified`` queries also goes through a real API server on loopback.
Writes ``bench/results/source_eval_<split>.json``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, REPO_ROOT, markdown_table, write_result  # noqa: E402
from bench.source_queries import ALTERATIONS, GOAL_ALTERATIONS, Source, altered, shared_sources  # noqa: E402
from figsearch import source_match  # noqa: E402
from figsearch.core.config import Settings  # noqa: E402
from figsearch.imaging import open_image  # noqa: E402
from figsearch.search import SearchService  # noqa: E402

PANELS_PATH = BENCH_DIR / "eval" / "panels.jsonl"
THRESHOLDS = (6, 8, 10, 12, 14, 16, 18, 20, 25, 30)


@dataclass
class Query:
    """One altered figure: its alteration, upload bytes and the sha256 of its source (None for a
    figure that is not in the index)."""

    alteration: str
    data: bytes
    source_sha: str | None
    pmcid: str


@dataclass
class Outcome:
    """What one query got: the dense candidate order, the verified inlier counts (all counts
    >= 1 when measured for tuning) and the latency."""

    query: Query
    ranking: list[int]  # the returned hits' sha256 order is judged through sha_of
    pool: list[int]
    counts: dict[int, int]
    ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_queries(sources: list[Source]) -> Iterator[Query]:
    """Every alteration of every source (see :mod:`bench.source_queries`)."""
    for src in sources:
        image = open_image(src.data)
        for name, data in altered(src, image):
            yield Query(name, data, src.sha256, src.pmcid)


def run_query(service: SearchService, query: Query, k: int) -> Outcome:
    """One image query as the API runs it (decode, encode, search); the figure ids of the page."""
    start = time.perf_counter()
    page = service.search_image(open_image(query.data, service.settings.max_image_pixels), k=k)
    ms = (time.perf_counter() - start) * 1000.0
    run = source_match.last_run()
    pool = list(run.pool) if run is not None else []
    counts = dict(run.verified or {}) if run is not None else {}
    extra = {"tried": run.tried if run else 0, "out_of_time": bool(run and run.out_of_time),
             "ocr_ms": run.ocr_ms if run else None,
             "ocr_words": len(run.ocr_words) if run and run.ocr_words is not None else None}
    return Outcome(query, [h.id for h in page.hits], pool, counts, ms, extra)


def reranked(outcome: Outcome, threshold: int) -> list[int]:
    """The candidate order verification gives at inlier ``threshold``: verified (count >=
    threshold) first by count, then the rest in dense order (what find_source does)."""
    ver = sorted((i for i in outcome.pool if outcome.counts.get(i, 0) >= threshold),
                 key=lambda i: -outcome.counts[i])
    return ver + [i for i in outcome.pool if i not in set(ver)]


def source_rank(ranking: list[int], sha_of: dict[int, str], sha: str | None) -> int | None:
    """1-based rank of the first hit with the source's image, None when absent."""
    for rank, fid in enumerate(ranking, 1):
        if sha is not None and sha_of.get(fid) == sha:
            return rank
    return None


def score(outcomes: list[Outcome], sha_of: dict[int, str], ranking_of: Any, dense_n: int = 0
          ) -> dict[str, Any]:
    """hit@1, hit@10, in_pool (the source among the candidates tried or not) and in_dense_pool
    (among the dense top ``dense_n`` alone, without query-OCR candidates) per alteration and
    over the goal's alterations."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.query.alteration].append(o)
        if o.query.alteration in GOAL_ALTERATIONS:
            groups["goal (crops, panels, screenshots)"].append(o)
        groups["all"].append(o)
    table: dict[str, Any] = {}
    for name, rows in groups.items():
        ranks = [source_rank(ranking_of(o), sha_of, o.query.source_sha) for o in rows]
        in_pool = [source_rank(o.pool, sha_of, o.query.source_sha) is not None for o in rows]
        in_dense = [source_rank(o.pool[:dense_n], sha_of, o.query.source_sha) is not None
                    for o in rows]
        table[name] = {"n": len(rows),
                       "hit@1": round(sum(r == 1 for r in ranks) / len(rows), 4),
                       "hit@10": round(sum(r is not None and r <= 10 for r in ranks) / len(rows), 4),
                       "in_pool": round(sum(in_pool) / len(rows), 4) if rows[0].pool else None,
                       "in_dense_pool": round(sum(in_dense) / len(rows), 4)
                       if rows[0].pool else None}
    order = [*ALTERATIONS, "goal (crops, panels, screenshots)", "all"]
    return {name: table[name] for name in order if name in table}


def latency(outcomes: list[Outcome]) -> dict[str, float]:
    """p50 / p95 / mean of the image queries' wall time (ms)."""
    ms = sorted(o.ms for o in outcomes)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
            "mean_ms": round(statistics.fmean(ms), 1)}


def false_sources(outcomes: list[Outcome], sha_of: dict[int, str], threshold: int) -> float:
    """Share of queries where a figure with another image than the source's would be verified
    at ``threshold``: leave-one-out, what a query whose source is not in the index would get
    (all the shared data's real figures are in the eval index, so there are no real outside
    queries; a distinct copy of the same figure in another article counts as false too)."""
    if not outcomes:
        return 0.0
    false = sum(max((c for i, c in o.counts.items() if sha_of.get(i) != o.query.source_sha),
                    default=0) >= threshold for o in outcomes)
    return round(false / len(outcomes), 4)


def ocr_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """What query OCR cost and delivered: its time (ms, of the runs that finished before the
    next query) and the share of queries whose words were read within the budget."""
    ms = sorted(o.extra["ocr_ms"] for o in outcomes if o.extra["ocr_ms"] is not None)
    in_time = [o for o in outcomes if o.extra["ocr_words"] is not None]
    return {"n": len(outcomes), "ms_p50": round(statistics.median(ms), 1) if ms else None,
            "ms_p95": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1) if ms else None,
            "read_in_time_share": round(len(in_time) / max(1, len(outcomes)), 4),
            "words_median": statistics.median(o.extra["ocr_words"] for o in in_time)
            if in_time else None}


def warm_cache(service: SearchService) -> dict[str, float]:
    """Compute every stored image's features into the served cache; the cost per image."""
    settings = service.settings
    cache = source_match.feature_cache(settings.source_feature_cache)
    cache.clear()
    from sqlalchemy import text

    with service.store.engine.connect() as conn:
        ids = [int(r[0]) for r in conn.execute(text("SELECT id FROM figures WHERE has_image"))]
    rows = service.store.get_figures(ids)
    start = time.perf_counter()
    _found, tried = source_match.verify(
        source_match.LocalFeatures(*_empty_features()), list(rows.items()), settings.images_dir,
        cache, deadline=float("inf"))
    took = (time.perf_counter() - start) * 1000.0
    return {"images": tried, "ms_per_image": round(took / max(1, tried), 2),
            "cached": len(cache)}


def _empty_features() -> tuple[Any, Any, tuple[int, int]]:
    import numpy as np

    return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), (1, 1)


def run_pass(service: SearchService, queries: list[Query], k: int, label: str,
             cold: bool = False) -> list[Outcome]:
    """Every query once; ``cold`` empties the feature cache before each."""
    cache = source_match.feature_cache(service.settings.source_feature_cache)
    out = []
    for n, query in enumerate(queries, 1):
        if cold:
            cache.clear()
        out.append(run_query(service, query, k))
        if n % 100 == 0:
            print(f"  {label}: {n}/{len(queries)}", file=sys.stderr, flush=True)
    return out


def tuning_pass(service: SearchService, queries: list[Query], k: int) -> list[Outcome]:
    """The verified pass with every first-fit count of at least 1 recorded: no threshold, no
    conclusive stop and no re-matching (the sweep is over the first fit's inlier counts)."""
    saved = (source_match.MIN_INLIERS, source_match.CONCLUSIVE_INLIERS,
             source_match.REFINE_WEAK, source_match.REFINE_TOP)
    source_match.MIN_INLIERS, source_match.CONCLUSIVE_INLIERS = 1, 1 << 30
    source_match.REFINE_WEAK = source_match.REFINE_TOP = 0
    try:
        return run_pass(service, queries, k, "verified (tuning)")
    finally:
        (source_match.MIN_INLIERS, source_match.CONCLUSIVE_INLIERS,
         source_match.REFINE_WEAK, source_match.REFINE_TOP) = saved


def http_pass(data_dir: Path, queries: list[Query], sha_of: dict[int, str], k: int,
              port: int = 8917) -> dict[str, Any]:
    """The queries once through a real API server (uvicorn on loopback): latency and hit@1."""
    import httpx

    from figsearch.netutil import wait_for_http

    env = {**os.environ, "FIGSEARCH_DATA_DIR": str(data_dir), "FIGSEARCH_RATE_LIMIT_PER_MINUTE":
           "0", "FIGSEARCH_DEVICE": "cpu", "FIGSEARCH_RELOAD_INTERVAL_S": "600"}
    cmd = [sys.executable, "-m", "uvicorn", "figsearch.api.main:app_from_env", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=600, interval=0.5)
        ms: list[float] = []
        hits = 0
        verified_first = 0
        with httpx.Client(base_url=base, timeout=60) as client:
            for query in queries + queries:  # the first round fills the server's feature cache
                start = time.perf_counter()
                resp = client.post("/v1/search/image", params={"k": k},
                                   files={"image": ("q", query.data)})
                ms.append((time.perf_counter() - start) * 1000.0)
                resp.raise_for_status()
                top = resp.json()["results"][:1]
                hits += bool(top and sha_of.get(top[0]["id"]) == query.source_sha)
                verified_first += bool(top and any(s["name"] == "source"
                                                   for s in top[0]["signals"]))
        warm = sorted(ms[len(queries):])
        cold = sorted(ms[:len(queries)])
        return {"n": len(queries), "warm_p50_ms": round(statistics.median(warm), 1),
                "warm_p95_ms": round(warm[min(len(warm) - 1, int(0.95 * len(warm)))], 1),
                "first_round_p50_ms": round(statistics.median(cold), 1),
                "hit@1_both_rounds": round(hits / (2 * len(queries)), 4),
                "verified_first_share": round(verified_first / (2 * len(queries)), 4)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tune(outcomes: list[Outcome], sha_of: dict[int, str]) -> dict[str, Any]:
    """hit@1 over the goal's alterations and the false-source rate per inlier threshold."""
    goal = [o for o in outcomes if o.query.alteration in GOAL_ALTERATIONS]
    sweep = {}
    for t in THRESHOLDS:
        ranks = [source_rank(reranked(o, t), sha_of, o.query.source_sha) for o in goal]
        sweep[str(t)] = {"goal_hit@1": round(sum(r == 1 for r in ranks) / max(1, len(goal)), 4),
                         "all_hit@1": round(sum(
                             source_rank(reranked(o, t), sha_of, o.query.source_sha) == 1
                             for o in outcomes) / max(1, len(outcomes)), 4),
                         "false_source_rate": false_sources(outcomes, sha_of, t)}
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=("dev", "test", "all"), default="dev")
    parser.add_argument("--limit", type=int, default=0, help="figures at most (0 = all)")
    parser.add_argument("--cold", type=int, default=60,
                        help="queries re-run with an empty feature cache (0 = none)")
    parser.add_argument("--tune", action="store_true",
                        help="record every inlier count (threshold 1) and sweep thresholds")
    parser.add_argument("--http", type=int, default=0,
                        help="queries also sent through a real API server (0 = none)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--name", default="", help="result name (default source_eval_<split>)")
    args = parser.parse_args(argv)

    from figsearch.serving import open_current

    settings = Settings()
    opened = open_current(settings)
    service = opened.service
    try:
        from sqlalchemy import text

        with service.store.engine.connect() as conn:
            sha_of = {int(i): str(s) for i, s in conn.execute(
                text("SELECT id, sha256 FROM figures WHERE has_image AND sha256 IS NOT NULL"))}
        known = set(sha_of.values())
        sources = [s for s in shared_sources(args.shared, PANELS_PATH) if s.sha256 in known
                   and (args.split == "all" or s.split == args.split)]
        seen: set[str] = set()
        sources = [s for s in sources if not (s.sha256 in seen or seen.add(s.sha256))]
        if args.limit:
            sources = sources[:args.limit]
        queries = list(make_queries(sources))
        print(f"{len(sources)} figures, {len(queries)} queries", file=sys.stderr, flush=True)

        base = settings
        service.settings = base.model_copy(update={"source_verify": False})
        run_pass(service, queries[:5], args.k, "warm-up")  # model and page cache
        dense = run_pass(service, queries, args.k, "dense")
        service.settings = base
        features = warm_cache(service)
        threshold = source_match.MIN_INLIERS
        if args.tune:
            verified = tuning_pass(service, queries, args.k)
        else:
            verified = run_pass(service, queries, args.k, "verified")
        cold = run_pass(service, queries[:args.cold], args.k, "cold", cold=True)
        figures: dict[str, Any] = {
            "figures": len(sources), "queries": len(queries),
            "threshold_min_inliers": threshold,
            "dense": score(dense, sha_of, lambda o: o.ranking),
            "verified": score(verified, sha_of, lambda o: reranked(o, threshold),
                              settings.source_candidates),
            "cold": score(cold, sha_of, lambda o: o.ranking, settings.source_candidates)
            if cold else None,
            "false_source_rate": false_sources(verified, sha_of, threshold),
            "latency_dense": latency(dense), "latency_verified": latency(verified),
            "latency_cold": latency(cold) if cold else None,
            "candidates_tried_median": statistics.median(o.extra["tried"] for o in verified),
            "out_of_time_share": round(sum(o.extra["out_of_time"] for o in verified)
                                       / len(verified), 4),
            "cold_out_of_time_share": round(sum(o.extra["out_of_time"] for o in cold)
                                            / max(1, len(cold)), 4),
            "feature_extraction": features,
        }
        if settings.query_ocr:
            figures["query_ocr"] = ocr_summary(verified)
        if args.tune:
            figures["threshold_sweep"] = tune(verified, sha_of)
        if args.http:
            figures["http"] = http_pass(settings.data_dir, queries[:args.http], sha_of, args.k)
    finally:
        opened.close()
    params = {"command": "FIGSEARCH_DATA_DIR=" + str(settings.data_dir) + " python -m "
              "bench.source_eval " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "split": args.split, "k": args.k,
              "source_candidates": settings.source_candidates,
              "image_query_budget_ms": settings.image_query_budget_ms,
              "query_ocr": settings.query_ocr, "index_version": service.index_version}
    path = write_result(args.name or f"source_eval_{args.split}", params, figures)
    rows = [[name, r["n"], figures["dense"][name]["hit@1"], figures["dense"][name]["hit@10"],
             r["hit@1"], r["hit@10"], r["in_pool"]] for name, r in figures["verified"].items()]
    print(markdown_table(["alteration", "n", "dense hit@1", "dense hit@10", "verified hit@1",
                          "verified hit@10", "in pool"], rows))
    print(f"latency dense {figures['latency_dense']}, verified {figures['latency_verified']}, "
          f"cold {figures['latency_cold']}; false sources {figures['false_source_rate']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
