"""Filtered search at millions of store rows: time and memory of building a filter's id set.

Fills a real figure store (``FigureStore``'s schema, without its FTS triggers) with ``--n`` figures
in n/3 articles (licenses, years, journals and figure types drawn at random), then, for each
filter, runs ``FigureStore.filtered_ids`` (what ``figsearch.search`` calls and caches) in a
fresh process and measures wall time and peak resident memory above that process's baseline,
plus faiss's ``IDSelectorBatch`` over the result (what ``SearchIndex`` caches for large sets).
Writes ``bench/results/filter_ids.json``.

``--columns`` measures the replacement instead (:mod:`figsearch.columns`): ``write_columns``
over the same store (seconds, peak memory, bytes on disk), then per filter, each in a fresh
process that loads the version's columns: the first ``VersionColumns.allowed(flt)``, the first
``AllowedSet.row_mask`` over an index holding 90 % of the live figures (its index map built
first, as the search service does at load), the ``IDSelectorBitmap`` the
middle plan builds, and a repeat (cached) call, with peak memory above the process's baseline.
Writes ``bench/results/filter_columns_<n>.json``. With ``--synthetic`` the columns are drawn
directly with numpy in the same distributions (no store: 15 M rows; no pmcid filter), written
to ``filter_columns_<n>_synthetic.json``.

    .venv/bin/python -m bench.filter_ids --n 5000000     # ~1 GB of SQLite in --tmp
    .venv/bin/python -m bench.filter_ids --n 20000       # smoke
    .venv/bin/python -m bench.filter_ids --columns --n 1000000 --db /tmp/f1m.db  # keeps the store
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402

LICENSES = ["cc-by", "cc-by", "cc-by", "cc-by-nc", "cc0", "cc-by-nd", "none"]
TYPES = ["chart/plot", "microscopy", "diagram/pathway", "multi-panel figure", "photograph", "gel/blot"]
FILTERS: dict[str, dict[str, Any]] = {
    "license cc-by (~43%)": {"license_class": "cc-by"},
    "commercial use": {"commercial_only": True},
    "figure type (~17%)": {"figure_type": "microscopy"},
    "years 2020-2022 (~12%)": {"year_from": 2020, "year_to": 2022},
    "journal (~0.2%)": {"journal": "Journal 7"},
}
#: --columns adds filters as narrow as the issue's 0.1 % and below, and a combination
COLUMN_FILTERS: dict[str, dict[str, Any]] = {
    **FILTERS,
    "journal lower-case (~0.2%)": {"journal": "journal 7"},
    "journal + years 2020-2022 (~0.02%)": {"journal": "Journal 7", "year_from": 2020,
                                           "year_to": 2022},
    "commercial + microscopy + 2010-2025 (~10%)": {"commercial_only": True,
                                                   "figure_type": "microscopy",
                                                   "year_from": 2010},
    "pmcid (3 figures)": {"pmcid": "PMC7"},
}


def fill_store(db: Path, n: int, seed: int = 0, chunk: int = 250_000) -> float:
    """``n`` figures in ``n // 3`` articles; returns seconds. Bulk SQL (synchronous off) into the
    schema ``FigureStore`` creates, without the FTS triggers (``filtered_ids`` never reads the
    FTS table, and indexing 5 M captions would take most of the run on 2 shared cores)."""
    from figsearch.store import FigureStore

    FigureStore(db).close()  # schema, FTS table and triggers
    rng = np.random.default_rng(seed)
    articles = max(n // 3, 1)
    t0 = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    now = "2026-12-01 00:00:00"
    for start in range(0, articles, chunk):
        ids = range(start + 1, min(start + chunk, articles) + 1)
        conn.executemany(
            "INSERT INTO articles(id, key, pmcid, title, journal, year, license_text, license_url, "
            "license_class, source, content_hash, retracted, ingested_at) "
            "VALUES (?, ?, ?, ?, ?, ?, '', '', ?, 'bench', '', 0, ?)",
            [(i, f"PMC{i}", f"PMC{i}", f"Article {i}", f"Journal {int(rng.integers(0, 500))}",
              int(rng.integers(2000, 2026)), LICENSES[int(rng.integers(0, len(LICENSES)))], now)
             for i in ids])
        conn.commit()
    for start in range(0, n, chunk):
        ids = range(start + 1, min(start + chunk, n) + 1)
        conn.executemany(
            "INSERT INTO figures(id, key, article_id, fig_id, label, caption, has_image, source, "
            "figure_type, attributes) VALUES (?, ?, ?, ?, ?, ?, 1, 'bench', ?, '{}')",
            [(i, f"fig{i}", (i - 1) % articles + 1, f"F{i}", "Figure 1", f"figure {i % 977} cells",
              TYPES[int(rng.integers(0, len(TYPES)))]) for i in ids])
        conn.commit()
        print(f"filter_ids: {min(start + chunk, n):,} / {n:,} figures stored", file=sys.stderr,
              flush=True)
    conn.close()
    return time.perf_counter() - t0


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _measure(db: str, flt: dict[str, Any], out: Any) -> None:
    """In a fresh process: time and peak memory of filtered_ids, then of IDSelectorBatch."""
    import faiss

    from figsearch.store import FigureFilter, FigureStore

    store = FigureStore(Path(db), create=False)
    base = _rss()
    t0 = time.perf_counter()
    ids = store.filtered_ids(FigureFilter(**flt))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    t0 = time.perf_counter()
    before = _rss()
    selector = faiss.IDSelectorBatch(ids)
    sel_s, sel_bytes = time.perf_counter() - t0, _rss() - before
    del selector
    store.close()
    out.put({"count": int(len(ids)), "seconds": seconds, "peak_mb": peak / 1e6,
             "array_mb": ids.nbytes / 1e6, "selector_s": sel_s, "selector_mb": sel_bytes / 1e6})


def measure(db: Path, flt: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(str(db), flt, queue))
    proc.start()
    result = queue.get(timeout=900)
    proc.join()
    return dict(result)


def _write_columns(db: str, version_dir: str, out: Any) -> None:
    """In a fresh process: time and peak memory of write_columns."""
    from figsearch.columns import write_columns
    from figsearch.store import FigureStore

    store = FigureStore(Path(db), create=False)
    base = _rss()
    t0 = time.perf_counter()
    entry = write_columns(store, Path(version_dir))["columns"]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    store.close()
    out.put({"seconds": seconds, "peak_mb": peak / 1e6, "count": entry["count"],
             "disk_mb": sum(entry["files"].values()) / 1e6})


def _measure_columns(db: str, version_dir: str, flt: dict[str, Any], out: Any) -> None:
    """In a fresh process: first use of a filter through the version's columns."""
    import faiss

    from figsearch.columns import VersionColumns
    from figsearch.store import FigureFilter, FigureStore

    store = FigureStore(Path(db), create=False) if db else None
    t0 = time.perf_counter()
    cols = VersionColumns.load(Path(version_dir), store=store)
    assert cols is not None
    # an index over 90 % of the live figures (those with images, say; SearchIndex holds its
    # ids): the row mask is a compress through the index map, which the service builds when
    # it loads the version (an index over all of them would take the column mask as it is)
    all_ids = np.asarray(cols.ids)
    index_ids = all_ids[np.arange(len(all_ids)) % 10 != 0]
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cols.prepare(index_ids)
    index_map_s = time.perf_counter() - t0
    base = _rss()
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the filter's own memory
    t0 = time.perf_counter()
    allowed = cols.allowed(FigureFilter(**flt))
    count = allowed.count
    allowed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = allowed.row_mask(index_ids)
    row_mask_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bits = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # type: ignore[attr-defined]
    bitmap_s = time.perf_counter() - t0
    del mask
    held, peak = tracemalloc.get_traced_memory()  # held: what the cached set keeps
    tracemalloc.stop()
    rss_delta = _rss() - base
    t0 = time.perf_counter()
    again = cols.allowed(FigureFilter(**flt))
    again.row_mask(index_ids)
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = allowed.ids
    ids_s = time.perf_counter() - t0
    probe = np.random.default_rng(0).choice(index_ids, 1000)
    t0 = time.perf_counter()
    for _ in range(100):
        allowed.contains(probe)
    contains_us = (time.perf_counter() - t0) / 100 * 1e6
    del selector
    if store is not None:
        store.close()
    out.put({"count": int(count), "ids_ok": len(ids) == count, "load_ms": load_s * 1e3,
             "index_map_ms": index_map_s * 1e3,
             "allowed_ms": allowed_s * 1e3, "row_mask_ms": row_mask_s * 1e3,
             "first_use_ms": (allowed_s + row_mask_s) * 1e3, "bitmap_selector_ms": bitmap_s * 1e3,
             "cached_ms": cached_s * 1e3, "ids_ms": ids_s * 1e3,
             "contains_1000_us": contains_us, "peak_mb": peak / 1e6, "held_mb": held / 1e6,
             "rss_delta_mb": rss_delta / 1e6,
             "bitmap_selector_mb": bits.nbytes / 1e6})


