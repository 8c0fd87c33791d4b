"""figsearch and clip-retrieval side by side in one run: same model, vectors, client and queries.

Reuses the peer harness in ``../shared/peers/clip-retrieval/`` (read its README.md) by calling
its scripts, never copying them: ``make_checkpoint.py`` (random open_clip ViT-B-16, seed 0),
``make_embeddings.py`` (N Gaussian-mixture vectors + parquet metadata), ``build_index.sh``
(clip-retrieval's own index build), ``serve.sh`` (its Flask back end on loopback) and ``load.py``
(the async closed-loop client that drives both APIs with the same queries, images and vectors).

The full run (``--n 50000``):

1. installs clip-retrieval into ``<work>/venv`` (its own venv, never the project's; torch from
   the local wheel cache, then clip-retrieval, ``setuptools<81`` and ``faiss-cpu==1.13.2``, the
   fixes the harness README lists), unless it is there already;
2. writes the ViT-B-16 state dict and the same weights in open_clip's hub format for figsearch;
3. writes the vectors once; clip-retrieval indexes them with its CLI, figsearch with
   ``indexer.build`` (store rows from :mod:`bench.api`, row i = figure id i+1);
4. serves each in turn (the other one stopped) and runs ``load.py`` against it, then measures
   recall@10 of each service against exact search with raw-vector queries, and server RSS;
5. writes ``bench/results/peer.json``: both sides and ratios (``text_c32_ratio`` = figsearch
   queries/s / clip-retrieval queries/s, ``rss_ratio`` = figsearch RSS / peer RSS, ...).

``--smoke`` drives only figsearch, at a tiny size with figclip-mini, through the same ``load.py``
(no peer install) and checks what it can: every request answered, and recall@10 against exact
search. The numbers are from a shared machine whenever other work runs beside the bench.

    .venv/bin/python -m bench.peer --n 50000 --work /tmp/peer      # the real comparison
    .venv/bin/python -m bench.peer --smoke                          # CI: figsearch side only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import REPO_ROOT, markdown_table, smaps_rollup_kb, tree_pids, write_result
from figsearch.netutil import free_port, wait_for_http

HARNESS = REPO_ROOT.parent / "shared" / "peers" / "clip-retrieval"
QUERIES_FILE = HARNESS / "queries.txt"
IMAGES_DIR = REPO_ROOT.parent / "shared" / "data" / "pmc-figures" / "images"
ROCO_CSV = REPO_ROOT.parent / "shared" / "data" / "roco" / "roco_pmc_figures.csv"
PEER_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PEER_FIXES = ("setuptools<81", "faiss-cpu==1.13.2")
#: (load.py kind, our name) of the phases compared
KINDS = {"text": "text", "image": "image", "embedding": "vector"}


# -- model ---------------------------------------------------------------------------------------
#: figsearch's side: bfloat16 weights where the CPU multiplies them in hardware (checked against
#: float32 by bench/quantise.py), and no query cache, so repeated queries do not flatter it.
FIGSEARCH_ENV = ("FIGSEARCH_CPU_PRECISION=auto", "FIGSEARCH_QUERY_CACHE_SIZE=0")


def vitb16_model_dir(work: Path) -> Path:
    """The harness's random ViT-B-16 state dict (seed 0) and the same weights in open_clip's hub
    format (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) for figsearch."""
    import open_clip
    import torch

    pt = work / "vitb16_random.pt"
    if not pt.exists():
        subprocess.run([sys.executable, str(HARNESS / "make_checkpoint.py"), str(pt)], check=True)
    hub = work / "vitb16-hub"
    if not (hub / "open_clip_pytorch_model.bin").exists():
        hub.mkdir(parents=True, exist_ok=True)
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        pre = model.visual.preprocess_cfg
        config = {"model_cfg": open_clip.get_model_config("ViT-B-16"),
                  "preprocess_cfg": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in pre.items()}}
        (hub / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(pt, hub / "open_clip_pytorch_model.bin")  # the very same state dict
        del model
        torch.load(hub / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    return hub


# -- vectors -------------------------------------------------------------------------------------
def _harness_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"peer_{name}", HARNESS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_embeddings(work: Path, n: int) -> Path:
    """``<work>/emb``: the harness's N x 512 vectors + parquet metadata (written once), by its
    ``make_embeddings.main`` (pointed at the ROCO captions where its relative path misses)."""
    emb = work / "emb"
    marker = emb / f".n{n}"
    if not marker.exists():
        shutil.rmtree(emb, ignore_errors=True)
        module = _harness_module("make_embeddings")
        if not Path(module.ROCO).exists():
            module.ROCO = str(ROCO_CSV)
        argv, sys.argv = sys.argv, ["make_embeddings.py", str(emb), str(n), "1"]
        try:
            module.main()
        finally:
            sys.argv = argv
        marker.touch()
    return emb


def load_vectors(emb: Path) -> np.ndarray:
    return np.concatenate([np.load(f) for f in sorted((emb / "img_emb").glob("*.npy"))])


def mixture_vectors(n: int, dim: int) -> np.ndarray:
    """The harness's Gaussian mixture at another dimension (smoke: figclip-mini is 256-d)."""
    module = _harness_module("make_embeddings")
    module.DIM = dim
    return np.asarray(module.mixture(n, np.random.default_rng(0)), np.float32)


