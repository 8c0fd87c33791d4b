"""Soak test: N concurrent clients against a real uvicorn server over a real small index.

Each client loops over a mix of text (dense, hybrid, keyword), image-upload, filtered and
"similar" searches plus figure/thumbnail fetches for ``--duration`` seconds. Reported: requests,
errors (any non-200 answer or transport error), throughput, p50/p95/p99/max latency overall and
per kind, and the server's resident memory (from /proc) after warm-up, at the end and at peak.

    .venv/bin/python bench/soak.py --duration 60 --clients 32      # the full run
    .venv/bin/python -m bench.soak --duration 5 --clients 4        # smoke

Without ``--data-dir`` it builds a data dir in a temporary directory from the real PMC figures
of ``../shared/data/pmc-figures`` (the real ``figsearch ingest`` of figures.jsonl, embedding with
``--model`` - default ``figclip-mini``, randomly initialised, fine for load - and
:func:`indexer.build.build_version`). Writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``figsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, print_figures, write_result  # noqa: E402
from figsearch.netutil import free_port, wait_for_http  # noqa: E402

SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO_ROOT.parent / "shared")) / "data"
QUERIES = ["MAPK signalling pathway", "interferon response to viral RNA", "apoptosis caspase",
           "insulin receptor", "coronavirus replication cycle", "T cell receptor activation",
           "NF-kB inflammation", "mitochondrial autophagy", "TLR4 signalling in macrophages",
           "spike protein ACE2 entry"]
KINDS = ("dense", "hybrid", "keyword", "image", "filtered", "similar", "figure", "thumbnail")


# -- data ---------------------------------------------------------------------------------------
def embed_store(data_dir: Path, encoder: Any, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of every stored figure image, encoded in batches."""
    from figsearch.imaging import open_image
    from figsearch.store import FigureStore

    store = FigureStore(data_dir / "figsearch.db")
    ids: list[int] = []
    chunks: list[np.ndarray] = []
    try:
        for rows in store.iter_figure_rows(batch=batch):
            images = [open_image((data_dir / "images" / str(rel)).read_bytes()) for _, rel, _ in rows]
            chunks.append(encoder.encode_images(images))
            ids += [fid for fid, _, _ in rows]
    finally:
        store.close()
    return np.concatenate(chunks).astype(np.float32), np.asarray(ids, np.int64)


def build_data_dir(data_dir: Path, model: str) -> dict[str, Any]:
    """Ingest the real PMC figures, embed them with ``model`` and build an index version."""
    from figsearch.core.config import Settings
    from figsearch.encoders import load_model
    from indexer.build import build_version
    from indexer.ingest import ingest_paths

    t0 = time.perf_counter()
    summary = ingest_paths([SHARED / "pmc-figures" / "figures.jsonl"], Settings(data_dir=data_dir),
                           workers=1)
    encoder = load_model(model, device="cpu")
    t1 = time.perf_counter()
    vectors, ids = embed_store(data_dir, encoder)
    build_version(data_dir / "indexes", vectors, ids, model_spec=model,
                  model_key=encoder.model_key, use_gpu=False)
    return {"figures": int(len(ids)), "ingest_s": round(t1 - t0, 1),
            "embed_build_s": round(time.perf_counter() - t1, 1), "articles": summary.added}


