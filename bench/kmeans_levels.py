"""The coarse k-means in one level or two, on a CPU: training seconds and what the lists find.

The builder trains an IVF's lists with torch k-means (:mod:`indexer.gpu`); from
``TWO_LEVEL_MIN_LISTS`` lists on a CPU it runs two levels (``sqrt(k)`` clusters, each split by
its own k-means), because one level of 65,536 lists over its 2.56 M-point sample is hours on
two cores. This bench trains the same sample three ways, with the product's
:func:`indexer.gpu.train_index_on_device`: one level, two levels, and (the shortcut
``bench.vector_scale`` took before) centroids drawn from the data. Each trained quantizer is
filled with every vector into an ``IVF…,Flat`` index, so recall@10 against exact search measures
the lists alone (no codes, no re-ranking), at each ``--nprobe``; also the lists' imbalance
(faiss's factor: 1 = equal sizes).

    python -m bench.kmeans_levels --n 1000000 --lists 4096            # ~10 min on 2 cores
    python -m bench.kmeans_levels --n 20000 --lists 64 --queries 50   # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import faiss
import numpy as np
import torch

from bench.ann import make_data, recall_at_k
from bench.common import markdown_table, write_result
from indexer.build import normalise, training_size
from indexer.gpu import kmeans_score_dtype, train_index_on_device

K = 10
METHODS = ("one level", "two levels", "drawn")


def quantizer_of(method: str, sample: np.ndarray, lists: int, seed: int) -> tuple[Any, float]:
    """(trained ``IVF{lists},Flat`` inner-product index, training seconds)."""
    index = faiss.index_factory(sample.shape[1], f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    if method == "drawn":
        pick = np.random.default_rng(seed).choice(len(sample), lists, replace=False)
        faiss.extract_index_ivf(index).quantizer.add(sample[np.sort(pick)])
        index.train(sample)  # quantizer full: nothing left to train
    else:
        train_index_on_device(index, sample, "cpu", seed=seed,
                              levels=1 if method == "one level" else 2)
    return index, time.perf_counter() - t0


def imbalance(index: Any) -> float:
    """faiss's imbalance factor of the filled lists (sum of squared sizes · k / n²)."""
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.float64)
    return float((sizes ** 2).sum() * ivf.nlist / max(sizes.sum(), 1) ** 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    base, queries = make_data(args.n, args.dim, args.queries, seed=args.seed,
                              intrinsic=args.intrinsic_dim)
    _, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    size = min(args.n, training_size(args.n, f"IVF{args.lists},Flat"))
    rows = np.sort(np.random.default_rng(args.seed).choice(args.n, size, replace=False))
    sample = normalise(base[rows])
    figures: dict[str, Any] = {"training_points": size,
                               "score_dtype": str(kmeans_score_dtype("cpu"))}
    for method in METHODS:
        if method == "one level" and args.skip_one_level:
            continue
        index, seconds = quantizer_of(method, sample, args.lists, args.seed)
        index.add(base)
        key = method.replace(" ", "_")
        figures[f"{key}_train_s"] = round(seconds, 1)
        figures[f"{key}_imbalance"] = round(imbalance(index), 3)
        for nprobe in args.nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
            found = index.search(queries, K)[1]
            figures[f"{key}_recall_at_10_nprobe{nprobe}"] = round(recall_at_k(found, truth), 4)
        print(f"kmeans_levels: {method}: {seconds:.1f} s", file=sys.stderr, flush=True)
        del index
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--lists", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--intrinsic-dim", type=int, default=32)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-one-level", action="store_true",
                   help="only two levels and drawn (one level of many lists is hours)")
    p.add_argument("--name", default="kmeans_levels")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    figures = run(args)
    params = {"n": args.n, "lists": args.lists, "dim": args.dim,
              "intrinsic_dim": args.intrinsic_dim, "queries": args.queries, "k": K,
              "nprobe": args.nprobe, "torch_threads": torch.get_num_threads(),
              "load_before": [round(x, 1) for x in load_before],
              "load_after": [round(x, 1) for x in os.getloadavg()],
              "command": "python -m bench.kmeans_levels " + " ".join(argv or sys.argv[1:])}
    rows = []
    for method in METHODS:
        key = method.replace(" ", "_")
        if f"{key}_train_s" in figures:
            rows.append([method, figures[f"{key}_train_s"], figures[f"{key}_imbalance"],
                         *[figures[f"{key}_recall_at_10_nprobe{p}"] for p in args.nprobe]])
    print(markdown_table(["coarse centroids", "train s", "imbalance",
                          *[f"recall@10, nprobe {p}" for p in args.nprobe]], rows))
    path = write_result(args.name, params, figures)
    print(f"kmeans_levels: {args.n:,} vectors, {args.lists} lists, "
          f"{figures['training_points']:,} training points, {time.perf_counter() - t0:.0f} s; "
          f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