def probe_queries(vectors: np.ndarray, count: int = 50) -> np.ndarray:
    """Stored vectors plus noise, normalised (the harness's recall.py recipe, seed 2)."""
    rng = np.random.default_rng(2)
    picks = rng.choice(len(vectors), min(count, len(vectors)), replace=False)
    noise = rng.standard_normal((len(picks), vectors.shape[1])).astype(np.float32)
    q = vectors[picks] + 0.3 * noise / np.sqrt(vectors.shape[1])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :k]


# -- figsearch side --------------------------------------------------------------------------------
def figsearch_data(work: Path, vectors: np.ndarray, spec: str, model_key: str) -> Path:
    """A data dir whose figure i+1 has vector row i (store rows from bench.api)."""
    from bench.api import ensure_store_rows
    from indexer.build import build_version

    data = work / "figsearch-data"
    data.mkdir(parents=True, exist_ok=True)
    ensure_store_rows(data, len(vectors))
    stamp = data / f".index-{len(vectors)}-{model_key}"
    if not stamp.exists():
        shutil.rmtree(data / "indexes", ignore_errors=True)
        build_version(data / "indexes", vectors, np.arange(1, len(vectors) + 1, dtype=np.int64),
                      model_spec=spec, model_key=model_key, use_gpu=False)
        stamp.touch()
    return data


def start_figsearch(data: Path, spec: str, port: int, workers: int,
                    extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FIGSEARCH_DATA_DIR": str(data), "FIGSEARCH_MODEL": spec,
           "FIGSEARCH_RATE_LIMIT_PER_MINUTE": "0", "FIGSEARCH_DEVICE": "cpu",
           "FIGSEARCH_RELOAD_INTERVAL_S": "60", **extra_env}
    cmd = [sys.executable, "-m", "figsearch.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, start_new_session=True)


def figsearch_ids(body: dict[str, Any]) -> list[int]:
    return [int(r["id"]) - 1 for r in body["responses"][0]["results"]]


def figsearch_recall(base: str, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = []
    with httpx.Client(base_url=base, timeout=120) as http:
        for q, t in zip(queries, truth, strict=True):
            r = http.post("/v1/search", json={"queries": [{"vector": q.tolist()}], "k": k,
                                              "dedup": False})
            r.raise_for_status()
            hits.append(len(set(figsearch_ids(r.json())) & set(t.tolist())) / k)
    return float(np.mean(hits))


# -- the peer --------------------------------------------------------------------------------------
def ensure_peer_venv(work: Path) -> Path:
    """``<work>/venv`` with clip-retrieval (the harness README's steps); returns its python."""
    venv = work / "venv"
    py = venv / "bin" / "python"
    if (venv / "bin" / "clip-retrieval").exists():
        return py
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *PEER_TORCH], check=True)
    subprocess.run([*pip, "clip-retrieval"], check=True)
    subprocess.run([*pip, *PEER_FIXES], check=True)
    return py


