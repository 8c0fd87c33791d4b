"""ANN benchmark: each index family the factory rule can choose, with and without exact
re-ranking, against exact flat search and hnswlib HNSW.

Data: clustered (Gaussian-mixture) unit vectors, so recall numbers mean something; queries are
perturbed held-out points of the same mixture. Indexes are built through the product's own
builder (:func:`indexer.build.build_version`) and searched through
:class:`figsearch.index.SearchIndex` (re-ranking from the memory-mapped float16 vectors).

Measured per (n, family, rerank): recall@10 vs exact, queries/s batched and one at a time,
build time (train + add + write), index bytes per vector. Writes ``bench/results/ann.json``.

    .venv/bin/python -m bench.ann                       # 100k and 1M (~15 min on 2 cores)
    .venv/bin/python -m bench.ann --sizes 2000 --quick  # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402
from figsearch.index import (  # noqa: E402
    HNSW_COARSE,
    INDEX_FILE,
    SearchIndex,
    choose_factory,
    coarse_quantizer,
    ivf_lists,
)
from indexer.build import build_version  # noqa: E402

K = 10


def mixture(n: int, dim: int, centers: np.ndarray, rng: np.random.Generator,
            spread: float = 0.6, basis: np.ndarray | None = None) -> np.ndarray:
    """n unit vectors around random centers: noise of total norm ~spread, isotropic, or in
    the span of ``basis`` (dim x r, low intrinsic dimension like real embeddings) plus 10%."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centers[rng.integers(0, len(centers), m)]
        if basis is None:
            x = x + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        else:
            r = basis.shape[1]
            z = rng.standard_normal((m, r), dtype=np.float32) * (spread / np.sqrt(r))
            x = x + z @ basis.T + rng.standard_normal((m, dim), dtype=np.float32) * (
                0.1 * spread / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(n: int, dim: int, nq: int, seed: int = 0,
              intrinsic: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries): queries are held-out mixture points perturbed a little more."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(100, n // 1000), dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis = None
    if intrinsic:
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32)
    base = mixture(n, dim, centers, rng, basis=basis)
    held_out = mixture(nq, dim, centers, rng, basis=basis)
    q = held_out + rng.standard_normal(held_out.shape, dtype=np.float32) * (0.2 / np.sqrt(dim))
    return base, q / np.linalg.norm(q, axis=1, keepdims=True)


def families(n: int, dim: int, max_nlist: int, memory_gb: float,
             pq_sizes: tuple[int, ...] = ()) -> dict[str, str]:
    """Label -> factory for every family the rule can choose at this n (IVF lists capped), plus
    ``IVF-PQ<m>`` for each PQ code size in ``pq_sizes`` (bytes per vector: what a smaller RAM
    budget makes the rule pick)."""
    k = min(ivf_lists(n), max_nlist)
    coarse = coarse_quantizer(k)
    m = 64 if dim >= 512 else max(dim // 8, 1)  # 8-d sub-vectors, PQ64 at 512-d
    out = {
        "Flat": "Flat",
        "IVF-Flat": f"{coarse},Flat",
        "IVF-PQ": f"{coarse},PQ{m}",
        "OPQ-IVF-HNSW-PQ": f"OPQ{m},IVF{k}({HNSW_COARSE}),PQ{m}",  # the rule's from 10 M
        "rule": choose_factory(n, dim, memory_gb),
    }
    out.update({f"IVF-PQ{size}": f"{coarse},PQ{size}" for size in pq_sizes})
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def time_queries(search: Any, queries: np.ndarray, singles: int) -> tuple[float, float, np.ndarray]:
    """(batched q/s, single-query q/s, batched results)."""
    t0 = time.perf_counter()
    found = search(queries)
    batched = len(queries) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in queries[:singles]:
        search(q[None, :])
    single = singles / (time.perf_counter() - t0)
    return batched, single, found


def bench_family(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, factory: str,
                 nprobe: int, singles: int, workdir: Path,
                 train_size: int | None = None) -> list[dict[str, Any]]:
    """Build one index version and measure it with and without re-ranking."""
    n = len(base)
    vdir = build_version(workdir, base, np.arange(n), model_spec="bench", model_key="bench",
                         factory=factory, keep=0, train_size=train_size)
    index = SearchIndex.load(vdir, nprobe=nprobe)
    rows = []
    for rerank in ([False, True] if index.compressed else [False]):
        def search(q: np.ndarray, rerank: bool = rerank) -> np.ndarray:
            return index.search(q, K, rerank=rerank, rerank_factor=10)[1]

        batched, single, found = time_queries(search, queries, singles)
        rows.append({
            "factory": factory, "rerank": rerank, "recall": recall_at_k(found, truth),
            "qps_batch": batched, "qps_single": single,
            "build_s": float(index.manifest["build_seconds"]),
            "bytes_per_vector": (vdir / INDEX_FILE).stat().st_size / n,
        })
    return rows


def bench_hnswlib(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, singles: int,
                  m: int, ef_construction: int, ef_search: int) -> dict[str, Any]:
    """hnswlib HNSW (inner product) as the outside reference."""
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=0)
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - t0
    index.set_ef(ef_search)
    batched, single, found = time_queries(lambda q: index.knn_query(q, k=K)[0], queries, singles)
    with tempfile.NamedTemporaryFile() as fh:
        index.save_index(fh.name)
        size = Path(fh.name).stat().st_size
    return {"factory": f"hnswlib M{m} efC{ef_construction} ef{ef_search}", "rerank": False,
            "recall": recall_at_k(found, truth), "qps_batch": batched, "qps_single": single,
            "build_s": build, "bytes_per_vector": size / len(base)}


