"""Filtered dense search: which plan is fastest at which selectivity (``SearchIndex.search``).

Builds a real index version (``indexer.build.build_version``, the size rule's factory unless
``--factory``) over ``--n`` clustered unit vectors, then for allowed sets of several
selectivities (random figures, as ``figsearch.columns.AllowedSet``) times single queries with
each plan forced: ``exact`` (brute force over the allowed rows' stored vectors), ``bitmap``
(``IDSelectorBitmap`` + the wider-probe loop) and ``postfilter`` (deeper unfiltered search,
allowed hits kept), plus recall@k against exact search over the subset. The crossover picks
``figsearch.index.POSTFILTER_MIN``. Writes ``bench/results/filter_plans.json``.

    .venv/bin/python -m bench.filter_plans --n 200000
    .venv/bin/python -m bench.filter_plans --n 20000 --queries 5     # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402

SELECTIVITIES = (0.9, 0.75, 0.6, 0.4, 0.25, 0.1, 0.05, 0.01, 0.001)
PLANS = ("exact", "bitmap", "postfilter")


def clustered(n: int, dim: int, seed: int = 0, centers: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = c[rng.integers(0, centers, m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def force(plan: str, n: int, defaults: tuple[int, float]) -> None:
    """Module thresholds so that every allowed set takes ``plan`` (``default``: the shipped
    thresholds choose)."""
    import figsearch.index as index_mod

    if plan == "default":
        index_mod.EXACT_SUBSET_MAX, index_mod.POSTFILTER_MIN = defaults
        return
    index_mod.EXACT_SUBSET_MAX = n if plan == "exact" else 0
    index_mod.POSTFILTER_MIN = 0.0 if plan == "postfilter" else 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--factory", default=None)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--k", type=int, default=30, help="the service's depth for a page of 10")
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--tmp", default=None)
    p.add_argument("--plans", default=",".join(PLANS),
                   help=f"comma-separated, of {', '.join(PLANS)}, default (the shipped rule)")
    p.add_argument("--selectivities", default=",".join(map(str, SELECTIVITIES)))
    p.add_argument("--name", default="filter_plans", help="result file name")
    args = p.parse_args(argv)
    plans = args.plans.split(",")
    selectivities = [float(x) for x in args.selectivities.split(",")]
    import faiss

    import figsearch.index as index_mod
    from figsearch.columns import AllowedSet
    from figsearch.index import SearchIndex
    from indexer.build import build_version

    faiss.omp_set_num_threads(1)  # the API answers each query on one thread
    defaults = (index_mod.EXACT_SUBSET_MAX, index_mod.POSTFILTER_MIN)
    base = clustered(args.n, args.dim)
    ids = np.arange(args.n, dtype=np.int64) * 2 + 1  # gaps, as real ids have
    queries = clustered(args.queries, args.dim, seed=7)
    figures: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        version = build_version(Path(tmp), base, ids, model_spec="bench", model_key="bench",
                                factory=args.factory, use_gpu=False)
        figures["build_s"] = round(time.perf_counter() - t0, 1)
        idx = SearchIndex.load(version, nprobe=args.nprobe)
        figures["factory"] = idx.factory
        print(f"filter_plans: {idx.factory} over {args.n:,} x {args.dim} built in "
              f"{figures['build_s']} s", file=sys.stderr, flush=True)
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            idx.search(q, args.k)
            lat.append(time.perf_counter() - t0)
        figures["unfiltered p50_ms"] = round(float(np.median(lat)) * 1e3, 3)
        rng = np.random.default_rng(3)
        for sel in selectivities:
            mask = rng.random(args.n) < sel
            truth_rows = np.flatnonzero(mask)
            truth = ids[truth_rows][np.argsort(-(queries @ base[truth_rows].T), axis=1)[:, :10]]
            row = [f"{sel:g}", int(mask.sum())]
            for plan in plans:
                if plan == "exact" and mask.sum() > 60_000:  # seconds per query: not a contender
                    row.append("-")
                    continue
                force(plan, args.n, defaults)
                allowed = AllowedSet(ids, mask, args.n)  # a fresh set: nothing cached
                t0 = time.perf_counter()
                chosen = idx.plan(allowed)
                assert plan == "default" or chosen == plan
                if plan == "default":
                    figures[f"sel {sel:g} default plan"] = chosen
                setup = time.perf_counter() - t0
                lat, hits = [], 0
                for qi, q in enumerate(queries):
                    t0 = time.perf_counter()
                    _s, got = idx.search(q, args.k, allowed_ids=allowed)
                    lat.append(time.perf_counter() - t0)
                    assert allowed.contains(got[0][got[0] >= 0]).all()
                    hits += len(set(got[0][:10].tolist()) & set(truth[qi].tolist()))
                p50 = float(np.median(lat)) * 1e3
                recall = hits / (10 * len(queries))
                figures[f"sel {sel:g} {plan} p50_ms"] = round(p50, 3)
                figures[f"sel {sel:g} {plan} p90_ms"] = round(float(np.quantile(lat, 0.9)) * 1e3, 3)
                figures[f"sel {sel:g} {plan} recall@10"] = round(recall, 4)
                figures[f"sel {sel:g} {plan} setup_ms"] = round(setup * 1e3, 3)
                row.append(f"{p50:.2f} ms / {recall:.3f}")
                print(f"filter_plans: selectivity {sel:g} {plan}: p50 {p50:.2f} ms, recall@10 "
                      f"{recall:.3f}, setup {setup * 1e3:.1f} ms", file=sys.stderr, flush=True)
            rows.append(row)
    index_mod.EXACT_SUBSET_MAX, index_mod.POSTFILTER_MIN = defaults
    print(markdown_table(["selectivity", "allowed", *[f"{p} p50 / recall@10" for p in plans]],
                         rows))
    path = write_result(args.name, {"n": args.n, "dim": args.dim, "k": args.k,
                                    "nprobe": args.nprobe, "queries": args.queries,
                                    "selectivities": selectivities, "plans": plans,
                                         "note": "one thread; 2 CPU cores shared with other jobs"},
                        figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
