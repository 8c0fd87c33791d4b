"""Caption passages (MaxP): how deep the passage search must re-rank, measured against the
exact MaxP ranking.

A MaxP search (:class:`figsearch.caption_index.PassageIndex`) searches the whole captions (k
figures, re-ranked ``rerank_factor`` deep) and the passages (2k, re-ranked
``part_rerank_share`` of that depth), then scores every candidate figure exactly by its best
vector. The passage search's re-ranking therefore only decides which passages name
candidates. This bench asks how much of it the ranking needs: for each share, the overlap of
the top 20 and top 100 with the exact MaxP ranking (every figure scored by its best vector,
found by brute force), the vector rows each query reads, and its time.

Data: clustered unit vectors of low intrinsic dimension (:func:`bench.ann.mixture`). Each
figure has 0-8 passages (~3.5 a figure, as long JATS captions have 3.25) drawn around a topic
of its own; its whole-caption vector is the normalised sum of its passages and its topic.
Half of the queries are perturbed passages (a query about one part of a caption), half
perturbed whole captions. The indexes are the product's (``indexer.build.build_version``,
``{coarse_quantizer(k)},PQ16``, the code size 15 M captions get) searched through the product's MaxP layer.

    python -m bench.passage_rerank --n 300000 --name passage_rerank_300k
    python -m bench.passage_rerank --n 1000000 --name passage_rerank_1m   # ~14 GB RAM
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann import mixture  # noqa: E402
from bench.common import markdown_table, write_result  # noqa: E402
from figsearch.caption_index import PASSAGE_SLOTS, PassageIndex  # noqa: E402
from figsearch.index import SearchIndex, coarse_quantizer, ivf_lists  # noqa: E402
from indexer.build import build_version  # noqa: E402

K = 100  # what the default query fetches per signal (fusion_depth)
PASSAGES_PER_FIGURE = [0, 0, 2, 3, 4, 5, 6, 8]  # drawn uniformly: ~3.5 a figure
CHUNK = 200_000


class PassageData:
    """Whole-caption and passage vectors of ``n`` synthetic figures, and queries."""

    def __init__(self, n: int, dim: int, intrinsic: int, queries: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((max(100, n // 1000), dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32)
        topic = mixture(n, dim, centers, rng, basis=basis)
        counts = rng.choice(PASSAGES_PER_FIGURE, n)
        owner = np.repeat(np.arange(n), counts)
        self.parts = np.empty((len(owner), dim), np.float32)
        for start in range(0, len(owner), CHUNK):  # in chunks: 3.5 M x 384 floats are 5 GB
            rows = owner[start : start + CHUNK]
            x = topic[rows] + (rng.standard_normal((len(rows), intrinsic), dtype=np.float32)
                               * (0.5 / np.sqrt(intrinsic))) @ basis.T
            x += rng.standard_normal(x.shape, dtype=np.float32) * (0.05 / np.sqrt(dim))
            self.parts[start : start + CHUNK] = x / np.linalg.norm(x, axis=1, keepdims=True)
        sums = np.zeros_like(topic)
        np.add.at(sums, owner, self.parts)
        whole = topic + sums + rng.standard_normal(topic.shape, dtype=np.float32) * (
            0.1 / np.sqrt(dim))
        self.whole = whole / np.linalg.norm(whole, axis=1, keepdims=True)
        self.ids = np.arange(n, dtype=np.int64) * 3 + 7  # sparse, like store row ids
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        self.keys = self.ids[owner] * PASSAGE_SLOTS + slot
        half = queries // 2
        near = np.vstack([self.parts[rng.integers(0, len(owner), half)],
                          self.whole[rng.integers(0, n, queries - half)]])
        near += rng.standard_normal(near.shape, dtype=np.float32) * (0.6 / np.sqrt(dim))
        self.queries = near / np.linalg.norm(near, axis=1, keepdims=True)


def exact_maxp(data: PassageData, k: int) -> np.ndarray:
    """The exact MaxP top k figure ids per query. A figure of the top k scores at least the
    k-th score, and so does its best vector: that vector is among the k nearest whole
    captions or the k x 8 nearest passages (a figure has 8 at most), found by brute force."""
    s_whole, r_whole = faiss.knn(data.queries, data.whole, k, metric=faiss.METRIC_INNER_PRODUCT)
    depth = k * max(PASSAGES_PER_FIGURE)
    s_part, r_part = faiss.knn(data.queries, data.parts, depth,
                               metric=faiss.METRIC_INNER_PRODUCT)
    truth = np.empty((len(data.queries), k), np.int64)
    for q in range(len(data.queries)):
        best: dict[int, float] = {}
        for fid, score in zip([*data.ids[r_whole[q]].tolist(),
                               *(data.keys[r_part[q]] // PASSAGE_SLOTS).tolist()],
                              [*s_whole[q].tolist(), *s_part[q].tolist()], strict=True):
            best[fid] = max(score, best.get(fid, -np.inf))
        truth[q] = [f for f, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
    return truth


class CountedRows:
    """An index's row file, counting the rows read."""

    def __init__(self, rows: Any) -> None:
        self.rows, self.read = rows, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: Any) -> np.ndarray:
        self.read += int(np.asarray(rows).size)
        return self.rows[rows]  # type: ignore[no-any-return]