def _in_fresh_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return dict(result)


def synthetic_columns(version_dir: Path, n: int, seed: int = 0) -> None:
    """The columns ``write_columns`` would write for a ``fill_store`` store of ``n`` figures,
    drawn directly with numpy (no SQLite: a 15 M store takes hours to fill here)."""
    from figsearch.columns import COLUMNS_DIR, FORMAT, VOCAB_FILE

    rng = np.random.default_rng(seed)
    articles = max(n // 3, 1)
    article = (np.arange(n, dtype=np.int64) % articles + 1).astype(np.int32)
    a_journal = rng.integers(0, 500, articles + 1).astype(np.int32)
    a_year = rng.integers(2000, 2026, articles + 1).astype(np.int16)
    licenses = sorted(set(LICENSES))
    a_license = rng.integers(0, len(LICENSES), articles + 1)
    a_license = np.array([licenses.index(x) for x in LICENSES], np.int8)[a_license]
    out = version_dir / COLUMNS_DIR
    out.mkdir(parents=True)
    arrays = {"ids": np.arange(1, n + 1, dtype=np.int64), "year": a_year[article],
              "journal": a_journal[article], "license": a_license[article],
              "figure_type": rng.integers(0, len(TYPES), n).astype(np.int8),
              "article": article, "has_image": np.ones(n, bool)}
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr)
    (out / VOCAB_FILE).write_text(json.dumps({
        "format": FORMAT, "count": n, "max_id": n, "figure_types_from": "store",
        "journal": [f"journal {i}" for i in range(500)], "license_class": licenses,
        "figure_type": TYPES}))