def run_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    base, queries = make_data(n, args.dim, args.queries, seed=n, intrinsic=args.intrinsic_dim)
    _, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    rows = []
    seen: set[str] = set()
    pq_sizes = tuple(int(m) for m in args.pq_sizes.split(",") if m)
    for label, factory in families(n, args.dim, args.max_nlist, args.memory_gb,
                                   pq_sizes).items():
        if factory in seen or (args.families and label not in args.families):
            continue
        seen.add(factory)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            for row in bench_family(base, queries, truth, factory, args.nprobe,
                                    args.singles, Path(tmp), args.train_size):
                rows.append({"n": n, "family": label, **row})
                print(_row_text(rows[-1]), file=sys.stderr, flush=True)
    if n <= args.hnsw_max_n:
        row = bench_hnswlib(base, queries, truth, args.singles, args.hnsw_m, args.hnsw_efc, args.hnsw_ef)
        rows.append({"n": n, "family": "hnswlib", **row})
        print(_row_text(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _row_text(r: dict[str, Any]) -> str:
    return (f"n={r['n']} {r['family']} {r['factory']} rerank={r['rerank']}: recall {r['recall']:.3f}, "
            f"{r['qps_batch']:.0f} q/s batched, {r['qps_single']:.0f} q/s single, "
            f"build {r['build_s']:.1f}s, {r['bytes_per_vector']:.0f} B/vec")


def figures_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat figures dict; headline keys describe the IVF-PQ + re-rank target at the largest n."""
    out: dict[str, Any] = {}
    for r in rows:
        tag = f"{r['n']} {r['family']}{' rerank' if r['rerank'] else ''}"
        for key in ("recall", "qps_batch", "qps_single", "build_s", "bytes_per_vector"):
            out[f"{tag} {key}"] = round(float(r[key]), 4)
    top = max(r["n"] for r in rows)
    target = [r for r in rows if r["n"] == top and r["rerank"]] or [r for r in rows if r["n"] == top]
    head = target[-1]
    out.update({
        "recall_at_10": round(head["recall"], 4), "bytes_per_vector": round(head["bytes_per_vector"], 2),
        "build_s": round(head["build_s"], 3), "build_s_per_vector": head["build_s"] / top,
        "query_p50_ms": round(1000 / head["qps_single"], 3), "headline": head["factory"],
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated database sizes")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--intrinsic-dim", type=int, default=0,
                   help="noise in an r-dim subspace (real embeddings' low intrinsic dimension); "
                        "0 = isotropic in all dims (hardest for PQ)")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batched q/s")
    p.add_argument("--singles", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--max-nlist", type=int, default=1024,
                   help="cap on IVF lists of the IVF-Flat/IVF-PQ rows (the rule row uses its own; "
                        "bench/index_build.py times the rule at 1M)")
    p.add_argument("--train-size", type=int, default=None,
                   help="training sample (default: the builder's rule; PQ64 training is slow on 2 cores)")
    p.add_argument("--memory-gb", type=float, default=16.0, help="budget given to the rule")
    p.add_argument("--families", nargs="*", help="only these family labels")
    p.add_argument("--pq-sizes", default="",
                   help="also IVF-PQ<m> families of these code sizes (e.g. 16,32,64)")
    p.add_argument("--hnsw-max-n", type=int, default=200_000, help="skip hnswlib above this n")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--hnsw-efc", type=int, default=100)
    p.add_argument("--hnsw-ef", type=int, default=128)
    p.add_argument("--tmp", default=None, help="scratch directory for index versions")
    p.add_argument("--quick", action="store_true", help="tiny smoke settings")
    p.add_argument("--name", default="ann",
                   help="result name: bench/results/<name>.json (e.g. ann_opq for the 15 M family)")
    args = p.parse_args(argv)
    if args.quick:
        args.queries, args.singles, args.dim, args.hnsw_efc = 50, 20, 64, 40
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[dict[str, Any]] = []
    for n in sizes:  # the result is rewritten after each size, so a long run keeps what it has
        rows += run_size(n, args)
        done = sorted({r["n"] for r in rows})
        figures = figures_of(rows)
        params = {"sizes": done, "n": max(done), "dim": args.dim, "k": K, "queries": args.queries,
                  "nprobe": args.nprobe, "intrinsic_dim": args.intrinsic_dim, "max_nlist": args.max_nlist, "train_size": args.train_size,
                  "factory": figures["headline"], "rerank_factor": 10,
                  "hnsw": [args.hnsw_m, args.hnsw_efc, args.hnsw_ef], "hnsw_max_n": args.hnsw_max_n,
                  "families": args.families, "pq_sizes": args.pq_sizes,
                  "threads": faiss.omp_get_max_threads()}
        path = write_result(args.name, params, figures)
    print(markdown_table(
        ["n", "family", "factory", "rerank", "recall@10", "q/s batched", "q/s single", "build s", "B/vector"],
        [[r["n"], r["family"], r["factory"], "yes" if r["rerank"] else "no", f"{r['recall']:.3f}",
          f"{r['qps_batch']:.0f}", f"{r['qps_single']:.0f}", f"{r['build_s']:.1f}",
          f"{r['bytes_per_vector']:.1f}"] for r in rows]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
