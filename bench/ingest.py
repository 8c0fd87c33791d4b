"""Ingest throughput: figures/s for synthetic packages and for the real shared fixtures.

Each corpus is ingested twice into a fresh data directory: a cold run (parse, normalise
every image, write the store) and a warm rerun (every article unchanged, skipped before
any image work). Results go to ``bench/results/ingest.json`` (machine, versions,
parameters, numbers) and a table is printed.

Examples::

    python bench/ingest.py --synthetic 2000            # generate (cached) + ingest 2000
    python bench/ingest.py --packages DIR --no-real    # an existing directory of packages
    python bench/ingest.py --synthetic 20 --quick      # seconds: smoke run

Synthetic packages come from ``indexer.synth.generate_corpus`` and are cached in
``--synth-dir`` (generation is resumable and not part of the measured time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from figsearch.core.config import Settings  # noqa: E402
from indexer.ingest import IngestSummary, ingest_paths  # noqa: E402

SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO.parent / "shared")) / "data"
REAL_INPUTS = ["jats/packages", "jats/pmc-nxml", "pmc-figures/figures.jsonl"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--synthetic", type=int, default=2000, metavar="N",
                   help="synthetic packages to generate and ingest (0 = none; default 2000)")
    p.add_argument("--seed", type=int, default=0, help="synthetic corpus seed (default 0)")
    p.add_argument("--synth-dir", type=Path, default=None,
                   help="cache dir for synthetic packages "
                        "(default: $TMPDIR/figsearch-bench/synth-seed<SEED>)")
    p.add_argument("--packages", type=Path, action="append", default=[], metavar="DIR",
                   help="also ingest this directory (or file) of packages; repeatable")
    p.add_argument("--no-real", action="store_true",
                   help="skip the real shared packages/nxml/JSONL corpus")
    p.add_argument("--workers", type=int, default=None,
                   help="ingest worker processes (default: $FIGSEARCH_INGEST_WORKERS = 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: caps --synthetic at 20 and ingests 1 worker, no rerun")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/ingest.json",
                   help="where to write the JSON results")
    return p.parse_args(argv)


def machine_info() -> dict[str, Any]:
    """Machine and library versions, so numbers can be compared across runs."""
    versions: dict[str, str | None] = {}
    for pkg in ("lxml", "pillow", "sqlalchemy", "httpx", "tqdm"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(), "versions": versions, "git_commit": commit,
    }


def synthetic_corpus(n: int, seed: int, out_dir: Path | None) -> Path:
    """The cached synthetic corpus of ``n`` packages (generated when missing)."""
    from indexer.synth import generate_corpus

    out = out_dir or Path(tempfile.gettempdir()) / "figsearch-bench" / f"synth-seed{seed}"
    generate_corpus(out, n, seed, progress=True)
    return out


def synthetic_inputs(corpus: Path, n: int, seed: int) -> list[Path]:
    """The first ``n`` packages of the corpus (it may hold more from earlier runs)."""
    return [corpus / f"SYNTH-{seed}-{i:06d}.tar.gz" for i in range(1, n + 1)]


def measure(name: str, inputs: list[Path], workers: int | None, rerun: bool) -> dict[str, Any]:
    """Cold ingest (and optionally a warm rerun) into a fresh temporary data dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="figsearch-bench-"))
    try:
        settings = Settings(data_dir=data_dir)
        cold = ingest_paths(inputs, settings, workers=workers)
        row = {"corpus": name, "inputs": len(inputs), "workers": workers or settings.ingest_workers,
               "load_avg_1m": round(os.getloadavg()[0], 2), "cold": _numbers(cold)}
        if rerun:
            row["warm"] = _numbers(ingest_paths(inputs, settings, workers=workers))
        return row
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _numbers(s: IngestSummary) -> dict[str, Any]:
    articles = s.added + s.updated + s.unchanged
    return {
        "seconds": round(s.elapsed_s, 3), "articles": articles, "added": s.added,
        "unchanged": s.unchanged, "figures": s.figures, "figures_with_images": s.figures_with_images,
        "skipped": s.skipped, "figures_per_s": round(s.figures_per_s, 2),
        "articles_per_s": round(articles / s.elapsed_s, 2) if s.elapsed_s else 0.0,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'corpus':<28}{'run':<6}{'articles':>9}{'figures':>9}{'skipped':>8}{'seconds':>9}" \
           f"{'figures/s':>11}{'articles/s':>11}"
    print(head)
    print("-" * len(head))
    for row in rows:
        for run in ("cold", "warm"):
            if run in row:
                r = row[run]
                print(f"{row['corpus']:<28}{run:<6}{r['articles']:>9}{r['figures']:>9}"
                      f"{r['skipped']:>8}{r['seconds']:>9.2f}{r['figures_per_s']:>11.1f}"
                      f"{r['articles_per_s']:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = min(args.synthetic, 20) if args.quick else args.synthetic
    workers = 1 if args.quick and args.workers is None else args.workers
    rerun = not args.quick
    rows = []
    if n > 0:
        corpus = synthetic_corpus(n, args.seed, args.synth_dir)
        rows.append(measure(f"synthetic ({n})", synthetic_inputs(corpus, n, args.seed), workers,
                            rerun))
    for extra in args.packages:
        rows.append(measure(str(extra), [extra], workers, rerun))
    if not args.no_real and not args.quick:
        rows.append(measure("real shared fixtures", [SHARED / p for p in REAL_INPUTS], workers,
                            rerun))
    result = {
        "benchmark": "ingest", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {"synthetic": n, "seed": args.seed, "workers": workers,
                       "quick": args.quick, "packages": [str(p) for p in args.packages],
                       "real": not args.no_real and not args.quick,
                       "image_max_side": Settings().image_max_side},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(rows)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":  # required: ingest workers start from a fresh interpreter
    sys.exit(main())
