"""Server memory per uvicorn worker count, with and without the memory-mapped index.

Reuses (or builds) the synthetic data dir of :mod:`bench.api`, starts ``figsearch serve
--workers W`` for each configuration, sends ``--requests`` dense-text and raw-vector queries, and
reads every server process's ``/proc/<pid>/smaps_rollup``: RSS (what ``top`` shows, counting
shared index pages once per process), PSS (shared pages split between the processes that map
them: the fair sum) and the private anonymous memory (model, heap: not shared), and prints
each process's memory by mapping (``breakdown_mb``: heap, index files, model files, SQLite,
torch's libraries, other libraries). Writes ``bench/results/<--name>.json`` (default ``rss``);
the ``FIGSEARCH_*`` settings in the environment (e.g. ``FIGSEARCH_CPU_PRECISION``) reach the
server and are recorded with the parameters.

    .venv/bin/python -m bench.rss --n 100000 --data-dir /tmp/bench-100k
    .venv/bin/python -m bench.rss --n 1000000 --data-dir /tmp/i15m-1m --configs 1:mmap,2:mmap \
        --name rss_1m        # 1M store rows take ~3 min to write, the index ~5 min to build
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.api import QUERIES, backend_env, ensure_onnx_export, prepared_data_dir
from bench.common import markdown_table, smaps_rollup_kb, tree_pids, write_result
from bench.peer import start_figsearch, stop, wait_all_workers
from figsearch.netutil import free_port, wait_for_http


def memory_mb(pid: int) -> dict[str, float]:
    """Summed Rss, Pss and private anonymous memory (MiB) of the server's processes that hold
    more than 50 MiB (the workers, and the one process when there is one)."""
    total = {"rss_mb": 0.0, "pss_mb": 0.0, "anon_mb": 0.0, "processes": 0}
    for p in tree_pids(pid):
        kb = smaps_rollup_kb(p)
        if kb.get("Rss", 0) < 50 * 1024:
            continue  # uvicorn's supervisor and the multiprocessing helper
        total["rss_mb"] += kb.get("Rss", 0) / 1024
        total["pss_mb"] += kb.get("Pss", 0) / 1024
        total["anon_mb"] += kb.get("Anonymous", 0) / 1024
        total["processes"] += 1
    return {k: round(v, 1) for k, v in total.items()}


#: smaps mapping -> category, first match wins (``breakdown_mb``).
CATEGORIES = (
    ("index", ("/indexes/",)),
    ("model files", ("/models/",)),
    ("store (sqlite)", (".db", ".db-wal", ".db-shm")),
    ("torch libs", ("/torch/", "/nvidia/", "/triton/")),
    ("onnxruntime libs", ("/onnxruntime/",)),
    ("other libs", (".so",)),
    ("heap / anonymous", ("[heap]", "")),
)


def mapping_category(name: str) -> str:
    """Category of one smaps mapping name (its path, ``[heap]``, or empty for anonymous)."""
    for label, needles in CATEGORIES:
        if any(needle in name if needle else not name or name.startswith("[")
               for needle in needles):
            return label
    return "other files"


def breakdown_mb(pid: int) -> dict[str, dict[str, float]]:
    """Rss / Pss / Anonymous (MiB) of one process per mapping category, from /proc/<pid>/smaps:
    where the memory goes (model weights, index, vectors, SQLite, torch's libraries)."""
    out: dict[str, dict[str, float]] = {}
    cat = "other files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            cat = mapping_category(" ".join(head[5:]) if len(head) > 5 else "")
            continue
        if head and head[0] in ("Rss:", "Pss:", "Anonymous:", "AnonHugePages:"):
            slot = out.setdefault(cat, {"rss_mb": 0.0, "pss_mb": 0.0, "anon_mb": 0.0,
                                        "thp_mb": 0.0})
            key = {"Rss:": "rss_mb", "Pss:": "pss_mb", "Anonymous:": "anon_mb",
                   "AnonHugePages:": "thp_mb"}[head[0]]
            slot[key] += int(head[1]) / 1024
    return {c: {k: round(v, 1) for k, v in d.items()} for c, d in sorted(out.items())}


def worker_pids(pid: int) -> list[int]:
    """The server's processes that hold more than 50 MiB (the workers, or the one process)."""
    out = []
    for p in tree_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmRSS:")), 0)
        if rss >= 50 * 1024:
            out.append(p)
    return out


def send(http: httpx.Client, i: int, dim: int, rng: np.random.Generator,
         patience_s: float = 900) -> None:
    """One dense-text (odd i) or raw-vector (even i) query; 503 (a worker still loading its
    index while /readyz was answered by another) is retried until ``patience_s``."""
    deadline = time.monotonic() + patience_s
    vector = rng.standard_normal(dim).tolist()
    while True:
        if i % 2:
            r = http.get("/v1/search", params={"q": QUERIES[i % len(QUERIES)], "mode": "dense"})
        else:
            r = http.post("/v1/search", json={"queries": [{"vector": vector}]})
        if r.status_code != 503 or time.monotonic() > deadline:
            r.raise_for_status()
            return
        time.sleep(1)


def load(base: str, n: int, dim: int) -> None:
    rng = np.random.default_rng(5)
    with httpx.Client(base_url=base, timeout=120) as http:
        for i in range(n):
            send(http, i, dim, rng)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--model", default="figclip-mini")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--configs", default="1:mmap,2:mmap,1:load",
                   help="workers:mmap|load[:onnx|onnx-int8-image], comma-separated (onnx: "
                        "the torch-free encoder backend, the model exported first)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--name", default="rss", help="bench/results/<name>.json")
    args = p.parse_args(argv)
    tmp, args.data_dir, spec, encoder = prepared_data_dir(args.data_dir, args.n, args.model,
                                                          "bench-rss-")
    current = args.data_dir / "indexes" / "current"
    dim = encoder.dim
    for backend in {c.split(":")[2] for c in args.configs.split(",") if c.count(":") == 2}:
        ensure_onnx_export(args.data_dir, encoder, int8_image=backend == "onnx-int8-image")
    del encoder
    index_mb = sum(f.stat().st_size for f in current.resolve().iterdir()) / 2**20
    figures: dict[str, Any] = {"index_files_mb": round(index_mb, 1)}
    rows = []
    for config in args.configs.split(","):
        workers, mode, backend = (config.split(":") + ["torch"])[:3]
        port = free_port()
        env = {"FIGSEARCH_INDEX_MMAP": str(mode == "mmap").lower(),
               **backend_env(args.data_dir, backend)}
        proc = start_figsearch(args.data_dir, spec, port, int(workers), env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{base}/readyz", process=proc, timeout=900, interval=0.5)
            wait_all_workers(base, int(workers))
            load(base, args.requests, dim)
            mem = memory_mb(proc.pid)
            parts = {p: breakdown_mb(p) for p in worker_pids(proc.pid)}
        finally:
            stop(proc)
        name = f"w{workers}_{mode}" + ("" if backend == "torch" else "_" + backend.replace("-", "_"))
        figures.update({f"{name}_{k}": v for k, v in mem.items()})
        for i, (pid, cats) in enumerate(parts.items()):  # each process by mapping category
            role = "supervisor" if pid == proc.pid and len(parts) > 1 else f"worker{i}"
            for cat, vals in cats.items():
                slug = cat.split(" ")[0]
                figures.update({f"{name}_{role}_{slug}_{k}": v for k, v in vals.items()})
            print(markdown_table([f"{role} (pid {pid}): mapping", "RSS MiB", "PSS MiB",
                                  "anon MiB", "of which huge pages"],
                                 [[c, v["rss_mb"], v["pss_mb"], v["anon_mb"], v["thp_mb"]]
                                  for c, v in cats.items()]), flush=True)
        rows.append([workers, mode, backend, mem["processes"], mem["rss_mb"], mem["pss_mb"], mem["anon_mb"]])
        print(f"{name}: {mem}", flush=True)
    print(markdown_table(["workers", "index", "encoder", "processes", "RSS MiB (sum)", "PSS MiB (sum)",
                          "private anon MiB"], rows))
    manifest = json.loads((current / "manifest.json").read_text())
    params = {"n": args.n, "model": args.model, "requests": args.requests,
              "factory": manifest["factory"], "configs": args.configs,
              "load_avg": [round(x, 1) for x in os.getloadavg()],
              **{k: v for k, v in os.environ.items() if k.startswith("FIGSEARCH_")
                 and k != "FIGSEARCH_BENCH_RESULTS"}}
    path = write_result(args.name, params, figures)
    print(f"rss bench: {len(rows)} configurations, n={args.n:,}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
