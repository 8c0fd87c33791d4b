"""The index build as the product does it, at one size: wall time per stage and recall@10.

Vectors: :func:`bench.ann.make_data`'s Gaussian mixture (``--intrinsic-dim 32`` puts the noise
in a 32-dim subspace, like real embeddings). The index is built by
:func:`indexer.build.build_version` (factory from :func:`figsearch.index.choose_factory` unless
``--factory``; training where ``FIGSEARCH_INDEX_GPU_TRAINING`` would put it, or ``--device``),
its ``train`` / ``add`` / ``write`` seconds come from the manifest, and recall@10 against exact
search is measured through :class:`figsearch.index.SearchIndex` loaded and searched with the
API's settings (``FIGSEARCH_NPROBE``, ``FIGSEARCH_RERANK``, ``FIGSEARCH_RERANK_FACTOR``,
``FIGSEARCH_INDEX_MMAP``), one query at a time as requests arrive. Writes
``bench/results/<--name>.json`` (default ``index_build``); the load average before and after
the run goes into the parameters (the machine is shared).

    .venv/bin/python -m bench.index_build --n 1000000 --intrinsic-dim 32   # ~5 min on 2 cores
    .venv/bin/python -m bench.index_build --n 20000 --queries 50            # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann import make_data, recall_at_k  # noqa: E402
from bench.common import markdown_table, write_result  # noqa: E402
from figsearch.core.config import Settings  # noqa: E402
from figsearch.index import INDEX_FILE, VECTORS_FILE, SearchIndex, image_budget  # noqa: E402
from indexer.build import build_version  # noqa: E402

K = 10


def search_like_api(vdir: Path, queries: np.ndarray, settings: Settings
                    ) -> tuple[np.ndarray, float]:
    """(top-k rows, mean ms per query) searching one query at a time with the API's settings."""
    index = SearchIndex.load(vdir, nprobe=settings.nprobe, mmap_index=settings.index_mmap)
    found = np.empty((len(queries), K), np.int64)
    t0 = time.perf_counter()
    for i, q in enumerate(queries):
        found[i] = index.search(q[None, :], K, rerank=settings.rerank,
                                rerank_factor=settings.rerank_factor)[1][0]
    return found, (time.perf_counter() - t0) * 1000 / max(len(queries), 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Data, exact truth, one product build, recall; the figures dict."""
    t0 = time.perf_counter()
    base, queries = make_data(args.n, args.dim, args.queries, seed=args.seed,
                              intrinsic=args.intrinsic_dim)
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t0
    print(f"data {data_s:.0f}s, exact top-{K} of {args.queries} queries {exact_s:.0f}s",
          file=sys.stderr, flush=True)
    settings = Settings()
    cpu = {"start": time.process_time()}  # CPU seconds of all threads: "on 2 cores" = cpu / 2

    def hook(stage: str) -> None:
        cpu[stage] = time.process_time()

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="index-build-") as tmp:
        t0 = time.perf_counter()
        vdir = build_version(Path(tmp), base, np.arange(args.n), model_spec="bench",
                             model_key="bench", factory=args.factory,
                             memory_gb=image_budget(settings.index_memory_gb), keep=0,
                             use_gpu=args.device or settings.index_gpu_training,
                             train_size=args.train_size, hook=hook)
        wall = time.perf_counter() - t0
        del base
        found, ms = search_like_api(vdir, queries, settings)
        manifest = SearchIndex.load(vdir).manifest
        sizes = {name: (vdir / name).stat().st_size / 2**20 for name in (INDEX_FILE, VECTORS_FILE)}
    stages = manifest["build_stages_s"]
    return {
        "factory": manifest["factory"], "training": manifest["training"],
        "training_size": manifest["training_size"], "build_wall_s": round(wall, 1),
        "train_s": stages["train"], "add_s": stages["add"], "write_s": stages["write"],
        "build_s": stages["total"], "train_cpu_s": round(cpu["trained"] - cpu["start"], 1),
        "add_write_cpu_s": round(cpu["written"] - cpu["trained"], 1), "recall_at_10": round(recall_at_k(found, truth), 4),
        "query_ms": round(ms, 2), "index_mb": round(sizes[INDEX_FILE], 1),
        "vectors_mb": round(sizes[VECTORS_FILE], 1), "nprobe": settings.nprobe,
        "rerank": settings.rerank, "rerank_factor": settings.rerank_factor,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--intrinsic-dim", type=int, default=32,
                   help="noise in an r-dim subspace (bench.ann); 0 = isotropic")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factory", default=None, help="default: choose_factory")
    p.add_argument("--train-size", type=int, default=None, help="default: training_size")
    p.add_argument("--device", default=None,
                   help="k-means device (auto|on|off or a torch device such as cpu); "
                        "default FIGSEARCH_INDEX_GPU_TRAINING")
    p.add_argument("--tmp", default=None, help="scratch directory for the index version")
    p.add_argument("--name", default="index_build", help="bench/results/<name>.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    figures = run(args)
    load_after = os.getloadavg()
    params = {"n": args.n, "dim": args.dim, "intrinsic_dim": args.intrinsic_dim, "k": K,
              "queries": args.queries, "factory": figures["factory"], "device": args.device,
              "train_size": args.train_size, "threads": faiss.omp_get_max_threads(),
              "load_before": [round(x, 1) for x in load_before],
              "load_after": [round(x, 1) for x in load_after]}
    print(markdown_table(
        ["n", "factory", "k-means", "train s", "add s", "write s", "build_version s",
         f"recall@{K}", "ms/query"],
        [[f"{args.n:,}", figures["factory"], figures["training"], figures["train_s"],
          figures["add_s"], figures["write_s"], figures["build_wall_s"],
          figures["recall_at_10"], figures["query_ms"]]]))
    path = write_result(args.name, params, figures)
    print(f"index build: {args.n:,} vectors, {figures['factory']}: {figures['build_s']:.1f}s "
          f"(train {figures['train_s']:.1f}, add {figures['add_s']:.1f}, write "
          f"{figures['write_s']:.1f}; CPU s: train {figures['train_cpu_s']:.0f}, add+write "
          f"{figures['add_write_cpu_s']:.0f}), recall@{K} {figures['recall_at_10']:.4f} at nprobe "
          f"{figures['nprobe']}, {figures['query_ms']:.2f} ms/query; load "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