# -- server -------------------------------------------------------------------------------------
def start_server(data_dir: Path, model: str, port: int, log: Any = None) -> subprocess.Popen[bytes]:
    """``figsearch serve`` (one uvicorn worker, in this process group's child)."""
    env = {**os.environ, "FIGSEARCH_MODEL": model, "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    cmd = [sys.executable, "-m", "figsearch.cli", "serve", "--data-dir", str(data_dir),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Poll ``/readyz`` until 200; raise if the server exits or the time runs out."""
    wait_for_http(f"{base_url}/readyz", process=proc, timeout=timeout)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``/proc/<pid>/status`` VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- load ---------------------------------------------------------------------------------------
@dataclass
class Workload:
    """What the clients ask for: queries, upload images, figure ids and filter values."""

    images: list[bytes]
    figure_ids: list[int]
    journals: list[str]
    years: tuple[int, int]

    def request(self, kind: str, i: int) -> dict[str, Any]:
        """The httpx request arguments of the ``i``-th request of ``kind``."""
        q = QUERIES[i % len(QUERIES)]
        fid = self.figure_ids[i % len(self.figure_ids)]
        if kind in ("dense", "hybrid", "keyword"):
            return {"method": "GET", "url": "/v1/search", "params": {"q": q, "k": 10, "mode": kind}}
        if kind == "image":
            return {"method": "POST", "url": "/v1/search/image", "params": {"k": 10},
                    "files": {"image": ("q.jpg", self.images[i % len(self.images)], "image/jpeg")}}
        if kind == "filtered":
            lo, hi = self.years
            params: dict[str, Any] = {"q": q, "k": 10, "year_from": lo + i % max(1, hi - lo + 1),
                                      "year_to": hi, "license": "commercial" if i % 2 else "any"}
            if self.journals and i % 3 == 0:
                params["journal"] = self.journals[i % len(self.journals)]
            return {"method": "GET", "url": "/v1/search", "params": params}
        if kind == "similar":
            return {"method": "GET", "url": f"/v1/figures/{fid}/similar", "params": {"k": 10}}
        if kind == "figure":
            return {"method": "GET", "url": f"/v1/figures/{fid}"}
        return {"method": "GET", "url": f"/v1/figures/{fid}/thumbnail"}


async def workload_from(base_url: str, images: list[bytes]) -> Workload:
    """Figure ids and filter values read from the running API itself."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        facets = (await http.get("/v1/facets")).json()
        hits = (await http.get("/v1/search", params={"q": "pathway", "k": 50, "mode": "keyword"})).json()
    ids = [h["id"] for h in hits["results"]] or [1]
    years = facets.get("years") or {}
    span = (int(years.get("min") or 2000), int(years.get("max") or 2024))
    return Workload(images, ids, list(facets.get("journals") or [])[:5], span)


@dataclass
class LoadStats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)
    rss_samples: list[float] = field(default_factory=list)


async def _client(http: httpx.AsyncClient, work: Workload, stats: LoadStats, n: int,
                  stop: float) -> None:
    i = n
    while time.perf_counter() < stop:
        kind = KINDS[i % len(KINDS)]
        t0 = time.perf_counter()
        try:
            r = await http.request(**work.request(kind, i))
            if r.status_code != 200:
                stats.errors.append(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as exc:
            stats.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        stats.latencies[kind].append(time.perf_counter() - t0)
        i += 7  # walk the kinds and the query/figure lists in a different order per client


async def _sample_rss(pid: int, stats: LoadStats, stop: float) -> None:
    while time.perf_counter() < stop:
        stats.rss_samples.append(rss_mb(pid))
        await asyncio.sleep(0.5)


def _pct(sorted_ms: list[float], q: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 1) if sorted_ms else 0.0


def _mid(samples: list[float], default: float) -> float:
    return samples[len(samples) // 2] if samples else default


def summarise(stats: LoadStats, elapsed: float, rss_start: float, rss_end: float) -> dict[str, Any]:
    """Flat figures: counts, rate, latency percentiles (all and per kind), memory."""
    everything = sorted(x * 1000 for v in stats.latencies.values() for x in v)
    figures: dict[str, Any] = {
        "requests": len(everything), "errors": len(stats.errors),
        "requests_per_s": round(len(everything) / elapsed, 1),
        "p50_ms": _pct(everything, 0.5), "p95_ms": _pct(everything, 0.95),
        "p99_ms": _pct(everything, 0.99), "max_ms": round(everything[-1], 1) if everything else 0.0,
        "rss_after_warmup_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(max(stats.rss_samples + [rss_end]), 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        # the second half's growth tells a leak (steady climb) from warm-up (early plateau)
        "rss_mid_mb": round(_mid(stats.rss_samples, rss_start), 1),
        "rss_growth_second_half_mb": round(rss_end - _mid(stats.rss_samples, rss_start), 1),
    }
    for kind, values in stats.latencies.items():
        ms = sorted(x * 1000 for x in values)
        figures[f"{kind}_requests"] = len(ms)
        figures[f"{kind}_p99_ms"] = _pct(ms, 0.99)
    return figures


async def run_soak(base_url: str, pid: int, clients: int, duration: float, images: list[bytes],
                   warmup: float = 3.0) -> tuple[dict[str, Any], list[str]]:
    """Warm up, then ``clients`` closed-loop clients for ``duration`` s; (figures, errors)."""
    work = await workload_from(base_url, images)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        warm = LoadStats()
        stop = time.perf_counter() + warmup
        await asyncio.gather(*(_client(http, work, warm, n, stop) for n in range(clients)))
        stats = LoadStats(errors=warm.errors)
        rss_start = rss_mb(pid)
        t0 = time.perf_counter()
        stop = t0 + duration
        await asyncio.gather(_sample_rss(pid, stats, stop),
                             *(_client(http, work, stats, n, stop) for n in range(clients)))
        elapsed = time.perf_counter() - t0
    figures = summarise(stats, elapsed, rss_start, rss_mb(pid))
    figures["warmup_requests"] = sum(len(v) for v in warm.latencies.values())
    return figures, stats.errors


def query_images(n: int = 8) -> list[bytes]:
    """A few real PMC figure JPEGs to upload as image queries."""
    return [p.read_bytes() for p in sorted((SHARED / "pmc-figures" / "images").glob("*.jpg"))[:n]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--model", default="figclip-mini", help="model spec (random init is fine)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="use this data dir (built from the shared PMC figures if it has no index)")
    # Growth allowed over the run (allocator warm-up included) and over its second half, where
    # a leak keeps climbing while warm-up has flattened out (60 s run: +108 MiB, then +11 MiB).
    p.add_argument("--max-rss-growth-mb", type=float, default=128.0,
                   help="fail (exit 1) when the server's RSS grows more over the run")
    p.add_argument("--max-rss-growth-second-half-mb", type=float, default=32.0,
                   help="fail (exit 1) when it grows more over the run's second half")
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="figsearch-soak-") if args.data_dir is None else None
    data_dir = args.data_dir or Path(tmp.name)  # type: ignore[union-attr]
    build: dict[str, Any] = {}
    if not (data_dir / "indexes" / "current").exists():
        print(f"building a data dir from the real PMC figures in {data_dir} ...", flush=True)
        build = build_data_dir(data_dir, args.model)
    port = free_port()
    log = open(data_dir / "soak-server.log", "ab")  # noqa: SIM115 - closed in finally
    proc = start_server(data_dir, args.model, port, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc)
        figures, errors = asyncio.run(run_soak(base_url, proc.pid, args.clients, args.duration,
                                               query_images()))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    figures.update({f"build_{k}": v for k, v in build.items()})
    for line in errors[:10]:
        print(f"error: {line}", file=sys.stderr)
    params = {"duration_s": args.duration, "clients": args.clients, "model": args.model,
              "kinds": ",".join(KINDS), "workers": 1}
    print_figures("soak", figures)
    path = write_result("soak", params, figures)
    print(f"soak: {figures['requests']} requests from {args.clients} clients in "
          f"{args.duration:g} s, {figures['errors']} errors, p99 {figures['p99_ms']} ms, "
          f"RSS {figures['rss_after_warmup_mb']} -> {figures['rss_end_mb']} MiB; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    over = [f"{name} {figures[name]} MiB > {limit} MiB" for name, limit in (
        ("rss_growth_mb", args.max_rss_growth_mb),
        ("rss_growth_second_half_mb", args.max_rss_growth_second_half_mb),
    ) if figures[name] > limit]
    for line in over:
        print(f"over the limit: {line}", file=sys.stderr)
    return 1 if errors or over else 0


if __name__ == "__main__":
    sys.exit(main())
