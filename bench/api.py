"""API latency and throughput over HTTP on loopback: p50/p99 and queries/s per query kind.

Builds (or reuses, ``--data-dir``) a data dir with ``--n`` figures: store rows with synthetic
captions written with one ``executemany`` transaction, clustered synthetic vectors indexed by
:func:`indexer.build.build_version` (factory from :func:`figsearch.index.choose_factory`), then
starts ``uvicorn`` in a subprocess and fires queries with ``httpx.AsyncClient`` at concurrency
1, 8 and 32 for dense text, hybrid text, image and filtered hybrid queries (images from shared/data/pmc-figures,
uploaded as multipart). Writes ``bench/results/api.json``.

    .venv/bin/python -m bench.api                           # 1M figures (the real run)
    .venv/bin/python -m bench.api --n 2000 --duration 2     # smoke

Anchor: clip-retrieval's back end answers in ~50 ms/query at ~20 queries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import REPO_ROOT, markdown_table, write_result
from figsearch.netutil import free_port, wait_for_http

SHARED_FIGURES = REPO_ROOT.parent / "shared" / "data" / "pmc-figures" / "images"
VOCAB = (
    "kinase receptor pathway signaling apoptosis inflammation cytokine interferon mitochondria "
    "autophagy transcription phosphorylation ubiquitin proteasome membrane vesicle endosome "
    "lysosome macrophage neutrophil lymphocyte tcell bcell antibody antigen virus replication "
    "coronavirus spike protease polymerase genome sequencing expression microscopy histology "
    "tumor carcinoma metastasis angiogenesis hypoxia insulin glucose metabolism lipid cholesterol "
    "neuron synapse dopamine calcium channel potassium sodium cardiac fibrosis kidney liver lung "
    "western blot bar chart survival curve scatter plot heatmap schematic model diagram mouse "
    "zebrafish drosophila yeast bacteria biofilm plasmid crispr knockout mutant wildtype control"
).split()
QUERIES = [
    "MAPK signaling pathway", "interferon response to viral RNA", "apoptosis caspase cascade",
    "insulin receptor signaling", "western blot of phosphorylated kinase", "survival curve",
    "coronavirus replication cycle", "mitochondrial autophagy", "T cell receptor activation",
    "heatmap of gene expression", "calcium channel in neurons", "tumor hypoxia angiogenesis",
]
KINDS = ("dense", "hybrid", "image", "filtered")


# -- data ----------------------------------------------------------------------------------------
ROWS_FORMAT = "zipf-v1"  # bump when the generated rows change, so old bench stores are rebuilt


def caption_vocabulary(n_tokens: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """(words, probabilities): a Zipf-like word distribution like real captions have.

    The biomedical words of :data:`VOCAB` sit at ranks 20..2000 (in 1-15 % of captions, like
    "pathway" or "western blot" in PMC), among synthetic filler tokens.
    """
    words = np.array([f"w{i}" for i in range(n_tokens)], dtype=object)
    for j, word in enumerate(VOCAB):
        words[20 + 20 * j] = word
    ranks = np.arange(1, n_tokens + 1, dtype=np.float64)
    p = 1.0 / ranks**1.07
    return words, p / p.sum()


def write_store_rows(db_path: Path, n: int, seed: int = 0) -> None:
    """n figures over n/3 articles with 25-word Zipfian captions; one transaction."""
    from figsearch.store import FigureStore

    store = FigureStore(db_path)  # schema, FTS table and triggers
    store.close()
    rng = np.random.default_rng(seed)
    n_articles = max(1, n // 3)
    words, probs = caption_vocabulary()
    years = rng.integers(2000, 2025, n_articles)
    licenses = np.array(["cc-by", "cc-by-nc", "cc0", "cc-by-nc-nd"])[rng.integers(0, 4, n_articles)]

    cdf = np.cumsum(probs)

    def texts(count: int, length: int) -> list[str]:
        drawn = np.searchsorted(cdf, rng.random((count, length))).clip(0, len(words) - 1)
        return [" ".join(words[row]) for row in drawn]

    titles, captions = texts(n_articles, 8), texts(n, 25)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany(
            "INSERT INTO articles(id, key, pmcid, title, journal, year, license_text, license_url, "
            "license_class, source, content_hash, retracted, ingested_at) VALUES "
            "(?, ?, ?, ?, ?, ?, '', '', ?, 'bench', '', 0, '2026-01-01')",
            ((a + 1, f"bench:{a + 1}", f"PMC{9_000_000 + a}", titles[a], f"Journal {a % 50}",
              int(years[a]), str(licenses[a])) for a in range(n_articles)),
        )
        conn.executemany(
            "INSERT INTO figures(id, key, article_id, fig_id, label, caption, has_image, source, "
            "figure_type, attributes, sha256) VALUES (?, ?, ?, ?, ?, ?, 0, 'bench', ?, '{}', ?)",
            ((i + 1, f"bench:{i % n_articles + 1}/F{i}", i % n_articles + 1, f"F{i}",
              f"Figure {i % 9 + 1}", captions[i], ("diagram/pathway", "chart/plot", "heatmap")[i % 3],
              f"{i:064x}") for i in range(n)),
        )
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('bench_rows', ?)",
                     (f"{ROWS_FORMAT}:{n}",))
    conn.close()


def bench_rows_marker(db_path: Path) -> str:
    """``<format>:<n>`` of a store written by :func:`write_store_rows` ('' when none)."""
    if not db_path.exists():
        return ""
    with sqlite3.connect(db_path) as conn:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'bench_rows'").fetchone()
        except sqlite3.OperationalError:
            return ""
    return str(row[0]) if row else ""


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around random centres (like real embeddings: not uniform on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        idx = rng.integers(0, clusters, stop - start)
        out[start:stop] = centres[idx] + 0.6 * rng.standard_normal((stop - start, dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def bench_model(model: str, data_dir: Path) -> tuple[str, Any]:
    """(spec, encoder) of a model with a stable identity.

    A config name (e.g. ``figclip-mini``) is randomly initialised on every load, so its weights
    (and ``model_key``) differ between processes; it is exported once to
    ``<data_dir>/models/bench-<name>`` and that directory is used by the index and the server.
    """
    from figsearch.encoders import load_model

    if not Path(model).is_dir():
        dest = data_dir / "models" / f"bench-{model}"
        if not dest.is_dir():
            from trainer.export import export_loaded

            export_loaded(load_model(model, device="cpu").loaded, dest)
        model = str(dest)
    return model, load_model(model, device="cpu")


def onnx_export_root(data_dir: Path, int8_image: bool = False) -> Path:
    """Where the benches keep ONNX exports: float32 towers, or an int8 image tower."""
    return data_dir / "models" / ("onnx-int8-image" if int8_image else "onnx")


#: encoder backends a bench can serve with: torch, or an ONNX export (float32 towers, or its
#: image tower in int8)
BACKENDS = ("torch", "onnx", "onnx-int8-image")


def backend_env(data_dir: Path, backend: str) -> dict[str, str]:
    """The server settings of one of :data:`BACKENDS`."""
    if backend == "torch":
        return {"FIGSEARCH_ENCODER_BACKEND": "torch"}
    return {"FIGSEARCH_ENCODER_BACKEND": "onnx",
            "FIGSEARCH_ONNX_DIR": str(onnx_export_root(data_dir, backend == "onnx-int8-image"))}


def ensure_onnx_export(data_dir: Path, encoder: Any, int8_image: bool = False) -> Path:
    """The ONNX export of ``encoder`` under :func:`onnx_export_root` (made on first use), for
    servers run with ``FIGSEARCH_ENCODER_BACKEND=onnx`` and ``FIGSEARCH_ONNX_DIR`` there."""
    from figsearch.onnx_encoder import OnnxExportMissing, find_export
    from figsearch.onnx_export import export_clip

    root = onnx_export_root(data_dir, int8_image)
    try:
        return find_export(root, encoder.model_key)
    except OnnxExportMissing:
        return export_clip(encoder, root, int8_image=int8_image)


def stamp_manifest(version_dir: Path, spec: str, model_key: str) -> None:
    """Record the bench model in the manifest of a reused index (synthetic vectors belong to no
    model, so any model of the same dimension may query them)."""
    import json

    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    if manifest.get("model_key") != model_key:
        manifest.update(model_spec=spec, model_key=model_key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(path)


def ensure_store_rows(data_dir: Path, n: int) -> float | None:
    """Write the bench store unless one with the same format and n exists; seconds or None."""
    db = data_dir / "figsearch.db"
    if bench_rows_marker(db) == f"{ROWS_FORMAT}:{n}":
        return None
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    write_store_rows(db, n)
    return round(time.perf_counter() - t0, 1)


def build_index(data_dir: Path, n: int, spec: str, encoder: Any,
                factory: str | None) -> dict[str, Any]:
    """An index version of n clustered vectors for ``encoder``; returns build figures."""
    from indexer.build import build_version

    vectors = clustered_vectors(n, encoder.dim)
    t1 = time.perf_counter()
    version = build_version(data_dir / "indexes", vectors, np.arange(1, n + 1, dtype=np.int64),
                            model_spec=spec, model_key=encoder.model_key, factory=factory,
                            use_gpu=False)
    import json

    manifest = json.loads((version / "manifest.json").read_text())
    return {"index_build_s": round(time.perf_counter() - t1, 1), "factory": manifest["factory"],
            "dim": encoder.dim}


# -- server ----------------------------------------------------------------------------------------

def prepared_data_dir(data_dir: Path | None, n: int, model: str, prefix: str,
                      ) -> tuple[Any, Path, str, Any]:
    """A data dir with ``n`` store rows and a current index for ``model`` (built once, reused):
    (temporary-dir handle or None, data dir, model spec, encoder)."""
    import tempfile

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        data_dir = Path(tmp.name)
    data_dir.mkdir(parents=True, exist_ok=True)
    spec, encoder = bench_model(model, data_dir)
    ensure_store_rows(data_dir, n)
    current = data_dir / "indexes" / "current"
    if not current.exists():
        build_index(data_dir, n, spec, encoder, None)
    else:
        stamp_manifest(current.resolve(), spec, encoder.model_key)
    return tmp, data_dir, spec, encoder

def start_server(data_dir: Path, model: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FIGSEARCH_DATA_DIR": str(data_dir), "FIGSEARCH_MODEL": model,
           "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0", "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_RELOAD_INTERVAL_S": "60"}
    cmd = [sys.executable, "-m", "uvicorn", "figsearch.api.main:app_from_env", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    wait_for_http(f"{base_url}/readyz", process=proc, timeout=timeout, interval=0.5)


# -- load ------------------------------------------------------------------------------------------
def make_request(kind: str, i: int, images: list[bytes], k: int) -> dict[str, Any]:
    if kind == "image":
        return {"method": "POST", "url": "/v1/search/image", "params": {"k": k},
                "files": {"image": ("q.jpg", images[i % len(images)], "image/jpeg")}}
    params: dict[str, Any] = {"q": QUERIES[i % len(QUERIES)], "k": k,
                              "mode": "dense" if kind == "dense" else "hybrid"}
    if kind == "filtered":  # hybrid + license and year filters (about a third of the figures)
        params.update(license="commercial", year_from=2010 + i % 5)
    return {"method": "GET", "url": "/v1/search", "params": params}


async def run_load(base_url: str, kind: str, concurrency: int, duration: float,
                   images: list[bytes], k: int) -> dict[str, float]:
    """``concurrency`` closed-loop clients for ``duration`` seconds; latency stats and rate."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        for i in range(2):  # warm up
            await http.request(**make_request(kind, i, images, k))
        stop = time.perf_counter() + duration
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await http.request(**make_request(kind, next(counter), images, k))
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    return {"p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            "qps": round(len(ms) / elapsed, 1), "requests": len(ms), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="figures in the index")
    p.add_argument("--model", default="figclip-mini",
                   help="model spec (randomly initialised configs are fine for timing)")
    p.add_argument("--factory", default=None, help="faiss factory (default: choose_factory)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="reuse/keep this data dir (built when it has no index)")
    args = p.parse_args(argv)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-api-")
        args.data_dir = Path(tmp.name)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    spec, encoder = bench_model(args.model, args.data_dir)
    print(f"store rows for {args.n:,} figures in {args.data_dir} ...", flush=True)
    rows_s = ensure_store_rows(args.data_dir, args.n)
    build: dict[str, Any] = {"store_rows_s": rows_s} if rows_s is not None else {}
    current = args.data_dir / "indexes" / "current"
    if not current.exists():
        print(f"building the index of {args.n:,} vectors ...", flush=True)
        build.update(build_index(args.data_dir, args.n, spec, encoder, args.factory))
        print(f"built: {build}", flush=True)
    else:
        stamp_manifest(current.resolve(), spec, encoder.model_key)
        import json

        manifest = json.loads((current / "manifest.json").read_text())
        build.update(factory=manifest["factory"], dim=manifest["dim"], reused_index=True)
    del encoder
    images = [f.read_bytes() for f in sorted(SHARED_FIGURES.glob("*.jpg"))[:8]]
    port = free_port()
    proc = start_server(args.data_dir, spec, port)
    base_url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        wait_ready(base_url, proc)
        load_s = time.perf_counter() - t0
        figures: dict[str, Any] = {"server_ready_s": round(load_s, 1), **build}
        rows = []
        for kind in args.kinds.split(","):
            for c in (int(x) for x in args.concurrency.split(",")):
                stats = asyncio.run(run_load(base_url, kind, c, args.duration, images, args.k))
                rows.append([kind, c, stats["p50_ms"], stats["p99_ms"], stats["qps"],
                             stats["requests"], stats["errors"]])
                for name, value in stats.items():
                    figures[f"{kind}_c{c}_{name}"] = value
                print(f"{kind:>6} c={c:<3} p50 {stats['p50_ms']:7.1f} ms  p99 "
                      f"{stats['p99_ms']:7.1f} ms  {stats['qps']:6.1f} q/s  "
                      f"({stats['requests']} requests, {stats['errors']} errors)", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(markdown_table(["kind", "concurrency", "p50 ms", "p99 ms", "q/s", "requests", "errors"],
                         rows))
    params = {"n": args.n, "model": args.model, "duration_s": args.duration, "k": args.k,
              "concurrency": args.concurrency, "workers": 1}
    path = write_result("api", params, figures)
    print(f"api bench: {len(rows)} measurements, n={args.n:,}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
