"""One vector index at PMC size (15 M rows), measured through the product's ``SearchIndex``.

``bench.pmc_scale`` builds whole data dirs, which stop at 1 M here (disk and hours). The
factory rule changes family at 10 M (``OPQ{m},IVF65536_HNSW32,PQ{m}``), so the 1 M runs
say nothing about the index a 15 M version serves. This bench builds that index alone, in a
version directory ``SearchIndex.load`` opens, from clustered unit vectors written chunk by
chunk (never the whole set in RAM), and measures what a query pays for it:

* top-k search with exact re-ranking (k = ``fusion_depth``, what a hybrid query fetches from
  each vector signal) and recall@10 against exact search over the stored vectors;
* filtered search at three selectivities (the plans ``bitmap``, ``bitmap`` and ``exact``), with
  the first use of each filter (row mask and selector) timed apart;
* resident memory after loading and after the queries, anonymous and file-backed.

One shortcut, said in the results: the 65,536 coarse centroids are drawn from the data
instead of trained by k-means (the builder's k-means over 2.5 M points is hours on two
cores, minutes on a GPU). List sizes, and so the cost of a probe, are those of the data.

    python -m bench.vector_scale build --dir /work/bench-data/vec-15m --n 15000000
    python -m bench.vector_scale measure --dir /work/bench-data/vec-15m --name vector_scale_15m

``float16-quantizer`` writes a copy of a built version whose HNSW coarse quantizer holds the
same centroids in float16, as the factory rule now builds it (``IVF65536(HNSW32_SQfp16)``),
in seconds instead of the hours of a 15 M build; the ids and vectors are hard links. The
lists' codes stay those encoded against the float32 centroids (a build encodes against the
float16 ones), so the copy measures the quantizer's memory and speed, and its agreement with
the float32 one, not a rebuild:

    python -m bench.vector_scale float16-quantizer --dir /work/bench-data/vec-15m-twolevel --out /work/bench-data/vec-15m-fp16q
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from bench.common import print_figures, process_memory_mb, write_result
from figsearch.columns import AllowedSet, VersionColumns
from figsearch.datadir import MANIFEST_FILE
from figsearch.index import (
    IDS_FILE,
    INDEX_FILE,
    VECTORS_FILE,
    SearchIndex,
    choose_factory,
    image_budget,
)

CLUSTERS = 15_000  # bench.ann's n // 1000 at 15 M
CHUNK = 250_000
SAMPLE = 100_000
SELECTIVITIES = (0.4, 0.05, 0.001)


def _space(dim: int, seed: int, intrinsic: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(cluster centres, noise basis): ``bench.ann``'s mixture, 15,000 unit centres with noise
    in an ``intrinsic``-dim subspace (real embeddings' low intrinsic dimension; 0: isotropic,
    where a point's nearest neighbours are near-ties and no compressed index finds them)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = (np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32)
             if intrinsic else None)
    return centres, basis


def _chunk(space: tuple[np.ndarray, np.ndarray | None], seed: int, number: int,
           size: int) -> np.ndarray:
    """One chunk of unit vectors of the mixture (its own random stream)."""
    from bench.ann import mixture

    centres, basis = space
    return mixture(size, centres.shape[1], centres, np.random.default_rng([seed, number]),
                   basis=basis)


def write_vectors(path: Path, n: int, dim: int, seed: int, intrinsic: int) -> None:
    """``vectors.npy`` (float16, as a version stores them) filled chunk by chunk."""
    space = _space(dim, seed, intrinsic)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for number, start in enumerate(tqdm(range(0, n, CHUNK), desc="vectors", unit="chunk")):
        stop = min(n, start + CHUNK)
        out[start:stop] = _chunk(space, seed, number, stop - start)
    out.flush()
    del out


def sampled_centroid_index(factory: str, sample: np.ndarray, seed: int) -> faiss.Index:
    """The factory's index, trained on ``sample`` with its coarse centroids drawn from the
    sample (after the OPQ rotation) instead of k-means: faiss skips the coarse training when
    the quantizer already holds ``nlist`` vectors."""
    from indexer.build import new_index

    index = new_index(factory, sample.shape[1])
    ivf = faiss.extract_index_ivf(index)
    rotated = sample
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = index.chain.at(i)
            transform.train(rotated)
            rotated = transform.apply(rotated)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rotated), size=ivf.nlist, replace=len(rotated) < ivf.nlist)
    ivf.quantizer.add(np.ascontiguousarray(rotated[np.sort(pick)]))
    index.train(sample)  # the transforms and the quantizer are trained: only the PQ trains
    return index


def build(out_dir: Path, n: int, dim: int = 512, factory: str | None = None,
          memory_gb: float = 4.0, seed: int = 0, intrinsic: int = 32) -> dict[str, Any]:
    """A version directory of ``n`` clustered vectors under ``factory`` (default: the rule's)."""
    from indexer.build import add_in_batches

    out_dir.mkdir(parents=True, exist_ok=True)
    factory = factory or choose_factory(n, dim, image_budget(memory_gb))
    t0 = time.perf_counter()
    if not (out_dir / VECTORS_FILE).is_file():
        write_vectors(out_dir / VECTORS_FILE, n, dim, seed, intrinsic)
    vectors = np.load(out_dir / VECTORS_FILE, mmap_mode="r")
    t1 = time.perf_counter()
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, SAMPLE), replace=False))
    sample = np.ascontiguousarray(vectors[rows], np.float32)
    index = sampled_centroid_index(factory, sample, seed)
    t2 = time.perf_counter()
    add_in_batches(index, vectors)
    t3 = time.perf_counter()
    with open(out_dir / INDEX_FILE, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    # figure ids with gaps, as a store's are (figures without images hold none)
    ids = np.arange(n, dtype=np.int64) * 13 // 12
    np.save(out_dir / IDS_FILE, ids)
    manifest = {"version": out_dir.name, "count": n, "dim": dim, "factory": factory,
                "model_key": "bench-vector-scale", "checksums": {},
                "bench_vector_scale": {"seed": seed, "intrinsic_dim": intrinsic,
                                       "centroids": "sampled from the data"}}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    times = {"vectors_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
             "add_s": round(t3 - t2, 1), "total_s": round(time.perf_counter() - t0, 1)}
    print(f"vector_scale: built {n:,} x {dim} {factory} in {times['total_s']:.0f} s "
          f"({n / max(times['add_s'], 1e-9):,.0f} vectors/s added)", file=sys.stderr)
    return {"factory": factory, "intrinsic_dim": intrinsic, **times}


def _percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2)}


