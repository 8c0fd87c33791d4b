"""Memory and text-query latency of a *default* ``figsearch serve`` (no backend setting), for
comparing two checkouts on the same data dir (issue 24: the onnx backend by default).

``--build`` makes the data dir once, with the checkout this script runs from: the 189 real PMC
figures of ``shared/data/pmc-figures`` ingested, indexed with ``figclip-mini`` (the demo's
model architecture, seeded initial weights: same size and speed as the trained one) and the
default caption model; a build of this checkout also writes the ONNX exports. Then each run
starts ``figsearch serve --workers 1`` from ``--repo`` (its code, on loopback), sends 10 warm-up
and ``--queries`` distinct text queries (real PMC caption openings from ROCO, so the query cache
never answers; default mode), one at a time, and reads the server's memory from ``/proc``.

    .venv/bin/python -m bench.serve_default --build --data-dir /tmp/serve-default
    .venv/bin/python -m bench.serve_default --data-dir /tmp/serve-default --repo /work/main \\
        --name serve_default_before
    .venv/bin/python -m bench.serve_default --data-dir /tmp/serve-default --repo . \\
        --name serve_default_after
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import smaps_rollup_kb, tree_pids, write_result
from figsearch.netutil import free_port, wait_for_http

SHARED = Path(os.environ.get("FIGSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODEL = "figclip-mini"
WARM_UP = 10


def build(data_dir: Path) -> None:
    """Ingest the shared real figures and build one index version (with this checkout)."""
    from figsearch.core.config import Settings
    from indexer.indexing import index_all
    from indexer.ingest import ingest_paths

    settings = Settings(data_dir=data_dir, device="cpu", num_workers=0)
    ingest_paths([SHARED / "data" / "pmc-figures" / "figures.jsonl"], settings, workers=1)
    report = index_all(settings, MODEL, progress=False)
    print(report.line() if report else "no report", file=sys.stderr)


def queries(n: int) -> list[str]:
    """``n`` + warm-up distinct query texts: the first words of real PMC captions."""
    seen: dict[str, None] = {}
    with (SHARED / "data" / "roco" / "roco_pmc_figures.csv").open(newline="") as fh:
        for row in itertools.islice(csv.DictReader(fh), 5000):
            words = row["caption"].split()[:6]
            if len(words) >= 3:
                seen.setdefault(" ".join(words), None)
            if len(seen) >= n + WARM_UP:
                break
    return list(seen)


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS, peak RSS (MiB) summed over the server's process tree (from /proc)."""
    out = {"rss_mb": 0.0, "pss_mb": 0.0, "peak_rss_mb": 0.0}
    for p in tree_pids(pid):
        kb = smaps_rollup_kb(p)
        out["rss_mb"] += kb.get("Rss", 0) / 1024
        out["pss_mb"] += kb.get("Pss", 0) / 1024
        status = Path(f"/proc/{p}/status").read_text().splitlines()
        hwm = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
        out["peak_rss_mb"] += hwm / 1024
    return {k: round(v, 1) for k, v in out.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server's process tree so far (from /proc), threads
    that only spin included: what a query costs the machine, not only its latency."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def measure(data_dir: Path, repo: Path, n: int, settings: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """Start a default server from ``repo`` (plus ``settings``, FIGSEARCH_* values), time ``n``
    text queries, read its memory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIGSEARCH_")}
    env.update({"PYTHONPATH": str(repo), "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0",
                **(settings or {})})
    port = free_port()
    cmd = [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(data_dir),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=repo, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=600)
        ready_s = time.perf_counter() - started
        texts = queries(n)
        latencies = []
        with httpx.Client(base_url=base, timeout=120) as http:
            for i, text in enumerate(texts):
                if i == WARM_UP:
                    cpu_before = cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                r = http.get("/v1/search", params={"q": text, "k": 10})
                r.raise_for_status()
                if i >= WARM_UP:
                    latencies.append((time.perf_counter() - t0) * 1000)
            cpu_ms = (cpu_seconds(proc.pid) - cpu_before) * 1000 / max(len(latencies), 1)
            stats = http.get("/v1/stats").json()
        mem = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    cuts = statistics.quantiles(latencies, n=100)
    return {"repo": str(repo), "encoder_backend": stats["encoder_backend"],
            "signals": stats["signals"], "model_key": stats["model_key"],
            "queries": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(cuts[94], 2), "server_cpu_ms_per_query": round(cpu_ms, 1),
            "ready_s": round(ready_s, 1), **mem}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--build", action="store_true", help="make the data dir and stop")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose `figsearch serve` is measured")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--name", default="serve_default")
    parser.add_argument("--setting", action="append", default=[], metavar="FIGSEARCH_X=VALUE",
                        help="a setting for the server (not the default any more: say so in --name)")
    args = parser.parse_args(argv)
    if args.build:
        build(args.data_dir)
        return 0
    settings = dict(s.split("=", 1) for s in args.setting)
    figures = measure(args.data_dir, args.repo.resolve(), args.queries, settings)
    command = " ".join(["python -m bench.serve_default", *(argv or sys.argv[1:])])
    print(figures)
    write_result(args.name, {"command": command, "data_dir": str(args.data_dir),
                             "queries": args.queries, "model": MODEL, "workers": 1,
                             "settings": settings}, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
