"""Filtered search at millions of store rows: time and memory of building a filter's id set.

Fills a real figure store (``FigureStore``'s schema, without its FTS triggers) with ``--n`` figures
in n/3 articles (licenses, years, journals and figure types drawn at random), then, for each
filter, runs ``FigureStore.filtered_ids`` (what ``figsearch.search`` calls and caches) in a
fresh process and measures wall time and peak resident memory above that process's baseline,
plus faiss's ``IDSelectorBatch`` over the result (what ``SearchIndex`` caches for large sets).
Writes ``bench/results/filter_ids.json``.

    .venv/bin/python -m bench.filter_ids --n 5000000     # ~1 GB of SQLite in --tmp
    .venv/bin/python -m bench.filter_ids --n 20000       # smoke
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sqlite3
import sys
import tempfile
import time
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5_000_000, help="figures in the store")
    p.add_argument("--tmp", default=None, help="scratch directory for the store")
    args = p.parse_args(argv)
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