def queries(dim: int, seed: int, count: int, intrinsic: int) -> np.ndarray:
    """Query vectors of the data's mixture, drawn apart from the data's own chunks."""
    return _chunk(_space(dim, seed, intrinsic), seed + 7919, 0, count)


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k per query, one pass over the stored vectors."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_r = np.full((len(q), k), -1, np.int64)
    for start in tqdm(range(0, len(vectors), CHUNK), desc="exact", unit="chunk"):
        block = np.asarray(vectors[start:start + CHUNK], np.float32)
        s = q @ block.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_r = np.concatenate([best_r, top + start], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_r, keep, 1)
    return best_r


def _timed_searches(index: SearchIndex, q: np.ndarray, k: int,
                    allowed: AllowedSet | None = None) -> tuple[list[float], np.ndarray]:
    ms, ids = [], []
    for row in q:
        t = time.perf_counter()
        _s, found = index.search(row[None], k, allowed_ids=allowed)
        ms.append((time.perf_counter() - t) * 1000)
        ids.append(found[0])
    return ms, np.stack(ids)


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


def measure(out_dir: Path, count: int = 200, k: int = 100, nprobe: int = 32,
            recall_queries: int = 50, seed: int = 0) -> dict[str, Any]:
    """Latency, recall, filtered plans and memory of the built index (see the module doc)."""
    figures: dict[str, Any] = _flat("before_load", process_memory_mb())
    t = time.perf_counter()
    index = SearchIndex.load(out_dir, nprobe=nprobe, mmap_index=True)
    figures["load_s"] = round(time.perf_counter() - t, 2)
    figures.update(_flat("loaded", process_memory_mb()))
    figures.update({"factory": index.factory, "vectors": index.ntotal,
                    "nlist": int(faiss.extract_index_ivf(index.index).nlist),
                    "disk_index_mb": round((out_dir / INDEX_FILE).stat().st_size / 2**20, 1),
                    "disk_vectors_mb": round((out_dir / VECTORS_FILE).stat().st_size / 2**20, 1)})
    intrinsic = int(index.manifest.get("bench_vector_scale", {}).get("intrinsic_dim", 0))
    q = queries(index.dim, seed, count, intrinsic)
    index.search(q[:5], k)  # warm-up
    ms, found = _timed_searches(index, q, k)
    figures.update(_flat(f"top{k}", _percentiles(ms)))
    if recall_queries:
        vectors = np.load(out_dir / VECTORS_FILE, mmap_mode="r")
        truth = index.ids[exact_top(vectors, q[:recall_queries], 10)]
        hits = [len(set(truth[i]) & set(found[i, :10])) / 10 for i in range(recall_queries)]
        figures["recall_at_10"] = round(float(np.mean(hits)), 4)
    # the version's filter columns hold every live figure (those without images too); the
    # serve lines each index up with them once, at load (VersionColumns.prepare)
    column_ids = np.arange(int(index.ids[-1]) + 1, dtype=np.int64)
    columns = VersionColumns(out_dir, {"ids": column_ids},
                             {"journal": [], "license_class": [], "figure_type": []})
    t = time.perf_counter()
    columns.prepare(index.ids)
    figures["index_map_at_load_ms"] = round((time.perf_counter() - t) * 1000, 1)
    rng = np.random.default_rng(seed + 1)
    for share in SELECTIVITIES:
        mask = rng.random(len(column_ids)) < share
        allowed = AllowedSet(column_ids, mask, len(column_ids), columns=columns)
        t = time.perf_counter()
        plan = index.plan(allowed)
        first_ms = (time.perf_counter() - t) * 1000
        fms, fids = _timed_searches(index, q[:50], k, allowed)
        leaked = int(np.count_nonzero(~allowed.contains(fids[fids >= 0])))
        figures.update(_flat(f"filtered_{share:g}", {
            "plan": plan, "first_use_ms": round(first_ms, 1), "outside_filter": leaked, **_percentiles(fms)}))
        figures[f"filtered_{share:g}_allowed"] = len(allowed)
    figures.update(_flat("end", process_memory_mb()))
    return figures