def columns_main(args: argparse.Namespace) -> int:
    """``--columns``: write_columns and first use of each filter through the columns."""
    tmp_ctx = tempfile.TemporaryDirectory(dir=args.tmp)
    with tmp_ctx as tmp:
        figures: dict[str, Any] = {}
        version_dir = Path(tmp) / "version"
        filters = dict(COLUMN_FILTERS)
        if args.synthetic:
            db = ""
            t0 = time.perf_counter()
            synthetic_columns(version_dir, args.n)
            figures["synthetic_columns_s"] = round(time.perf_counter() - t0, 1)
            filters.pop("pmcid (3 figures)")  # needs a store for its point query
        else:
            db_path = Path(args.db) if args.db else Path(tmp) / "figsearch.db"
            db = str(db_path)
            if not db_path.is_file():
                figures["store_fill_s"] = round(fill_store(db_path, args.n), 1)
            figures["store_gb"] = round(db_path.stat().st_size / 1e9, 3)
            w = _in_fresh_process(_write_columns, db, str(version_dir))
            print(f"filter_columns: write_columns {w['count']:,} figures in {w['seconds']:.1f}s, "
                  f"peak +{w['peak_mb']:.0f} MB, {w['disk_mb']:.0f} MB on disk", file=sys.stderr,
                  flush=True)
            figures.update({f"write_columns {k}": round(float(v), 3) for k, v in w.items()})
        rows = []
        keys = ("count", "allowed_ms", "row_mask_ms", "first_use_ms", "first_use_ms_max",
                "bitmap_selector_ms", "rss_delta_mb",
                "cached_ms", "ids_ms", "contains_1000_us", "peak_mb", "held_mb",
                "bitmap_selector_mb", "load_ms", "index_map_ms")
        for label, flt in filters.items():
            runs = [_in_fresh_process(_measure_columns, db, str(version_dir), flt)
                    for _ in range(args.repeat)]
            assert all(r["ids_ok"] for r in runs)
            # the median run by first-use time (the machine is shared: single runs are noisy)
            r = sorted(runs, key=lambda x: x["first_use_ms"])[len(runs) // 2]
            r["first_use_ms_max"] = max(x["first_use_ms"] for x in runs)
            rows.append([label, r["count"], r["allowed_ms"], r["row_mask_ms"], r["first_use_ms"],
                         r["bitmap_selector_ms"], r["cached_ms"], r["peak_mb"], r["held_mb"]])
            for key in keys:
                figures[f"{label} {key}"] = round(float(r[key]), 4)
            print(f"filter_columns: {label}: {r['count']:,} ids, first use "
                  f"{r['first_use_ms']:.1f} ms (allowed {r['allowed_ms']:.1f} + row mask "
                  f"{r['row_mask_ms']:.1f}; max of {args.repeat} {r['first_use_ms_max']:.1f}), "
                  f"bitmap selector {r['bitmap_selector_ms']:.1f} ms, peak +{r['peak_mb']:.1f} "
                  f"MB, held {r['held_mb']:.1f} MB", file=sys.stderr, flush=True)
    print(markdown_table(["filter", "ids", "allowed ms", "row_mask ms", "first use ms",
                          "IDSelectorBitmap ms", "cached ms", "peak MB", "held MB"], rows))
    path = write_result(f"filter_columns_{args.n}{'_synthetic' if args.synthetic else ''}",
                        {"n": args.n, "articles": args.n // 3, "filters": filters,
                         "repeat": args.repeat, "synthetic": args.synthetic,
                         "note": "2 CPU cores shared with other jobs; columns in the page cache "
                                 "(just written); each filter in a fresh process, the median "
                                 "of --repeat runs; peak/held MB: tracemalloc (numpy buffers) "
                                 "over allowed + row_mask + bitmap selector"},
                        figures)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5_000_000, help="figures in the store")
    p.add_argument("--tmp", default=None, help="scratch directory for the store")
    p.add_argument("--columns", action="store_true",
                   help="measure figsearch.columns (write_columns, first use per filter)")
    p.add_argument("--synthetic", action="store_true",
                   help="--columns: draw the columns with numpy instead of filling a store")
    p.add_argument("--repeat", type=int, default=3, help="--columns: fresh processes per filter")
    p.add_argument("--db", default=None,
                   help="--columns: the store file to use, filled first when absent (kept)")
    args = p.parse_args(argv)
    if args.columns:
        return columns_main(args)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        db = Path(tmp) / "figsearch.db"
        fill_s = fill_store(db, args.n)
        size = db.stat().st_size
        print(f"filter_ids: store of {args.n:,} figures filled in {fill_s:.0f}s, "
              f"{size / 1e9:.2f} GB", file=sys.stderr, flush=True)
        rows, figures = [], {"store_fill_s": round(fill_s, 1), "store_gb": round(size / 1e9, 3)}
        for label, flt in FILTERS.items():
            r = measure(db, flt)
            rows.append([label, r["count"], r["seconds"], r["peak_mb"], r["array_mb"],
                         r["selector_s"], r["selector_mb"]])
            for key in ("count", "seconds", "peak_mb", "array_mb", "selector_s", "selector_mb"):
                figures[f"{label} {key}"] = round(float(r[key]), 4)
            print(f"filter_ids: {label}: {r['count']:,} ids in {r['seconds']:.2f}s, peak "
                  f"+{r['peak_mb']:.0f} MB (array {r['array_mb']:.0f} MB); IDSelectorBatch "
                  f"{r['selector_s']:.2f}s, +{r['selector_mb']:.0f} MB", file=sys.stderr, flush=True)
    print(markdown_table(["filter", "ids", "filtered_ids s", "peak MB", "array MB",
                          "IDSelectorBatch s", "IDSelectorBatch MB"], rows))
    path = write_result("filter_ids", {"n": args.n, "articles": args.n // 3,
                                       "filters": list(FILTERS),
                                       "note": "2 CPU cores shared with up to 8 other jobs"},
                        figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
