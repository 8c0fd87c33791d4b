"""A nightly delta applied to an index version (issue #23): wall time per stage, projected to 15 M.

Builds a version as the product does (:func:`indexer.build.build_version`, factory from
:func:`figsearch.index.choose_factory`) of ``--n`` clustered vectors (:func:`bench.ann.make_data`)
with the product's row files (image hashes, figure types) and a caption index of ``--n``
``--caption-dim`` vectors with its text hashes (``captions/``, as :mod:`indexer.captions` writes
it; passages not included). Then applies a delta of ``--new`` new, ``--changed`` changed and
``--removed`` removed figures to both with :func:`indexer.delta.build_delta_version` (no
training) and times it: per index, the plan, the copy of ``vectors.npy`` and the row files, the
FAISS ``remove_ids`` / relabel / ``add_with_ids``, the write + checksums; then the rebuild's
validation read (``SearchIndex.load(full_hash=True)``) and recall@10 of the new version against
exact search over the new data. New figures get ids after the last one (the store's ids grow);
removed and changed ones are spread over the whole range, so every row after the first removal
moves.

The projection to ``--project`` figures multiplies each measured stage by the row ratio: every
stage is a pass over the version's files (or its n labels), and none trains. That is
conservative for the FAISS stage: at 15 M the rule picks ``OPQ64,IVF65536_HNSW32,PQ64``, 72
bytes per vector in the index against 520 for 1 M's ``SQ8`` codes.

    .venv/bin/python -m bench.delta --n 1000000          # ~15 min under nice on 2 shared cores
    .venv/bin/python -m bench.delta --n 20000 --new 200 --changed 40 --removed 20 --queries 20
    .venv/bin/python -m bench.delta --n 0 --store-figures 1000000 --name delta_store

``--store-figures N`` also times the nightly store reads on a synthetic store of N figures
(:func:`store_scans`), projected per row to ``--project``; ``--n 0`` runs them alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann import make_data, recall_at_k  # noqa: E402
from bench.common import markdown_table, write_result  # noqa: E402
from figsearch.caption_index import CAPTIONS_DIR  # noqa: E402
from figsearch.core.config import Settings  # noqa: E402
from figsearch.index import (  # noqa: E402
    INDEX_FILE,
    VECTORS_FILE,
    SearchIndex,
    caption_budget,
    image_budget,
    read_manifest,
)
from figsearch.version_data import SHA_FILE, TYPE_SCORES_FILE, TYPES_FILE  # noqa: E402
from indexer.build import build_version  # noqa: E402
from indexer.captions import _write_vectors  # noqa: E402
from indexer.delta import (  # noqa: E402
    TEXT_SHA_FILE,
    IndexDelta,
    apply_index_delta,
    build_delta_version,
    write_sub_manifest,
)

K = 10


def _rows(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {SHA_FILE: rng.integers(0, 256, (n, 32), dtype=np.uint8),
            TYPES_FILE: rng.integers(0, 12, n).astype(np.int16),
            TYPE_SCORES_FILE: rng.random(n).astype(np.float16)}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Base version, delta, validation read, recall; the figures dict."""
    rng = np.random.default_rng(args.seed)
    n, n_new, n_changed, n_removed = args.n, args.new, args.changed, args.removed
    t0 = time.perf_counter()
    base, queries = make_data(n + n_new + n_changed, args.dim, args.queries, seed=args.seed,
                              intrinsic=args.intrinsic_dim)
    cap, _ = make_data(n + n_new + n_changed, args.caption_dim, 1, seed=args.seed + 1,
                       intrinsic=args.intrinsic_dim)
    ids = np.arange(n, dtype=np.int64) * 2 + 1  # figure ids are not rows
    new_ids = ids[-1] + 1 + np.arange(n_new, dtype=np.int64)
    touched = rng.choice(n, n_removed + n_changed, replace=False)
    removed, changed = np.sort(ids[touched[:n_removed]]), np.sort(ids[touched[n_removed:]])
    print(f"data {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    settings = Settings()
    encoder = SimpleNamespace(dim=args.caption_dim, spec="bench", model_key="bench-captions")
    t0 = time.perf_counter()

    def captions(version_dir: Path) -> dict[str, Any]:
        sha = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        _write_vectors(version_dir / CAPTIONS_DIR, version_dir, ids, cap[:n], encoder,
                       caption_budget(settings.index_memory_gb), sha)
        return {"captions": {"count": n}}

    prev = build_version(tmp, base[:n], ids, model_spec="bench", model_key="bench",
                         memory_gb=image_budget(settings.index_memory_gb), keep=5, use_gpu=False,
                         factory=args.factory,
                         row_files=_rows(n, rng), add_files=captions, train_size=args.train_size)
    full_s = time.perf_counter() - t0
    print(f"full build (image + captions) {full_s:.0f}s", file=sys.stderr, flush=True)

    upsert = np.union1d(changed, new_ids)
    image_delta = IndexDelta(np.union1d(removed, changed), upsert, base[n : n + len(upsert)],
                             _rows(len(upsert), rng))
    caption_delta = IndexDelta(np.union1d(removed, changed), upsert, cap[n : n + len(upsert)],
                               {TEXT_SHA_FILE: rng.integers(0, 256, (len(upsert), 16),
                                                            dtype=np.uint8)})
    stages: dict[str, float] = {}

    def hook(stage: str) -> None:
        stages[stage] = time.perf_counter()

    def add_captions(version_dir: Path) -> dict[str, Any]:
        sub = version_dir / CAPTIONS_DIR
        sub.mkdir()
        result = apply_index_delta(prev / CAPTIONS_DIR, sub, caption_delta)
        write_sub_manifest(prev / CAPTIONS_DIR, sub, result, version_dir.name)
        return {"captions": {"count": result["count"], "stages_s": result["stages_s"]}}

    t0 = time.perf_counter()
    new = build_delta_version(tmp, prev, image_delta, add_files=add_captions, hook=hook, keep=5)
    delta_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    index = SearchIndex.load(new, full_hash=True, nprobe=settings.nprobe)
    SearchIndex.load(new / CAPTIONS_DIR, full_hash=True)
    validate_s = time.perf_counter() - t1
    manifest = read_manifest(new)

    keep = ~np.isin(ids, np.union1d(removed, changed))
    final_ids = np.concatenate([ids[keep], upsert])
    final = np.concatenate([base[:n][keep], base[n : n + len(upsert)]])
    _, truth = faiss.knn(queries, final, K, metric=faiss.METRIC_INNER_PRODUCT)
    found = index.search(queries, K, rerank=settings.rerank,
                         rerank_factor=settings.rerank_factor)[1]
    rows = np.searchsorted(np.sort(final_ids), found)  # ids -> rows of the sorted final ids
    order = np.argsort(final_ids)
    recall = recall_at_k(order[rows.clip(0, len(final_ids) - 1)], truth)
    gone_back = int(np.isin(index.search(base[:n][~keep][:200], K)[1], removed).sum())

    image, capt = manifest["build_stages_s"], manifest["captions"]["stages_s"]
    sizes = {name: (new / name).stat().st_size / 2**20 for name in (INDEX_FILE, VECTORS_FILE)}
    return {
        "factory": manifest["factory"], "caption_factory":
            read_manifest(new / CAPTIONS_DIR)["factory"],
        "full_build_s": round(full_s, 3), "delta_s": round(delta_s, 3),
        "delta_image_s": image["total"], "delta_captions_s": capt["total"],
        "image_plan_s": image["plan"], "image_copy_s": image["copy"],
        "image_faiss_s": image["faiss"], "image_write_s": image["write"],
        "captions_plan_s": capt["plan"], "captions_copy_s": capt["copy"],
        "captions_faiss_s": capt["faiss"], "captions_write_s": capt["write"],
        "applied_at_s": round(stages["applied"] - t0, 1),
        "validate_full_hash_s": round(validate_s, 1),
        "recall_at_10": round(recall, 4), "removed_returned": gone_back,
        "count": manifest["count"], "index_mb": round(sizes[INDEX_FILE], 1),
        "vectors_mb": round(sizes[VECTORS_FILE], 1), "nprobe": settings.nprobe,
    }


def store_scans(n: int, dirty: int, tmp: Path) -> dict[str, Any]:
    """Seconds of the nightly store reads at ``n`` figures (3 per article, ~300-character
    captions): the image work list's scan of every figure row (both paths), the ids of the live
    figures, and the caption rows of the ``dirty`` figures' articles (stamped since the last
    build) against every caption read and hashed (a version without the stamp)."""
    from datetime import datetime, timezone

    from sqlalchemy import text

    from figsearch.caption_index import text_hash
    from figsearch.store import FigureStore
    from indexer.captions import caption_rows, live_figure_ids, store_time
    from indexer.worklist import _store_rows

    store = FigureStore(tmp / "figsearch.db")
    rng = np.random.default_rng(0)
    words = np.array("cells were stained with DAPI and imaged at high magnification showing "
                     "nuclei scale bar tumour tissue western blot of lysates".split())
    old, now = "2020-01-01 00:00:00.000000", store_time(datetime.now(timezone.utc))
    n_art = (n + 2) // 3
    dirty_art = set(rng.choice(n_art, max(dirty // 3, 1), replace=False).tolist())
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO articles (key, title, journal, license_text, license_url, "
                          "license_class, source, content_hash, retracted, ingested_at) VALUES "
                          "(:k, :t, 'J', '', '', 'cc-by', 'bench', '', 0, :at)"),
                     [{"k": f"a{i}", "t": f"Article {i} on cells",
                       "at": now if i in dirty_art else old} for i in range(n_art)])
        for start in range(0, n, 100_000):
            rows = []
            for i in range(start, min(n, start + 100_000)):
                cap = ". ".join(" ".join(rng.choice(words, 9)).capitalize() for _ in range(5))
                rows.append({"k": f"f{i}", "a": i // 3 + 1, "c": cap + ".",
                             "p": f"img/{i}.jpg", "s": f"{i:064x}"})
            conn.execute(text(
                "INSERT INTO figures (key, article_id, fig_id, label, caption, image_path, "
                "sha256, has_image, source, attributes) VALUES (:k, :a, 'F1', 'Figure 1', :c, "
                ":p, :s, 1, 'bench', '{}')"), rows)
    fill_s = time.perf_counter() - t0
    out: dict[str, Any] = {"store_figures": n, "store_fill_s": round(fill_s, 1)}
    t0 = time.perf_counter()
    ids, _sha, _paths = _store_rows(store)
    out["store_worklist_scan_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    live = live_figure_ids(store)
    out["store_live_ids_s"] = round(time.perf_counter() - t0, 2)
    since = store_time(datetime.now(timezone.utc).replace(year=2025))
    t0 = time.perf_counter()
    whole, parts = caption_rows(store, 8, since)
    [text_hash("k", t) for _, t in whole + parts]
    out["store_captions_since_s"] = round(time.perf_counter() - t0, 2)
    out["store_captions_since_rows"] = len(whole)
    t0 = time.perf_counter()
    whole, parts = caption_rows(store, 8)
    [text_hash("k", t) for _, t in whole + parts]
    out["store_captions_all_s"] = round(time.perf_counter() - t0, 2)
    store.close()
    assert len(ids) == len(live) == n
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--caption-dim", type=int, default=384, help="all-MiniLM-L6-v2: 384")
    p.add_argument("--intrinsic-dim", type=int, default=32)
    p.add_argument("--new", type=int, default=10_000)
    p.add_argument("--changed", type=int, default=2_000)
    p.add_argument("--removed", type=int, default=1_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=None, help="default: training_size")
    p.add_argument("--factory", default=None, help="image index (default: choose_factory)")
    p.add_argument("--project", type=int, default=15_000_000, help="figures to project to")
    p.add_argument("--tmp", default=None, help="scratch directory for the versions")
    p.add_argument("--store-figures", type=int, default=0,
                   help="also time the nightly store reads on a synthetic store of this many "
                        "figures (0: skip)")
    p.add_argument("--name", default="delta", help="bench/results/<name>.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    figures: dict[str, Any] = {}
    if args.n:  # --n 0: the store reads alone
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="delta-") as tmp:
            figures = run(args, Path(tmp))
    if args.store_figures:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="delta-store-") as tmp:
            figures.update(store_scans(args.store_figures,
                                       args.new + args.changed + args.removed, Path(tmp)))
    load_after = os.getloadavg()
    figures["projected_n"] = args.project
    if args.n:
        scale = args.project / args.n
        figures["projected_delta_s"] = round(figures["delta_s"] * scale, 1)
        figures["projected_with_validation_s"] = round(
            (figures["delta_s"] + figures["validate_full_hash_s"]) * scale, 1)
    if args.store_figures:
        per_row = args.project / args.store_figures
        figures["projected_store_reads_s"] = round(
            (figures["store_worklist_scan_s"] + figures["store_live_ids_s"]) * per_row
            + figures["store_captions_since_s"], 1)
    params = {"n": args.n, "dim": args.dim, "caption_dim": args.caption_dim,
              "intrinsic_dim": args.intrinsic_dim, "new": args.new, "changed": args.changed,
              "removed": args.removed, "queries": args.queries, "train_size": args.train_size,
              "store_figures": args.store_figures, "factory": figures.get("factory"),
              "caption_factory": figures.get("caption_factory"),
              "threads": faiss.omp_get_max_threads(), "nice": os.nice(0),
              "load_before": [round(x, 1) for x in load_before],
              "load_after": [round(x, 1) for x in load_after]}
    path = write_result(args.name, params, figures)
    f = figures
    if args.n:
        print(markdown_table(
            ["n", "factory", "full build s", "delta s", "image: copy / faiss / write s",
             "captions: copy / faiss / write s", "validate s", "recall@10",
             f"projected {args.project:,} s"],
            [[f"{args.n:,}", f["factory"], f["full_build_s"], f["delta_s"],
              f"{f['image_copy_s']} / {f['image_faiss_s']} / {f['image_write_s']}",
              f"{f['captions_copy_s']} / {f['captions_faiss_s']} / {f['captions_write_s']}",
              f["validate_full_hash_s"], f["recall_at_10"], f["projected_with_validation_s"]]]))
        print(f"delta: -{args.removed} ~{args.changed} +{args.new} on {args.n:,}: "
              f"{f['delta_s']}s (full build {f['full_build_s']}s), validation "
              f"{f['validate_full_hash_s']}s; projected to {args.project:,}: "
              f"{f['projected_with_validation_s']}s")
    if args.store_figures:
        print(markdown_table(
            ["store figures", "work-list scan s", "live ids s", "captions since s (rows)",
             "all captions s", f"projected {args.project:,} s"],
            [[f"{args.store_figures:,}", f["store_worklist_scan_s"], f["store_live_ids_s"],
              f"{f['store_captions_since_s']} ({f['store_captions_since_rows']})",
              f["store_captions_all_s"], f["projected_store_reads_s"]]]))
    print(f"load {load_before[0]:.1f} -> {load_after[0]:.1f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