def float16_quantizer(src: Path, out: Path) -> dict[str, Any]:
    """Copy the version in ``src`` to ``out`` with its HNSW coarse quantizer rebuilt over the
    same centroids stored in float16 (module doc)."""
    index = faiss.read_index(str(src / INDEX_FILE))
    ivf = faiss.extract_index_ivf(index)
    old = faiss.downcast_index(ivf.quantizer)
    if not isinstance(old, faiss.IndexHNSWFlat):
        raise SystemExit(f"{src}: the coarse quantizer is {type(old).__name__}, not HNSW over "
                         "float32 centroids")
    start = time.perf_counter()
    new = faiss.IndexHNSWSQ(ivf.d, faiss.ScalarQuantizer.QT_fp16, old.hnsw.nb_neighbors(1),
                            old.metric_type)  # nb_neighbors(1): M (level 0 holds 2M)
    new.hnsw.efConstruction = old.hnsw.efConstruction
    new.add(old.storage.reconstruct_n(0, old.ntotal))
    new.this.disown()  # the IVF index owns it from here (own_fields), as a read one does
    ivf.quantizer, ivf.own_fields = new, True
    out.mkdir(parents=True, exist_ok=False)
    faiss.write_index(index, str(out / INDEX_FILE))
    for name in (IDS_FILE, VECTORS_FILE):
        (out / name).hardlink_to(src / name)
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    manifest.update(factory=re.sub(r"IVF(\d+)_HNSW(\d+)", r"IVF\1(HNSW\2_SQfp16)",
                                   str(manifest["factory"])),
                    version=f"{manifest.get('version', src.name)}-fp16q", checksums={})
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return {"factory": manifest["factory"], "graph_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build")
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--n", type=int, default=15_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--factory", default=None, help="default: the rule's for --memory-gb")
    b.add_argument("--memory-gb", type=float, default=4.0,
                   help="the version's budget (FIGSEARCH_INDEX_MEMORY_GB); the image share picks")
    b.add_argument("--intrinsic-dim", type=int, default=32,
                   help="noise subspace dimension (0: isotropic)")
    f = sub.add_parser("float16-quantizer")
    f.add_argument("--dir", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--dir", type=Path, required=True)
    m.add_argument("--queries", type=int, default=200)
    m.add_argument("--k", type=int, default=100)
    m.add_argument("--nprobe", type=int, default=32)
    m.add_argument("--recall-queries", type=int, default=50)
    m.add_argument("--name", default="vector_scale")
    args = ap.parse_args(argv)
    if args.verb == "build":
        info = build(args.dir, args.n, args.dim, args.factory, args.memory_gb,
                     intrinsic=args.intrinsic_dim)
        (args.dir / "build.json").write_text(json.dumps(info, indent=2))
        return 0
    if args.verb == "float16-quantizer":
        print(json.dumps(float16_quantizer(args.dir, args.out)))
        return 0
    figures = measure(args.dir, args.queries, args.k, args.nprobe, args.recall_queries)
    build_info = args.dir / "build.json"
    if build_info.is_file():
        figures.update(_flat("build", json.loads(build_info.read_text())))
    params = {"command": "python -m bench.vector_scale " + " ".join(argv or sys.argv[1:]),
              "k": args.k, "nprobe": args.nprobe, "queries": args.queries,
              "centroids": "sampled from the data (no k-means)"}
    path = write_result(args.name, params, figures)
    print_figures(args.name, figures)
    print(f"vector_scale: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