def peer_index(work: Path, emb: Path, n: int) -> Path:
    index = work / "index"
    if not (work / "index_arrow" / "image.index").exists():
        env = {**os.environ, "PEER": str(work), "BUDGET": "100M" if n <= 300_000 else "512M"}
        subprocess.run(["bash", str(HARNESS / "build_index.sh"), str(emb), str(index)],
                       check=True, env=env)
    return index


def start_peer(work: Path, port: int) -> int:
    env = {**os.environ, "PEER": str(work), "PORT": str(port)}
    subprocess.run(["bash", str(HARNESS / "serve.sh")], check=True, env=env)
    return int((work / "back.pid").read_text().strip())


def peer_recall(base: str, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = []
    with httpx.Client(base_url=base, timeout=120) as http:
        for q, t in zip(queries, truth, strict=True):
            r = http.post("/knn-service", json={
                "embedding_input": q.tolist(), "modality": "image", "num_images": k,
                "indice_name": "pmc_synth", "deduplicate": False, "use_mclip": False,
                "use_safety_model": False, "use_violence_detector": False,
                "aesthetic_score": "", "aesthetic_weight": ""})
            r.raise_for_status()
            rows = [int(str(x["image_path"]).rsplit("#", 1)[1]) for x in r.json()]
            hits.append(len(set(rows[:k]) & set(t.tolist())) / k)
    return float(np.mean(hits))


# -- driving -------------------------------------------------------------------------------------
def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of a process and all its descendants, summed. RSS counts pages that
    several processes share (torch's libraries, a memory-mapped index) once per process; PSS
    splits them between the processes, so its sum is the memory the server really holds."""
    rollups = [smaps_rollup_kb(p) for p in tree_pids(pid)]
    return {kind: round(sum(r.get(field, 0) for r in rollups) / 1024, 1)
            for kind, field in (("rss", "Rss"), ("pss", "Pss"))}


def run_load(api: str, base: str, out: Path, args: argparse.Namespace, embedding: bool) -> list[dict]:
    """The harness's load.py against one service; its per-phase rows."""
    cmd = [sys.executable, str(HARNESS / "load.py"), "--api", api, "--url", base,
           "--out", str(out), "--k", str(args.k), "--duration", str(args.duration),
           "--max-requests", str(args.max_requests), "--warmup", "4",
           "--text-conc", *args.text_conc.split(","), "--hybrid-conc",
           "--image-conc", *args.image_conc.split(","), "--n-images", "64",
           "--images", str(IMAGES_DIR), "--embedding-conc"]
    if embedding:
        cmd += args.embedding_conc.split(",")
    subprocess.run(cmd, check=True)
    return list(json.loads(out.read_text()))


def flatten(side: str, rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        name = f"{side}_{KINDS.get(row['query'], row['query'])}_c{row['concurrency']}"
        for key in ("qps", "p50_ms", "p99_ms", "requests", "errors"):
            out[f"{name}_{key}"] = row[key]
    return out


#: figsearch sides: results prefix -> (ratio prefix, encoder backend of bench.api.BACKENDS).
#: ``figsearch_onnx`` is the torch-free encoder backend, the model exported to ONNX first with
#: its image tower in int8 (``figsearch export-onnx --int8-image``)
FIGSEARCH_SIDES = {"figsearch": ("", "torch"), "figsearch_onnx": ("onnx_", "onnx-int8-image")}


def side_qps(figures: dict[str, Any], side: str) -> dict[str, float]:
    """phase -> queries/s of one figsearch side (``figsearch_onnx_*`` keys also start with
    ``figsearch_``: they are the other side's)."""
    others = [s for s in FIGSEARCH_SIDES if s != side and s.startswith(side)]
    return {key.removeprefix(f"{side}_").removesuffix("_qps"): value
            for key, value in figures.items()
            if key.startswith(f"{side}_") and key.endswith("_qps")
            and not any(key.startswith(f"{other}_") for other in others)}


def ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """figsearch / peer for every queries/s phase both measured (``text_c32_ratio`` ...; the
    onnx backend's as ``onnx_text_c32_ratio``)."""
    out: dict[str, Any] = {}
    for side, (label, _) in FIGSEARCH_SIDES.items():
        for phase, value in side_qps(figures, side).items():
            peer = figures.get(f"peer_{phase}_qps")
            if peer:
                out[f"{label}{phase}_ratio"] = round(value / peer, 2)
        for kind in ("rss", "pss"):
            if figures.get(f"peer_{kind}_mb") and f"{side}_{kind}_mb" in figures:
                out[f"{label}{kind}_ratio"] = round(
                    figures[f"{side}_{kind}_mb"] / figures[f"peer_{kind}_mb"], 2)
    return out


def wait_all_workers(base: str, workers: int, timeout: float = 900) -> None:
    """Until every uvicorn worker is ready. One worker's ``/readyz`` says nothing of the others,
    which may still be loading and warming up their model (and slowing the ready one down);
    fresh connections land on any worker, so ``4 x workers`` 200s in a row mean all are up."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 4 * workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base}: not every worker became ready in {timeout:.0f} s")
        try:
            ok = httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        except httpx.HTTPError:
            ok = False
        streak = streak + 1 if ok else 0
        if not ok:
            time.sleep(0.5)


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (all rounds' values kept as ``<name>_rounds``)."""
    if len(runs) == 1:
        return dict(runs[0])
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run]
        out[key] = round(float(np.median(values)), 2)
        out[f"{key}_rounds"] = values
    return out


def stop(proc_or_pid: subprocess.Popen[bytes] | int) -> None:
    """Stop a server we started: our Popen's process group, or the peer's pid (serve.sh)."""
    if isinstance(proc_or_pid, subprocess.Popen):
        try:
            os.killpg(proc_or_pid.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        proc_or_pid.wait(timeout=60)
        return
    try:
        os.kill(proc_or_pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(proc_or_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def measure_figsearch(work: Path, vectors: np.ndarray, spec: str, model_key: str,
                      args: argparse.Namespace, embedding: bool, side: str = "figsearch"
                      ) -> dict[str, Any]:
    data = figsearch_data(work, vectors, spec, model_key)
    port = free_port()
    from bench.api import backend_env, ensure_onnx_export

    extra = dict(e.split("=", 1) for e in args.figsearch_env)
    backend = FIGSEARCH_SIDES[side][1]
    extra.update(backend_env(data, backend))
    if backend != "torch":
        from figsearch.encoders import load_model

        ensure_onnx_export(data, load_model(spec, device="cpu"),
                           int8_image=backend == "onnx-int8-image")
    proc = start_figsearch(data, spec, port, args.workers, extra)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", process=proc, timeout=900, interval=0.5)
        wait_all_workers(base, args.workers)
        rows = run_load("figsearch", base, work / f"{side}-load.json", args, embedding)
        figures = flatten(side, rows)
        memory = tree_memory_mb(proc.pid)
        figures[f"{side}_rss_mb"], figures[f"{side}_pss_mb"] = memory["rss"], memory["pss"]
        probes = probe_queries(vectors)
        figures[f"{side}_recall_at_10"] = round(
            figsearch_recall(base, probes, exact_top(vectors, probes, 10), 10), 3)
    finally:
        stop(proc)
    return figures


def measure_peer(work: Path, emb: Path, vectors: np.ndarray, args: argparse.Namespace
                 ) -> dict[str, Any]:
    t0 = time.perf_counter()
    built = not (work / "index_arrow" / "image.index").exists()
    peer_index(work, emb, len(vectors))
    build_s = round(time.perf_counter() - t0, 1)
    port = free_port()
    pid = start_peer(work, port)
    base = f"http://127.0.0.1:{port}"
    try:
        rows = run_load("clip-back", base, work / "peer-load.json", args, True)
        figures = flatten("peer", rows)
        memory = tree_memory_mb(pid)
        figures["peer_rss_mb"], figures["peer_pss_mb"] = memory["rss"], memory["pss"]
        probes = probe_queries(vectors)
        figures["peer_recall_at_10"] = round(
            peer_recall(base, probes, exact_top(vectors, probes, 10), 10), 3)
        if built:  # later rounds reuse the index
            figures["peer_index_build_s"] = build_s
    finally:
        stop(pid)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="figures (vectors) on both sides")
    p.add_argument("--work", type=Path, default=None, help="scratch dir (kept; reused)")
    p.add_argument("--smoke", action="store_true",
                   help="figsearch only, figclip-mini, tiny: no peer install (CI)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (cap)")
    p.add_argument("--max-requests", type=int, default=400, help="requests per phase (cap)")
    p.add_argument("--text-conc", default="1,32")
    p.add_argument("--image-conc", default="1,8")
    p.add_argument("--embedding-conc", default="1,8")
    p.add_argument("--workers", type=int, default=1, help="figsearch uvicorn workers")
    p.add_argument("--figsearch-env", nargs="*", default=list(FIGSEARCH_ENV),
                   help="extra FIGSEARCH_*=value settings for the figsearch server")
    p.add_argument("--rounds", type=int, default=1,
                   help="peer then figsearch, this many times; each figure is the median")
    p.add_argument("--sides", default="peer,figsearch,figsearch-onnx",
                   help="which services to drive (figsearch alone: an A/B of figsearch changes)")
    p.add_argument("--name", default="peer", help="results file bench/results/<name>.json")
    args = p.parse_args(argv)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-peer-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    if args.smoke:
        from bench.api import bench_model

        spec, encoder = bench_model("figclip-mini", args.work)
        vectors = mixture_vectors(args.n, encoder.dim)
        model_key = encoder.model_key
        del encoder
        # load.py's raw vectors are 512-d; figclip-mini is 256-d: vectors are checked by recall.
        for side in FIGSEARCH_SIDES:
            if side.replace("_", "-") in args.sides.split(","):
                figures.update(measure_figsearch(args.work, vectors, spec, model_key, args,
                                                 False, side))
    else:
        from figsearch.encoders import load_model

        ensure_peer_venv(args.work)
        spec = str(vitb16_model_dir(args.work))
        model_key = load_model(spec, device="cpu").model_key
        emb = write_embeddings(args.work, args.n)
        vectors = load_vectors(emb)
        runs = []
        sides = set(args.sides.split(","))
        for _ in range(args.rounds):  # alternate, so drifting machine load hits both sides
            run: dict[str, Any] = {}
            if "peer" in sides:
                run.update(measure_peer(args.work, emb, vectors, args))
            for side in FIGSEARCH_SIDES:
                if side.replace("_", "-") in sides:
                    run.update(measure_figsearch(args.work, vectors, spec, model_key, args,
                                                 True, side))
            runs.append(run)
        figures.update(median_figures(runs))
        figures.update(ratios(figures))
    rows = []
    for side, (label, _) in FIGSEARCH_SIDES.items():
        for phase, qps in sorted(side_qps(figures, side).items()):
            rows.append([side, phase, figures.get(f"peer_{phase}_qps", "-"), qps,
                         figures.get(f"{label}{phase}_ratio", "-"),
                         figures.get(f"peer_{phase}_p50_ms", "-"), figures[f"{side}_{phase}_p50_ms"]])
    print(markdown_table(["side", "phase", "clip-retrieval q/s", "figsearch q/s", "ratio",
                          "peer p50 ms", "figsearch p50 ms"], rows))
    params = {"n": args.n, "smoke": args.smoke, "k": args.k, "duration_s": args.duration,
              "workers": args.workers, "figsearch_env": args.figsearch_env,
              "rounds": args.rounds, "sides": args.sides,
              "model": "figclip-mini" if args.smoke else "ViT-B-16 (random, seed 0)",
              "note": "one service after the other on the same (shared) machine"}
    path = write_result(args.name, params, figures)
    print(f"peer bench: {len(rows)} phases, n={args.n:,}, smoke={args.smoke}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