@contextmanager
def counted_rows(indexes: Mapping[str, Any]) -> Iterator[dict[str, CountedRows]]:
    """Each index's row file swapped for a :class:`CountedRows` over it while the block
    runs (put back after): {name: its counter}."""
    counted = {name: CountedRows(index.vectors) for name, index in indexes.items()}
    for name, index in indexes.items():
        index.vectors = counted[name]
    try:
        yield counted
    finally:
        for name, index in indexes.items():
            index.vectors = counted[name].rows


def pq16_factory(n: int) -> str:
    """The IVF-PQ16 family 15 M captions and their passages get, at this size."""
    return f"{coarse_quantizer(ivf_lists(n))},PQ16"


def measure_share(layer: PassageIndex, data: PassageData, truth: np.ndarray, share: float,
                  rerank_factor: int) -> dict[str, Any]:
    """Overlap with the exact top 20 / top 100, rows read and time per query at ``share``."""
    layer.part_rerank_share = share
    at20 = at100 = 0.0
    times = []
    with counted_rows({"whole": layer.whole, "parts": layer.parts}) as counted:
        for q, want in zip(data.queries, truth, strict=True):
            t0 = time.perf_counter()
            _s, found = layer.search(q[None, :], K, rerank_factor=rerank_factor)
            times.append((time.perf_counter() - t0) * 1000)
            at20 += len(set(found[0, :20].tolist()) & set(want[:20].tolist())) / 20
            at100 += len(set(found[0].tolist()) & set(want.tolist())) / K
    nq = len(data.queries)
    return {"share": share, "part_rerank_factor": layer.part_rerank_factor(rerank_factor),
            "recall_at_20": round(at20 / nq, 4), "recall_at_100": round(at100 / nq, 4),
            "rows_per_query": round(sum(c.read for c in counted.values()) / nq, 1),
            "p50_ms": round(float(np.percentile(times, 50)), 2)}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    t0 = time.perf_counter()
    data = PassageData(args.n, args.dim, args.intrinsic_dim, args.queries)
    truth = exact_maxp(data, K)
    print(f"passage_rerank: {args.n} figures, {len(data.keys)} passages, exact MaxP in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        indexes = {}
        for name, vectors, ids in (("whole", data.whole, data.ids),
                                   ("parts", data.parts, data.keys)):
            version = build_version(Path(tmp) / name, vectors, ids, model_spec="bench",
                                    model_key="bench", factory=pq16_factory(len(ids)), keep=0)
            indexes[name] = SearchIndex.load(version, nprobe=args.nprobe)
        layer = PassageIndex(indexes["whole"], indexes["parts"])
        rows = [measure_share(layer, data, truth, share, args.rerank_factor)
                for share in args.shares]
    params = {"n": args.n, "passages": int(len(data.keys)), "dim": args.dim,
              "intrinsic_dim": args.intrinsic_dim, "queries": args.queries, "k": K,
              "nprobe": args.nprobe, "rerank_factor": args.rerank_factor,
              "factories": [pq16_factory(args.n), pq16_factory(len(data.keys))]}
    return params, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300_000, help="figures")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--intrinsic-dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--rerank-factor", type=int, default=10, help="the whole captions' depth")
    ap.add_argument("--shares", type=lambda s: [float(x) for x in s.split(",")],
                    default=[1.0, 0.5, 0.3, 0.1],
                    help="passage re-ranking depths to compare (share of --rerank-factor)")
    ap.add_argument("--tmp", default=None, help="scratch directory for the index versions")
    ap.add_argument("--name", default="passage_rerank")
    args = ap.parse_args(argv)
    params, rows = run(args)
    print(markdown_table(["share", "passage re-rank factor", "top-20 overlap with exact",
                          "top-100 overlap", "rows a query", "p50 ms"],
                         [[r["share"], r["part_rerank_factor"], r["recall_at_20"],
                           r["recall_at_100"], r["rows_per_query"], r["p50_ms"]] for r in rows]))
    figures = {f"share_{r['share']:g}_{key}": value for r in rows for key, value in r.items()
               if key != "share"}
    path = write_result(args.name, {**params, "shares": args.shares}, figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
