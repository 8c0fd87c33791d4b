"""Per-stage server time of one query at a time, read from the API's ``Server-Timing`` header.

Builds (or reuses, ``--data-dir``) the synthetic data dir of :mod:`bench.api`, starts the API
and sends ``--requests`` queries per kind one after another (no concurrency, so the stages are
not smeared by queueing): raw vector (``POST /v1/search``), dense text, hybrid text, image. For
each kind it prints the mean milliseconds per stage (tokenise, encode, search, rerank, keyword,
metadata, collapse, serialise...), the server's total and the client's round trip, and writes
``bench/results/stages.json``.

    .venv/bin/python -m bench.stages --n 200000 --data-dir /tmp/bench-200k
    .venv/bin/python -m bench.stages --n 2000 --requests 10          # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.api import (
    QUERIES,
    SHARED_FIGURES,
    prepared_data_dir,
    start_server,
    wait_ready,
)
from bench.common import markdown_table, write_result
from figsearch.netutil import free_port
from figsearch.timing import STAGES, parse_server_timing

KINDS = ("vector", "dense", "hybrid", "image")


def request_for(kind: str, i: int, images: list[bytes], vectors: np.ndarray, k: int,
                dedup: bool) -> dict[str, Any]:
    """The i-th request of a kind (queries, images and vectors cycle)."""
    flag = str(dedup).lower()
    if kind == "vector":
        body = {"queries": [{"vector": vectors[i % len(vectors)].tolist()}], "k": k, "dedup": dedup}
        return {"method": "POST", "url": "/v1/search", "json": body}
    if kind == "image":
        return {"method": "POST", "url": "/v1/search/image", "params": {"k": k, "dedup": flag},
                "files": {"image": ("q.jpg", images[i % len(images)], "image/jpeg")}}
    return {"method": "GET", "url": "/v1/search",
            "params": {"q": QUERIES[i % len(QUERIES)], "k": k, "mode": kind, "dedup": flag}}


def measure(base_url: str, kind: str, n: int, images: list[bytes], vectors: np.ndarray, k: int,
            dedup: bool) -> dict[str, float]:
    """Mean ms per stage over n sequential requests (after 3 warm-up requests)."""
    per_stage: dict[str, list[float]] = {}
    client_ms: list[float] = []
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for i in range(n + 3):
            t0 = time.perf_counter()
            r = http.request(**request_for(kind, i, images, vectors, k, dedup))
            elapsed = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            if i < 3:
                continue
            client_ms.append(elapsed)
            for name, ms in parse_server_timing(r.headers.get("server-timing", "")).items():
                per_stage.setdefault(name, []).append(ms)
    out = {name: round(statistics.fmean(v) * len(v) / n, 2) for name, v in per_stage.items()}
    out["client"] = round(statistics.median(client_ms), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="figures in the index")
    p.add_argument("--model", default="figclip-mini", help="model spec")
    p.add_argument("--requests", type=int, default=100, help="requests per kind")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--no-dedup", action="store_true", help="send dedup=false")
    p.add_argument("--data-dir", type=Path, default=None, help="reuse/keep this data dir")
    p.add_argument("--label", default="", help="a name for this run in the result ('before'...)")
    args = p.parse_args(argv)
    tmp, args.data_dir, spec, encoder = prepared_data_dir(args.data_dir, args.n, args.model,
                                                          "bench-stages-")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((64, encoder.dim)).astype(np.float32)
    del encoder
    images = [f.read_bytes() for f in sorted(SHARED_FIGURES.glob("*.jpg"))[:8]]
    port = free_port()
    # every request must do its own work: the bench repeats a dozen queries, which the API's
    # query cache would otherwise answer without the encoder
    os.environ.setdefault("FIGSEARCH_QUERY_CACHE_SIZE", "0")
    proc = start_server(args.data_dir, spec, port)
    base_url = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}
    rows = []
    try:
        wait_ready(base_url, proc)
        for kind in args.kinds.split(","):
            stages = measure(base_url, kind, args.requests, images, vectors, args.k,
                             not args.no_dedup)
            for name, ms in stages.items():
                figures[f"{kind}_{name}_ms"] = ms
            named = [s for s in (*STAGES, "total", "client") if s in stages]
            rows.append([kind, *(f"{s} {stages[s]:.2f}" for s in named)])
            print(f"{kind:>7}: " + "  ".join(f"{s} {stages[s]:.2f}" for s in named), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    width = max(len(r) for r in rows)
    print(markdown_table(["kind", *[f"stage {i}" for i in range(1, width)]],
                         [r + [""] * (width - len(r)) for r in rows]))
    params = {"n": args.n, "model": args.model, "requests": args.requests, "k": args.k,
              "dedup": not args.no_dedup, "label": args.label}
    path = write_result("stages", params, figures)
    print(f"stages bench: {len(rows)} kinds x {args.requests} requests, n={args.n:,}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
