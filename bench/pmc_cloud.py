"""PMC Cloud source: objects/s and figures/s from a local S3 server, and the full-PMC projection.

The sample bucket (``../shared/data/pmc-cloud/bucket-day1``: 20 real article versions) is
copied ``--copies`` times under new PMCIDs into moto's S3 server on loopback, with an inventory
listing them all. Then, per concurrency level:

- *fetch*: the S3 side alone: every version's JSON, XML and figure images fetched, md5-checked
  and written to the download cache (``Planner.plan`` in a thread pool), no image work;
- *end to end*: ``ingest_cloud`` from the inventory into a fresh store (fetch + parse +
  normalise images + write), ``--workers`` parse processes.

The projection uses only these measurements: requests and bytes per article version, inventory
bytes per row, the inventory diff's rows/s (SQLite staging, measured on ``--diff-rows`` rows),
end-to-end figures/s; for ~8 M versions (backfill) and a nightly increment, at a stated request
rate cap. Results: ``bench/results/pmc_cloud.json``.

    python -m bench.pmc_cloud                      # ~1-2 minutes
    python -m bench.pmc_cloud --copies 1 --concurrency 1,4 --quick
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, print_figures, write_result  # noqa: E402

SAMPLE = Path(os.environ.get("FIGSEARCH_SHARED", REPO_ROOT.parent / "shared")) / "data" / "pmc-cloud"
BUCKET = "pmc-oa-opendata"
DAY = "2026-11-30T01-00Z"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=5, help="copies of the 20-version sample")
    p.add_argument("--concurrency", default="1,4,16", help="comma list of concurrency levels")
    p.add_argument("--e2e-concurrency", default="4,16",
                   help="levels for the end-to-end ingest (CPU-bound; fewer levels)")
    p.add_argument("--workers", type=int, default=2, help="parse processes end to end")
    p.add_argument("--rate-cap", type=float, default=50.0,
                   help="request-rate cap (req/s) for the projection (the setting's default)")
    p.add_argument("--versions", type=int, default=8_000_000, help="backfill size (versions)")
    p.add_argument("--nightly", type=int, default=3000, help="versions changed per night")
    p.add_argument("--diff-rows", type=int, default=200_000,
                   help="synthetic inventory rows for the staging/diff rate")
    p.add_argument("--quick", action="store_true", help="smoke run: no end-to-end levels")
    return p.parse_args(argv)


def _put(client: Any, key: str, data: bytes) -> str:
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return hashlib.md5(data).hexdigest()


def load_copies(client: Any, copies: int) -> list[list[str]]:
    """The sample, ``copies`` times under new PMCIDs, plus an inventory; returns its rows."""
    from indexer.pmc_cloud import INVENTORY_PREFIX
    from indexer.s3_sample import create_public_bucket

    create_public_bucket(client, BUCKET)
    day1 = SAMPLE / "bucket-day1"
    uploads = []
    for copy in range(copies):
        for meta_path in sorted((day1 / "metadata").glob("*.json")):
            vk = meta_path.stem
            pmcid = vk.split(".")[0]
            new_id = f"PMC{90_000_000 + copy * 1_000_000 + int(pmcid[3:]) % 1_000_000}"
            uploads.append((vk, pmcid, new_id))

    def upload(item: tuple[str, str, str]) -> list[str]:
        vk, pmcid, new_id = item
        new_vk = f"{new_id}.1"
        meta = json.loads((day1 / "metadata" / f"{vk}.json").read_text())
        xml = (day1 / vk / f"{vk}.xml").read_bytes().replace(pmcid.encode(), new_id.encode())
        meta.update(pmcid=new_id, text_url=None, pdf_url=None,
                    xml_url=f"s3://{BUCKET}/{new_vk}/{new_vk}.xml?md5="
                    + _put(client, f"{new_vk}/{new_vk}.xml", xml))
        media = []
        for url in meta["media_urls"]:
            name = url.split("?")[0].rsplit("/", 1)[1]
            md5 = url.split("md5=")[1]  # keep the sample's md5s (its corrupt image stays corrupt)
            _put(client, f"{new_vk}/{name}", (day1 / vk / name).read_bytes())
            media.append(f"s3://{BUCKET}/{new_vk}/{name}?md5={md5}")
        meta["media_urls"] = media
        etag = _put(client, f"metadata/{new_vk}.json", json.dumps(meta).encode())
        return [BUCKET, f"metadata/{new_vk}.json", "2026-11-29T10:00:00.000Z", etag]

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(upload, uploads))
    body = gzip.compress("".join(",".join(f'"{c}"' for c in r) + "\n" for r in rows).encode())
    key = f"{INVENTORY_PREFIX}data/bench.csv.gz"
    md5 = _put(client, key, body)
    _put(client, f"{INVENTORY_PREFIX}{DAY}/manifest.json", json.dumps(
        {"files": [{"key": key, "size": len(body), "MD5checksum": md5}]}).encode())
    return rows


def measure_fetch(url: str, rows: list[list[str]], concurrency: int, tmp: Path) -> dict[str, float]:
    """The S3 side alone: plan (JSON, policy, XML, figure images) every version."""
    from indexer.pmc_cloud import Bucket, CloudLimits, Planner, Policy

    bucket = Bucket(BUCKET, url, concurrency, max_requests_per_s=0)
    cache = tmp / f"fetch-{concurrency}"
    planner = Planner(bucket, Policy(), cache, CloudLimits())
    groups = [(r[1].split("/")[1].split(".")[0], {1: r[3]}) for r in rows]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        plans = list(pool.map(lambda g: planner.plan(g[0], g[1], DAY), groups))
    elapsed = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    objects = sum(p.objects for p in plans)
    return {"seconds": elapsed, "versions": len(plans), "objects": objects,
            "requests": bucket.requests, "bytes": bucket.bytes,
            "figures": sum(p.figures for p in plans),
            "objects_per_s": objects / elapsed, "versions_per_s": len(plans) / elapsed}


def measure_e2e(url: str, concurrency: int, workers: int, tmp: Path) -> dict[str, float]:
    """``ingest_cloud`` from the inventory into a fresh store."""
    from figsearch.core.config import Settings
    from indexer.pmc_cloud import ingest_cloud

    settings = Settings(data_dir=tmp / f"e2e-{concurrency}", pmc_endpoint_url=url,
                        pmc_bucket=BUCKET, pmc_max_requests_per_s=0, ingest_workers=workers,
                        download_concurrency=concurrency)
    report = ingest_cloud(settings, progress=False)
    c = report.cloud
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    return {"seconds": c.elapsed_s, "objects": c.objects, "requests": c.requests,
            "figures": report.ingest.figures_with_images, "objects_per_s": c.objects / c.elapsed_s,
            "figures_per_s": report.ingest.figures_with_images / c.elapsed_s,
            "versions_per_s": c.versions_ingested / c.elapsed_s}


def measure_diff(rows: int, tmp: Path) -> float:
    """Inventory rows/s through staging + diff against a store that already holds them all."""
    from figsearch.store import FigureStore
    from indexer.pmc_cloud import Staging

    store = FigureStore(tmp / "diff.db")
    data = [(f"PMC{i}.1", f"PMC{i}", 1, f"{i:032x}") for i in range(rows)]
    with sqlite3.connect(store.path) as con:  # setup, not measured: half already ingested
        con.executemany("INSERT INTO pmc_versions VALUES (?, ?, ?, ?, ?, 'ingested', '', "
                        "'2026-11-30 00:00:00')", [(*row, DAY) for row in data[: rows // 2]])
    start = time.perf_counter()
    staging = Staging(tmp / "staging.sqlite")
    staging.load(data)
    todo = staging.diff(store.path)
    elapsed = time.perf_counter() - start
    staging.close()
    store.close()
    assert todo == rows - rows // 2
    return rows / elapsed


def project(args: argparse.Namespace, fetch: dict[str, float], e2e: dict[str, float] | None,
            rows: list[list[str]], inventory_bytes: int, diff_rows_per_s: float) -> dict[str, Any]:
    """Backfill and nightly figures from the measured per-version numbers."""
    req_per_version = fetch["requests"] / fetch["versions"]
    bytes_per_version = fetch["bytes"] / fetch["versions"]
    figures_per_version = fetch["figures"] / fetch["versions"]
    inv_bytes_per_row = inventory_bytes / len(rows)
    out: dict[str, Any] = {
        "requests_per_version": round(req_per_version, 2),
        "bytes_per_version": round(bytes_per_version),
        "figures_per_version": round(figures_per_version, 2),
        "inventory_bytes_per_row": round(inv_bytes_per_row, 1),
        "diff_rows_per_s": round(diff_rows_per_s),
        "rate_cap_req_s": args.rate_cap,
    }
    n = args.versions
    inventory_gb = n * inv_bytes_per_row / 1e9
    out["backfill_requests"] = round(n * req_per_version)
    out["backfill_gb"] = round(n * bytes_per_version / 1e9 + inventory_gb, 1)
    out["backfill_hours_at_cap"] = round(n * req_per_version / args.rate_cap / 3600, 1)
    out["backfill_figures"] = round(n * figures_per_version)
    if e2e:
        out["backfill_hours_cpu_bound_here"] = round(
            n * figures_per_version / e2e["figures_per_s"] / 3600, 1)
    out["inventory_gb_per_night"] = round(inventory_gb, 2)
    out["inventory_diff_minutes"] = round(n / diff_rows_per_s / 60, 1)
    k = args.nightly
    out["nightly_versions"] = k
    out["nightly_requests"] = round(k * req_per_version + 3)
    out["nightly_gb"] = round(k * bytes_per_version / 1e9 + inventory_gb, 2)
    out["nightly_minutes_at_cap"] = round((k * req_per_version + 3) / args.rate_cap / 60, 1)
    if e2e:
        out["nightly_minutes_cpu_bound_here"] = round(
            k * figures_per_version / e2e["figures_per_s"] / 60, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from indexer.s3_sample import S3TestServer, writer_client

    server = S3TestServer()
    tmp = Path(tempfile.mkdtemp(prefix="figsearch-bench-pmc-"))
    figures: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        rows = load_copies(writer_client(server.url), args.copies)
        print(f"loaded {len(rows)} versions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        inventory_bytes = len(gzip.compress("".join(
            ",".join(f'"{c}"' for c in r) + "\n" for r in rows).encode()))
        fetches = {}
        for c in [int(x) for x in args.concurrency.split(",")]:
            fetches[c] = measure_fetch(server.url, rows, c, tmp)
            figures[f"fetch_c{c}_objects_per_s"] = round(fetches[c]["objects_per_s"], 1)
            figures[f"fetch_c{c}_versions_per_s"] = round(fetches[c]["versions_per_s"], 1)
        e2e_best = None
        if not args.quick:
            for c in [int(x) for x in args.e2e_concurrency.split(",")]:
                e2e = measure_e2e(server.url, c, args.workers, tmp)
                figures[f"e2e_c{c}_objects_per_s"] = round(e2e["objects_per_s"], 1)
                figures[f"e2e_c{c}_figures_per_s"] = round(e2e["figures_per_s"], 1)
                if e2e_best is None or e2e["figures_per_s"] > e2e_best["figures_per_s"]:
                    e2e_best = e2e
        diff_rate = measure_diff(args.diff_rows, tmp)
        any_fetch = next(iter(fetches.values()))
        figures.update(project(args, any_fetch, e2e_best, rows, inventory_bytes, diff_rate))
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    params = {"copies": args.copies, "versions_served": len(rows), "concurrency":
              args.concurrency, "e2e_concurrency": args.e2e_concurrency, "workers": args.workers,
              "rate_cap": args.rate_cap, "backfill_versions": args.versions,
              "nightly_versions": args.nightly, "quick": args.quick,
              "server": "moto S3 server on loopback (same machine; 2 shared cores, noisy)"}
    write_result("pmc_cloud", params, figures)
    print_figures("pmc_cloud", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
