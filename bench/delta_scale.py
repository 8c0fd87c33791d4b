"""A nightly delta applied to the 15 M parts this machine holds, measured rather than projected.

``bench.delta`` times a night of changes on a 1 M version it builds and projects each stage to
15 M by rows. This applies the same night to the 15 M parts that exist here, with the product's
own functions, and times each:

- the vector index (``bench.vector_scale``'s 15 M ``OPQ32,IVF65536_HNSW32,PQ32`` index of the
  image index's factory): :func:`indexer.delta.apply_index_delta` writes the next version's
  index, ids and vectors beside it (the kept rows copied run by run, the removed and changed
  rows dropped from the inverted lists, the rest relabelled, the new rows added; no
  training), then :meth:`figsearch.index.SearchIndex.load` reads it back with every checksum
  verified, as the rebuild does before a swap;
- the keyword index (``bench.keyword_scale``'s 15 M real-language captions, two shards):
  :func:`figsearch.keyword_index.update_keyword_index` hard-links the previous segments,
  deletes the removed and changed figures and adds the new and changed ones as a small store
  holds them (``bench.pmc_scale.generate``: captions of real caption sentences).

The night: ``--removed`` figures removed and ``--changed`` changed, drawn from the whole id
range (so rows move all through the vectors), ``--new`` new ones after the last id. New and
changed vectors are drawn from the index's own mixture. The keyword night changes the store's
``--changed + --new`` figures (ids 1..N, all of them held by the 15 M index, so each is a delete
and an add) and removes ``--removed`` more: a little more work than new figures, which need no
delete. Checks: each new vector finds itself first, no removed figure comes back, the keyword
index holds the right count and finds a new caption's rare words.

    python -m bench.delta_scale --vector-dir /work/bench-data/vec-15m-twolevel \\
        --keyword-dir /work/bench-data/kw-15m-s2 --tmp /work/bench-data --name delta_15m
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402


def _seconds(t: float) -> float:
    return round(time.perf_counter() - t, 3)


def vector_night(vector_dir: Path, out_dir: Path, new: int, changed: int, removed: int,
                 seed: int) -> dict[str, Any]:
    """The night applied to the vector index in ``vector_dir``, written to ``out_dir``; its
    stages, the validation read and the checks."""
    from bench.vector_scale import queries
    from figsearch.index import IDS_FILE, SearchIndex, read_manifest
    from indexer.delta import IndexDelta, apply_index_delta, write_sub_manifest

    rng = np.random.default_rng(seed)
    manifest = read_manifest(vector_dir)
    ids = np.load(vector_dir / IDS_FILE)
    touched = rng.choice(ids, removed + changed, replace=False)  # over the whole range
    gone, changed_ids = np.sort(touched[:removed]), np.sort(touched[removed:])
    new_ids = ids[-1] + 1 + np.arange(new, dtype=np.int64)
    upsert = np.union1d(changed_ids, new_ids)
    intrinsic = int(manifest.get("bench_vector_scale", {}).get("intrinsic_dim", 0))
    vectors = queries(int(manifest["dim"]), seed + 1, len(upsert), intrinsic)
    delta = IndexDelta(np.union1d(gone, changed_ids), upsert, vectors)
    out_dir.mkdir(parents=True)
    t = time.perf_counter()
    result = apply_index_delta(vector_dir, out_dir, delta)
    write_sub_manifest(vector_dir, out_dir, result, out_dir.name)
    applied_s = _seconds(t)
    t = time.perf_counter()
    index = SearchIndex.load(out_dir, full_hash=True, mmap_index=True)
    validate_s = _seconds(t)
    probe = min(200, len(upsert))
    _s, top = index.search(vectors[:probe], 10)
    gone_vectors = SearchIndex.load(vector_dir, mmap_index=True).vectors_for(gone[:probe])
    _s, back = index.search(gone_vectors.astype(np.float32), 10)
    stages = result["stages_s"]
    return {"vector_count": result["count"], "vector_removed": result["removed"],
            "vector_added": result["added"], "vector_apply_s": applied_s,
            **{f"vector_{k}_s": v for k, v in stages.items() if k != "total"},
            "vector_validate_full_hash_s": validate_s,
            "vector_new_found_first": round(float(np.mean(top[:, 0] == upsert[:probe])), 3),
            "vector_removed_returned": int(np.isin(back, gone).sum())}


def keyword_night(keyword_dir: Path, scratch: Path, new: int, changed: int, removed: int,
                  seed: int) -> dict[str, Any]:
    """The night applied to the keyword index in ``keyword_dir`` (its segments hard-linked
    into a version under ``scratch``); its time and checks."""
    from bench.pmc_scale import generate
    from figsearch.keyword_index import KEYWORD_DIR, KeywordIndex, update_keyword_index
    from figsearch.store import FigureStore

    upserted = new + changed
    t = time.perf_counter()
    generate(scratch / "store", upserted, seed=seed, progress=False)
    store_s = _seconds(t)
    previous = scratch / "previous"
    previous.mkdir()
    (previous / KEYWORD_DIR).symlink_to(keyword_dir.resolve())
    before = KeywordIndex.open(keyword_dir)
    assert before is not None
    rng = np.random.default_rng(seed)
    ids = np.load(keyword_dir / "ids.npy")
    gone = rng.choice(ids[ids > upserted], removed, replace=False)
    version = scratch / "next"
    store = FigureStore(scratch / "store" / "figsearch.db")
    try:
        t = time.perf_counter()
        entry = update_keyword_index(previous, version, store, gone.tolist(),
                                     list(range(1, upserted + 1)))["keyword"]
        update_s = _seconds(t)
        caption = store.get_figure(upserted) or {}
    finally:
        store.close()
    after = KeywordIndex.load(version)
    assert after is not None
    words = " ".join(sorted(set(str(caption["caption"]).split()), key=len)[-4:])
    found = [fid for fid, _ in after.ranked(words, 20)]
    return {"keyword_before": before.count, "keyword_after": after.count,
            "keyword_expected_after": before.count - removed,
            "keyword_update_s": update_s, "keyword_store_generate_s": store_s,
            "keyword_new_caption_found": upserted in found,
            "keyword_removed_held": int(np.isin(gone, np.load(version / KEYWORD_DIR /
                                                              "ids.npy")).sum()),
            "keyword_delta": json.dumps(entry.get("delta", {}))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vector-dir", type=Path, required=True)
    ap.add_argument("--keyword-dir", type=Path, required=True)
    ap.add_argument("--tmp", type=Path, default=None,
                    help="where the next version is written (room for a copy of the vectors)")
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=2_000)
    ap.add_argument("--removed", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="delta_15m")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="delta-scale-") as tmp:
        figures.update(vector_night(args.vector_dir, Path(tmp) / "vectors", args.new,
                                    args.changed, args.removed, args.seed))
        shutil.rmtree(Path(tmp) / "vectors")
        figures.update(keyword_night(args.keyword_dir, Path(tmp), args.new, args.changed,
                                     args.removed, args.seed))
    figures["night_s"] = round(figures["vector_apply_s"] + figures["vector_validate_full_hash_s"]
                               + figures["keyword_update_s"], 3)
    params = {"vector_dir": str(args.vector_dir), "keyword_dir": str(args.keyword_dir),
              "new": args.new, "changed": args.changed, "removed": args.removed,
              "seed": args.seed}
    print(markdown_table(
        ["index", "figures", "apply s", "of it: plan / copy / faiss / write s",
         "validation read s", "checks"],
        [["vectors", figures["vector_count"], figures["vector_apply_s"],
          " / ".join(str(figures[f"vector_{k}_s"]) for k in ("plan", "copy", "faiss", "write")),
          figures["vector_validate_full_hash_s"],
          f"new first {figures['vector_new_found_first']}, removed back "
          f"{figures['vector_removed_returned']}"],
         ["keyword", figures["keyword_after"], figures["keyword_update_s"], "", "",
          f"count {figures['keyword_after']} (expected {figures['keyword_expected_after']}), "
          f"new caption found {figures['keyword_new_caption_found']}"]]))
    path = write_result(args.name, {**params, "note": (
        "a nightly delta applied to the 15 M vector and keyword indexes with the product's "
        "functions (module doc); seconds, measured")}, figures)
    print(f"night: {figures['night_s']} s for -{args.removed} ~{args.changed} +{args.new}; "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
