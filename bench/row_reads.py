"""Scattered row reads from a version's ``vectors.npy``: ``RowFile`` against a mapping per read.

Re-ranking reads ~1,000 scattered rows a query (top 100, ten candidates each) and an exact
subset up to 20,000 on a filter's first use. For each ``--vectors`` file (read once first, so
it is in the page cache, as the goals assume), ``--rounds`` sets of fresh random rows are read
through :class:`figsearch.index.RowFile` (``preadv`` per run of rows) and through a mapping
made and dropped for each read (what ``RowFile`` did before: a page fault per row).

    python -m bench.row_reads --vectors /work/bench-data/vec-15m-r32/vectors.npy \\
        /work/bench-data/pmc-1m/indexes/current/vectors.npy

``--cold`` drops the file's pages from the page cache before every read
(``posix_fadvise(DONTNEED)``), so each row comes from the disk: what a re-ranking query costs
when a version's vectors do not fit the machine's page cache (15 M figures with passages).
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402
from figsearch.index import RowFile  # noqa: E402

SIZES = (1_000, 15_000)


def mapped_read(rows_file: RowFile, rows: np.ndarray) -> np.ndarray:
    """The rows through a mapping of the whole file made for this read (the old way)."""
    assert rows_file._fd is not None
    with mmap.mmap(rows_file._fd, 0, prot=mmap.PROT_READ) as mapped:
        view = np.frombuffer(mapped, rows_file.dtype, count=rows_file.shape[0] *
                             rows_file.shape[1], offset=rows_file.offset).reshape(rows_file.shape)
        try:
            return np.array(view[rows])
        finally:
            del view


def drop_from_page_cache(rows_file: RowFile) -> None:
    """Evict the file's (clean) pages, so the next read comes from the disk."""
    assert rows_file._fd is not None
    os.posix_fadvise(rows_file._fd, 0, 0, os.POSIX_FADV_DONTNEED)


def measure(path: Path, rounds: int, seed: int = 0, cold: bool = False) -> dict[str, Any]:
    rows_file = RowFile(path)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"rows": rows_file.shape[0], "dim": rows_file.shape[1]}
    for size in SIZES:
        times: dict[str, list[float]] = {"preadv": [], "mapped": []}
        for _ in range(rounds):
            for name, read in (("preadv", rows_file.__getitem__),
                               ("mapped", lambda r: mapped_read(rows_file, r))):
                rows = np.sort(rng.choice(rows_file.shape[0], size, replace=False))
                if cold:
                    drop_from_page_cache(rows_file)
                t = time.perf_counter()
                read(rows)
                times[name].append((time.perf_counter() - t) * 1000)
        for name, ms in times.items():
            out[f"{size}_rows_{name}_p50_ms"] = round(float(np.percentile(ms, 50)), 2)
            out[f"{size}_rows_{name}_p95_ms"] = round(float(np.percentile(ms, 95)), 2)
    check = np.sort(rng.choice(rows_file.shape[0], 500, replace=False))
    out["same_rows"] = bool(np.array_equal(rows_file[check], mapped_read(rows_file, check)))
    rows_file.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", type=Path, nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cold", action="store_true",
                    help="drop the file from the page cache before every read")
    ap.add_argument("--name", default="row_reads")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {}
    table = []
    for path in args.vectors:
        with open(path, "rb") as fh:  # into the page cache
            while not args.cold and fh.read(16 << 20):
                pass
        label = f"{path.parent.name}/{path.name}"
        r = measure(path, args.rounds, cold=args.cold)
        figures.update({f"{label} {key}": value for key, value in r.items()})
        for size in SIZES:
            table.append([label, f"{r['rows']:,}", size, r[f"{size}_rows_mapped_p50_ms"],
                          r[f"{size}_rows_preadv_p50_ms"], r[f"{size}_rows_preadv_p95_ms"]])
    print(markdown_table(["file", "rows", "rows read", "mapping per read p50 ms",
                          "RowFile (preadv) p50 ms", "p95"], table))
    path = write_result(args.name, {"vectors": [str(p) for p in args.vectors],
                                    "rounds": args.rounds, "cold": args.cold,
                                    "note": "2 cores; page cache " + (
                                        "dropped before every read" if args.cold else "warm")},
                        figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
