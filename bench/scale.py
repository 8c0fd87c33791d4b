"""Project figsearch to the target scale (15 M figures / 4.5 M articles) from measured inputs.

Reads the other bench results (``bench/results/{ann,embed,ingest}.json``), measures the figure
store's bytes per figure by ingesting a small synthetic corpus (or reads a given database), and
writes ``scale.md`` + ``scale.json`` into the results directory. Every input names its source;
a missing input falls back to a documented default marked *assumed*.

    .venv/bin/python -m bench.scale                     # measure the store on 60 articles
    .venv/bin/python -m bench.scale --synth-n 4         # smoke size
    .venv/bin/python -m bench.scale --db figsearch-data/figsearch.db --images-dir figsearch-data/images
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/x.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, load_results, markdown_table, results_dir, write_result  # noqa: E402

GIB = 2**30
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

#: Defaults used when a measurement is missing; each is marked "assumed" in the output.
DEFAULTS: dict[str, tuple[float, str]] = {
    "dim": (512, "embedding size of the BiomedCLIP-style target model (--dim)"),
    "gpu_images_per_s": (800.0, "ViT-B/16 at 224 px, fp16, one A100-class GPU, JPEG decode "
                                "in 8+ DataLoader workers (decode-bound)"),
    "ingest_figures_per_s": (40.0, "2 parse workers on 2 cores"),
    "build_s_per_vector": (5e-5, "OPQ+IVF-PQ train on a 1 M sample plus add, 16 cores"),
    "query_p50_ms": (20.0, "IVF-PQ, nprobe 32, re-rank 10x from mmap float16 vectors"),
    "query_p95_ms": (60.0, "as p50, cold page cache for re-rank vectors"),
    "store_bytes_per_figure": (3000.0, "SQLite row + FTS5 postings for a ~600 char caption"),
    "image_bytes_per_figure": (150_000.0, "JPEG at max side 1024 + 256 px thumbnail"),
    "caption_chars": (600.0, "mean PMC figure caption length"),
}

#: Result keys (regular expressions, full match) tried in order for each input; figures first,
#: then params. Matches what bench/{ann,embed,embed_gpu,ingest}.py write.
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed_images_per_s": ("embed", ("images_per_s", "vit-b16_pipeline_fig_s", "vit-b16_naive_fig_s",
                                     "figclip-mini_pipeline_fig_s", "figclip-mini_naive_fig_s")),
    "gpu_images_per_s": ("embed_gpu", (r"end_to_end_jpeg_b\d+_img_s", r"images_per_s")),
    "ingest_figures_per_s": ("ingest", ("figures_per_s", r"synthetic.* cold figures_per_s",
                                        r".* cold figures_per_s")),
    "build_s_per_vector": ("ann", ("build_s_per_vector",)),
    "query_p50_ms": ("ann", ("query_p50_ms", "latency_p50_ms", "p50_ms", "search_p50_ms")),
    "query_p95_ms": ("ann", ("query_p95_ms", "latency_p95_ms", "p95_ms", "search_p95_ms")),
    "ann_bytes_per_vector": ("ann", ("bytes_per_vector", "index_bytes_per_vector")),
    "api_p50_ms": ("api", (r"hybrid_c1_p50_ms", r"dense_c1_p50_ms")),
    "api_p99_ms": ("api", (r"hybrid_c1_p99_ms", r"dense_c1_p99_ms")),
}


@dataclass
class Input:
    """One number the projection uses, with where it came from."""

    name: str
    value: float
    source: str
    assumed: bool = False

    def basis(self) -> str:
        if self.name == "dim":  # a property of the chosen model, neither measured nor assumed
            return f"target: {self.source}"
        return f"assumed: {self.source}" if self.assumed else f"measured: {self.source}"


def result_source(res: dict[str, Any], bench: str) -> str:
    """``bench/results/<bench>.json (<date>)``: every measured input names its file and date."""
    return f"bench/results/{bench}.json ({str(res.get('timestamp') or '?')[:10]})"


def _lookup(results: dict[str, dict[str, Any]], bench: str, keys: tuple[str, ...]) -> tuple[Any, str] | None:
    res = results.get(bench)
    if not res:
        return None
    for section in ("figures", "params"):
        block = res.get(section) or {}
        for pattern in keys:
            for key, value in block.items():
                if re.fullmatch(pattern, key) and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and value > 0:
                    return value, f"{result_source(res, bench)} {section}.{key}"
    return None


def _param(results: dict[str, dict[str, Any]], bench: str, *keys: str) -> Any:
    res = results.get(bench) or {}
    for section in ("params", "figures"):
        for key in keys:
            if key in (res.get(section) or {}):
                return res[section][key]
    return None


def measured_or_default(results: dict[str, dict[str, Any]], name: str, default_key: str | None = None) -> Input:
    """The measured value of ``name`` if a result has it, else the documented default."""
    if name in KEYS:
        found = _lookup(results, *KEYS[name])
        if found is not None:
            return Input(name, float(found[0]), found[1])
    value, why = DEFAULTS[default_key or name]
    return Input(name, float(value), f"{why} (default; no measurement)", assumed=True)


def _build_s_per_vector(results: dict[str, dict[str, Any]]) -> Input:
    direct = _lookup(results, *KEYS["build_s_per_vector"])
    if direct is not None:
        return Input("build_s_per_vector", float(direct[0]), direct[1])
    build = _lookup(results, "ann", ("build_s", "build_time_s", "train_add_s"))
    n = _param(results, "ann", "n", "n_vectors", "count")
    if build is not None and isinstance(n, (int, float)) and n > 0:
        return Input("build_s_per_vector", float(build[0]) / float(n), f"{build[1]} / params.n")
    return measured_or_default(results, "build_s_per_vector")


def build_fit(results: dict[str, dict[str, Any]]) -> tuple[float, float, str] | None:
    """(train seconds, add seconds/vector, family) from the headline family's build times at
    the two largest sizes of bench.ann, or None with fewer than two sizes."""
    figures = (results.get("ann") or {}).get("figures") or {}
    pattern = re.compile(r"(\d+) (.+?)(?: rerank)? build_s")
    top = max((int(m.group(1)) for k in figures if (m := pattern.fullmatch(k))), default=0)
    family = next((m.group(2) for k, v in figures.items() if (m := pattern.fullmatch(k))
                   and int(m.group(1)) == top and v == figures.get("build_s")), None)
    if family is None:
        return None
    points = sorted({int(m.group(1)): float(v) for k, v in figures.items()
                     if (m := pattern.fullmatch(k)) and m.group(2) == family}.items())
    if len(points) < 2:
        return None
    (n1, t1), (n2, t2) = points[-2:]
    slope = (t2 - t1) / (n2 - n1)
    return (t2 - slope * n2, slope, family) if slope > 0 else None


def _build_row(results: dict[str, dict[str, Any]], build: Input, n: int) -> Row:
    fit = build_fit(results)
    if fit is not None:
        train, per_vector, family = fit
        return Row("index build (train + add)", (max(train, 0.0) + per_vector * n) / 3600, "h",
                   f"measured: bench.ann {family} build times at its two largest sizes: "
                   f"{max(train, 0.0):.0f} s + {per_vector:.3g} s/vector x n (k-means for the "
                   f"target's larger nlist not measured; faiss GPU k-means is the usual remedy)")
    return Row("index build (train + add)", n * build.value / 3600, "h",
               f"{build.value:.3g} s/vector x n with training included per vector (overstates at "
               f"small measured n); {build.basis()}")


# ----------------------------------------------------------------------------- store measurement


def _db_bytes(db_path: Path) -> int:
    """Size of the database after folding the WAL back in (what a copy of it would take)."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db_path.stat().st_size


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _store_stats(db_path: Path) -> tuple[int, int, float]:
    """(figures, articles, mean caption chars) of a figure store."""
    with sqlite3.connect(db_path) as conn:
        figures, chars = conn.execute("SELECT COUNT(*), AVG(LENGTH(caption)) FROM figures").fetchone()
        articles = conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    return int(figures), int(articles), float(chars or 0.0)


def measure_store_synthetic(n_articles: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Ingest a synthetic corpus in two halves; bytes/figure = growth of the second half.

    Taking the difference removes SQLite's fixed overhead (schema, empty FTS tables), which
    would dominate a small corpus.
    """
    from figsearch.core.config import Settings
    from indexer.ingest import ingest_paths
    from indexer.synth import generate_corpus

    generate_corpus(workdir / "corpus", n_articles, seed=seed, workers=2, progress=False)
    packages = sorted((workdir / "corpus").glob("*.tar.gz"))
    settings = Settings(data_dir=workdir / "data")
    half = max(1, len(packages) // 2)
    started = time.perf_counter()
    ingest_paths(packages[:half], settings, workers=1)
    size1, (figs1, _, _) = _db_bytes(settings.db_path), _store_stats(settings.db_path)
    ingest_paths(packages[half:], settings, workers=1)
    elapsed = time.perf_counter() - started
    size2, (figs2, articles, chars) = _db_bytes(settings.db_path), _store_stats(settings.db_path)
    tables = table_bytes(settings.db_path)
    marginal = figs2 > figs1 and size2 > size1
    per_fig = (size2 - size1) / (figs2 - figs1) if marginal else size2 / max(figs2, 1)
    return {
        "figures": figs2, "articles": articles, "caption_chars": chars,
        "store_bytes_per_figure": per_fig,
        "image_bytes_per_figure": _dir_bytes(settings.images_dir) / max(figs2, 1),
        "ingest_figures_per_s": figs2 / elapsed if elapsed else 0.0,
        "fts_content_bytes_per_figure": tables.get("figures_fts_content", 0) / max(figs2, 1),
        "fts_bytes_per_figure": sum(v for k, v in tables.items() if k.startswith("figures_fts"))
        / max(figs2, 1),
        "store_total_bytes_per_figure": sum(tables.values()) / max(figs2, 1),
        "how": (f"ingest of {articles} synthetic articles ({figs2} figures), growth of the second half"
                if marginal else f"ingest of {articles} synthetic articles, total size / figures"),
    }


def table_bytes(db_path: Path) -> dict[str, int]:
    """Bytes per table/index of a SQLite file (the ``dbstat`` virtual table)."""
    with sqlite3.connect(db_path) as conn:
        return {str(name): int(size) for name, size in
                conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}


def measure_version_row_files(rows: int = 20_000) -> Input:
    """Bytes per figure of an index version's per-row files besides its vectors (image hash, for
    reuse by the next build, and figure type + score), written by the real builder. They replace
    the store's old embedding cache (float16 BLOBs in figsearch.db, ~1.5 KB per figure)."""
    import numpy as np

    from figsearch.version_data import SHA_FILE, TYPE_SCORES_FILE, TYPES_FILE
    from indexer.build import build_version

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, 8)).astype(np.float32)
    row_files = {SHA_FILE: rng.integers(0, 256, (rows, 32), dtype=np.uint8),
                 TYPES_FILE: rng.integers(-1, 14, rows).astype(np.int16),
                 TYPE_SCORES_FILE: rng.random(rows).astype(np.float16)}
    with tempfile.TemporaryDirectory() as tmp:
        version = build_version(Path(tmp), vectors, np.arange(rows, dtype=np.int64),
                                model_spec="s", model_key="k", factory="Flat", row_files=row_files)
        used = sum((version / name).stat().st_size for name in row_files)
    return Input("version_row_bytes_per_figure", used / rows,
                 f"build_version row files ({', '.join(row_files)}) of {rows:,} figures")


def real_package_bytes() -> Input | None:
    """Mean size of the real article packages in shared/data (what the download cache keeps)."""
    packages = sorted((SHARED_DATA / "jats" / "packages").glob("*.zip"))
    if not packages:
        return None
    sizes = [p.stat().st_size for p in packages]
    return Input("package_bytes_per_article", statistics.mean(sizes),
                 f"{len(sizes)} real article packages in shared/data/jats/packages (eLife/MECA zips "
                 f"with PDF and TIFF figures; PMC's own packages vary)")


def measure_store_db(db: Path, images_dir: Path | None) -> dict[str, Any]:
    """Bytes per figure of an existing store (whole file / figures, so an upper bound)."""
    figures, articles, chars = _store_stats(db)
    return {
        "figures": figures, "articles": articles, "caption_chars": chars,
        "store_bytes_per_figure": _db_bytes(db) / max(figures, 1),
        "image_bytes_per_figure": (_dir_bytes(images_dir) / max(figures, 1)) if images_dir else None,
        "how": f"{db} ({figures} figures, {articles} articles), size / figures",
    }


def real_caption_chars() -> Input:
    """Mean caption length of the real PMC captions in ../shared/data (ROCO + PMC figures)."""
    lengths: list[int] = []
    roco = SHARED_DATA / "roco" / "roco_pmc_figures.csv"
    pmc = SHARED_DATA / "pmc-figures" / "figures.jsonl"
    if roco.is_file():
        with roco.open(newline="", encoding="utf-8") as fh:
            lengths += [len(row["caption"]) for row in csv.DictReader(fh) if row.get("kind") != "radiology"]
    if pmc.is_file():
        lengths += [len(json.loads(line)["caption"]) for line in pmc.open(encoding="utf-8") if line.strip()]
    if not lengths:
        return Input("caption_chars", DEFAULTS["caption_chars"][0], DEFAULTS["caption_chars"][1], assumed=True)
    return Input("caption_chars", statistics.mean(lengths),
                 f"{len(lengths)} real PMC captions in shared/data (ROCO non-radiology + pmc-figures)")


def real_image_bytes(limit: int = 60) -> Input | None:
    """Stored bytes (image + thumbnail) per figure for real PMC figures via ``store_image``."""
    from figsearch.core.config import Settings
    from figsearch.imaging import store_image

    images = sorted((SHARED_DATA / "pmc-figures" / "images").glob("*.jp*g"))[:limit]
    if not images:
        return None
    s = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            store_image(path.read_bytes(), tmp, s.image_max_side, s.thumb_max_side)
        total = _dir_bytes(Path(tmp))
    return Input("image_bytes_per_figure", total / len(images),
                 f"store_image on {len(images)} real PMC figures (400-800 px; larger originals "
                 f"would store up to {s.image_max_side} px)")


# ----------------------------------------------------------------------------- projection


def factory_numbers(factory: str, dim: int) -> dict[str, int]:
    """nlist, PQ bytes, OPQ, HNSW and bytes per centroid value (2 for an ``(HNSW32_SQfp16)``
    quantizer, else 4) from a faiss factory string ('Flat' gives zeros)."""
    ivf = re.search(r"IVF(\d+)", factory)
    pq = re.search(r"PQ(\d+)(?:x(\d+))?$", factory.split(",")[-1])
    m = int(pq.group(1)) if pq else 0
    bits = int(pq.group(2)) if pq and pq.group(2) else 8
    code = m * bits // 8 if pq else (dim * 4 if factory.split(",")[-1] == "Flat" else dim)
    return {"nlist": int(ivf.group(1)) if ivf else 0, "code_bytes": code, "pq_m": m,
            "opq": int(factory.startswith("OPQ")), "hnsw": int("HNSW" in factory),
            "centroid_bytes": 2 if "_SQfp16)" in factory else 4}


def index_ram_bytes(n: int, dim: int, factory: str) -> dict[str, float]:
    """RAM of the FAISS index: codes + ids, coarse centroids (+HNSW links), OPQ, PQ codebooks."""
    f = factory_numbers(factory, dim)
    codes = n * (f["code_bytes"] + (8 if f["nlist"] else 0))
    coarse = f["nlist"] * dim * f["centroid_bytes"] + (f["nlist"] * 32 * 2 * 4 if f["hnsw"] else 0)
    opq = dim * dim * 4 if f["opq"] else 0
    codebooks = 256 * dim * 4 if f["pq_m"] else 0
    return {"codes": codes, "coarse": coarse, "opq": opq, "codebooks": codebooks,
            "total": codes + coarse + opq + codebooks}


def _scanned_per_query(n: float, factory: str, nprobe: int, dim: int) -> float:
    nlist = factory_numbers(factory, dim)["nlist"]
    return n if not nlist else n * min(nprobe, nlist) / nlist


def project_latency(inp: Input, n_meas: float | None, factory_meas: str | None, n: int,
                    factory: str, nprobe: int, dim: int) -> tuple[float, str]:
    """Scale measured latency by codes scanned per query (upper bound: scanning dominates)."""
    if not n_meas or not factory_meas or inp.assumed:
        return inp.value, inp.basis() + "; not scaled"
    ratio = _scanned_per_query(n, factory, nprobe, dim) / _scanned_per_query(n_meas, factory_meas, nprobe, dim)
    basis = f"{inp.basis()} at n={int(n_meas):,} ({factory_meas}); codes scanned per query x{ratio:.2f}"
    if ratio <= 1:  # fewer codes scanned, but fixed costs (coarse search, re-rank) remain
        return inp.value, basis + " at the target: measured latency kept (conservative)"
    return inp.value * ratio, basis + f" at nprobe {nprobe}: latency scaled by it (upper bound)"


@dataclass
class Row:
    quantity: str
    value: Any
    unit: str
    basis: str


def gather_inputs(results: dict[str, dict[str, Any]], store: dict[str, Any] | None,
                  dim: int = 512) -> dict[str, Input]:
    """Every input of the projection, measured where a result exists."""
    inputs = {name: measured_or_default(results, name) for name in ("query_p50_ms", "query_p95_ms")}
    inputs["dim"] = Input("dim", float(dim), DEFAULTS["dim"][1])
    inputs["build_s_per_vector"] = _build_s_per_vector(results)
    inputs["embed_images_per_s"] = measured_or_default(results, "embed_images_per_s", "gpu_images_per_s")
    inputs["ingest_figures_per_s"] = measured_or_default(results, "ingest_figures_per_s")
    if inputs["ingest_figures_per_s"].assumed and store and store.get("ingest_figures_per_s"):
        inputs["ingest_figures_per_s"] = Input("ingest_figures_per_s", store["ingest_figures_per_s"],
                                               f"scale.py's own {store['how']} (1 worker)")
    inputs["caption_chars"] = real_caption_chars()
    for key in ("store_bytes_per_figure", "image_bytes_per_figure"):
        if store and store.get(key):
            inputs[key] = Input(key, float(store[key]), str(store["how"]))
        else:
            inputs[key] = measured_or_default(results, key)
    real_images = real_image_bytes()
    if real_images is not None:
        inputs["image_bytes_per_figure"] = real_images
    inputs["version_row_bytes_per_figure"] = measure_version_row_files()
    if store and store.get("fts_content_bytes_per_figure"):
        inputs["fts_content_bytes_per_figure"] = Input(
            "fts_content_bytes_per_figure", float(store["fts_content_bytes_per_figure"]), str(store["how"]))
        inputs["fts_content_share"] = Input(
            "fts_content_share", store["fts_content_bytes_per_figure"] / store["store_total_bytes_per_figure"],
            "dbstat of the synthetic store: figures_fts_content / all tables")
    package = real_package_bytes()
    if package is not None:
        inputs["package_bytes_per_article"] = package
    return inputs


def _gpu_throughput(results: dict[str, dict[str, Any]], inp: Input) -> tuple[float, str]:
    """Images/s on one GPU: bench.embed_gpu's end-to-end rate, else bench.embed if it ran on
    CUDA, else the assumed GPU default."""
    for bench in ("gpu_check_embed", "embed_gpu"):  # the GPU check first (newest script)
        gpu_run = _lookup(results, bench, KEYS["gpu_images_per_s"][1])
        gpu_name = _param(results, bench, "gpu") or "GPU"
        if gpu_run is not None and "smoke" not in str(gpu_name):
            return float(gpu_run[0]), f"measured: {gpu_run[1]} on {gpu_name}"
    device = str(_param(results, "embed", "device") or "")
    gpu = ((results.get("embed") or {}).get("machine") or {}).get("gpu")
    if not inp.assumed and (device.startswith("cuda") or (gpu and not device)):
        return inp.value, f"{inp.basis()} on {gpu or device}"
    value, why = DEFAULTS["gpu_images_per_s"]
    note = f"; measured {inp.value:,.1f}/s on {device or 'cpu'}" if not inp.assumed else ""
    return value, f"assumed: {why}{note}"


def project(results: dict[str, dict[str, Any]], inputs: dict[str, Input], n: int, articles: int,
            memory_gb: float, nprobe: int, synth_caption_chars: float | None) -> list[Row]:
    """The projection table rows for ``n`` figures in ``articles`` articles."""
    from figsearch.index import choose_factory, image_budget

    dim = int(inputs["dim"].value)
    factory = choose_factory(n, dim, image_budget(memory_gb))
    ram = index_ram_bytes(n, dim, factory)
    rows = [
        Row("figures", n, "", "target"), Row("articles", articles, "", "target"),
        Row("embedding dim", dim, "", inputs["dim"].source),
        Row("index factory", factory, "", f"figsearch.index.choose_factory(n, dim, image_budget({memory_gb:g} GiB))"),
        Row("index RAM: PQ codes + ids", ram["codes"] / GIB, "GiB", "n x (PQ bytes + 8-byte id)"),
        Row("index RAM: IVF centroids + HNSW", ram["coarse"] / GIB, "GiB", "nlist x dim x 2 or 4 (float16 or float32 centroids) + HNSW32 links"),
        Row("index RAM: OPQ + PQ codebooks", (ram["opq"] + ram["codebooks"]) / GIB, "GiB", "dim^2 x 4 + 256 x dim x 4"),
        Row("index RAM total", ram["total"] / GIB, "GiB", "sum of the above"),
        Row("re-rank vectors (float16, mmap, disk)", n * dim * 2 / GIB, "GiB", "n x dim x 2 bytes; page cache, not heap"),
    ]
    rows += _store_rows(inputs, n, synth_caption_chars)
    rows += _sizing_rows(inputs, n, articles, synth_caption_chars)
    rows += _time_rows(results, inputs, n, factory, nprobe, dim)
    rows += _filter_rows(results, n)
    rows += _goal_rows(results, n, factory, ram["total"])
    return rows


def _filter_rows(results: dict[str, dict[str, Any]], n: int) -> list[Row]:
    """Filters as a version serves them: bitmaps over its filter columns
    (``bench.filter_ids --columns``, the largest size measured), scaled linearly to the
    target; and the SQL path that only versions built before the columns take."""
    return _column_filter_rows(results, n) + _sql_filter_rows(results, n)


def largest_columns_result(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """(name, result) of the ``filter_columns_<n>[_synthetic]`` run at the largest ``n``."""
    runs = [(int((res.get("params") or {}).get("n") or 0), name, res)
            for name, res in results.items() if name.startswith("filter_columns_")]
    runs = [run for run in runs if run[0] > 0]
    if not runs:
        return None
    _, name, res = max(runs, key=lambda run: run[0])
    return name, res


def _column_filter_rows(results: dict[str, dict[str, Any]], n: int) -> list[Row]:
    """The broadest filter's first use through the columns, what one cached filter keeps, and
    the worst case of the filter caches: ``ALLOWED_CACHE_SIZE`` allowed sets plus the exact
    plans' vectors (``EXACT_VECTORS_BYTES`` for each of the image and whole-caption indexes)."""
    from figsearch.columns import ALLOWED_CACHE_SIZE
    from figsearch.index import EXACT_VECTORS_BYTES

    found = largest_columns_result(results)
    if found is None:
        return []
    name, res = found
    fig, rows_n = res.get("figures") or {}, int(res["params"]["n"])
    counts = {k[: -len(" count")]: v for k, v in fig.items() if k.endswith(" count")}
    label = max(counts, key=lambda k: counts[k]) if counts else None
    if label is None or f"{label} first_use_ms" not in fig or f"{label} held_mb" not in fig:
        return []
    scale = n / rows_n
    where = f"{result_source(res, name)} '{label}': {counts[label]:,.0f} of {rows_n:,} rows"
    held_mb = fig[f"{label} held_mb"] * scale
    vectors_mb = 2 * EXACT_VECTORS_BYTES / 1e6
    return [
        Row("filter first use through the columns, broadest filter", fig[f"{label} first_use_ms"]
            * scale, "ms", f"{fig[f'{label} first_use_ms']:.1f} ms measured x{scale:.1f} "
            f"(n / rows; the column mask and one index's row mask, in a fresh process); {where}"),
        Row("one cached filter (packed column mask + an index's row mask and selector)", held_mb,
            "MB", f"{fig[f'{label} held_mb']:.2f} MB measured x{scale:.1f} (tracemalloc); {where}"),
        Row(f"filter caches, worst case ({ALLOWED_CACHE_SIZE} cached filters + exact plans' vectors)",
            ALLOWED_CACHE_SIZE * held_mb + vectors_mb, "MB",
            f"figsearch.columns.ALLOWED_CACHE_SIZE x the row above + 2 x "
            f"figsearch.index.EXACT_VECTORS_BYTES ({vectors_mb:.0f} MB: image and whole-caption "
            f"indexes)"),
    ]


def _sql_filter_rows(results: dict[str, dict[str, Any]], n: int) -> list[Row]:
    """bench.filter_ids at millions of rows: the broadest filter's id-set time and memory
    through SQL, scaled linearly to the target (the query reads every matching row). Only a
    version built before the filter columns takes this path."""
    res = results.get("filter_ids")
    if not res:
        return []
    fig, rows_n = res.get("figures") or {}, int((res.get("params") or {}).get("n") or 0)
    counts = {k[: -len(" count")]: v for k, v in fig.items() if k.endswith(" count")}
    if not counts or not rows_n:
        return []
    label = max(counts, key=lambda k: counts[k])
    where = f"{result_source(res, 'filter_ids')} '{label}': {counts[label]:,.0f} of {rows_n:,} rows"
    scale = n / rows_n
    return [
        Row("filter id set through SQL (versions without filter columns), broadest filter",
            fig[f"{label} seconds"] * scale, "s",
            f"{fig[f'{label} seconds']:.2f} s measured x{scale:.1f} (n / store rows); {where}"),
        Row("filter id set through SQL: peak memory while built", fig[f"{label} peak_mb"] * scale,
            "MB", f"{fig[f'{label} peak_mb']:.0f} MB measured x{scale:.1f}; {where} (SQLAlchemy rows "
                  f"before the int64 array; the cached array is {fig[f'{label} array_mb']:.0f} MB "
                  f"measured)"),
    ]


#: The goal the projection is held against (issue #14).
GOAL_RECALL, GOAL_BYTES = 0.98, 80.0


def _sizing_rows(inputs: dict[str, Input], n: int, articles: int,
                 synth_chars: float | None) -> list[Row]:
    """Per-version row files, the FTS table's caption copy, download cache."""
    rows = []
    per_row = inputs.get("version_row_bytes_per_figure")
    if per_row is not None:
        rows.append(Row("per-version row files (image hash for reuse, figure types)",
                        n * per_row.value / GIB, "GiB",
                        f"n x {per_row.value:,.1f} B/figure per kept version; {per_row.basis()}; "
                        f"no embedding cache in the store"))
    fts = inputs.get("fts_content_bytes_per_figure")
    real = inputs["caption_chars"]
    if fts is not None:
        scale = real.value / synth_chars if synth_chars else 1.0
        rows.append(Row("FTS5 table's own copy of caption/label/title", n * fts.value * scale / GIB,
                        "GiB", f"n x {fts.value:,.0f} B/figure (dbstat of figures_fts_content) x "
                        f"{scale:.2f} real/synthetic caption length; {fts.basis()}; an "
                        f"external-content FTS table (content='figures') would not store it"))
        share = inputs.get("fts_content_share")
        if share is not None:
            rows.append(Row("FTS caption copy as share of the store", share.value * 100, "%",
                            f"{share.basis()}: external content saves this, it does not halve "
                            f"the store" if share.value < 0.5 else share.basis()))
    pkg = inputs.get("package_bytes_per_article")
    if pkg is not None:
        rows.append(Row("download cache (packages kept by the downloader)",
                        articles * pkg.value / GIB, "GiB",
                        f"articles x {pkg.value / 1e6:,.2f} MB; {pkg.basis()}; indexer.remote "
                        f"never deletes the cache (delete it after ingest to reclaim)"))
    return rows


def _goal_rows(results: dict[str, dict[str, Any]], n: int, factory: str, ram_total: float) -> list[Row]:
    """The 15 M family measured at reduced size (bench.ann --name ann_opq) against the goal."""
    res = results.get("ann_opq")
    per_fig = ram_total / n
    rows = [Row("index RAM / figure at target", per_fig, "B",
                f"index RAM total / n for {factory}; goal <= {GOAL_BYTES:g} B")]
    if not res:
        return rows + [Row("15 M family recall@10", "not measured", "", "no bench/results/ann_opq.json")]
    fig, par = res.get("figures") or {}, res.get("params") or {}
    src = result_source(res, "ann_opq")
    where = (f"{src}: {par.get('factory')} at n={par.get('n'):,}, intrinsic dim "
             f"{par.get('intrinsic_dim')}, nprobe {par.get('nprobe')}, training sample "
             f"{par.get('train_size')}, 2 shared cores")
    top = par.get("n")
    family = "OPQ-IVF-HNSW-PQ"
    plain = fig.get(f"{top} {family} recall")
    reranked = fig.get(f"{top} {family} rerank recall")
    rows += [Row("15 M family, reduced size: recall@10 without re-ranking", plain, "", where),
             Row("15 M family, reduced size: recall@10 with re-ranking (x10)", reranked, "", where),
             Row("15 M family, reduced size: index bytes / vector", fig.get("bytes_per_vector"), "B",
                 f"{where} (index file / n; centroids weigh more per vector at small n)"),
             Row("15 M family, reduced size: build (train + add)", fig.get("build_s"), "s", where)]
    measured_code = factory_numbers(str(par.get("factory") or ""), 1)["code_bytes"]
    code = factory_numbers(factory, 1)["code_bytes"]
    if measured_code != code:  # the recall above is another code size's: read this one's
        reranked, where = _pq_size_recall(results, code)
        rows.append(Row(f"recall@10 with re-ranking (x10) at {code}-byte codes", reranked
                        if reranked is not None else "not measured", "", where))
    if isinstance(reranked, (int, float)):
        met = reranked >= GOAL_RECALL and per_fig <= GOAL_BYTES
        rows.append(Row("goal: recall@10 >= 0.98 at <= 80 B RAM / figure", "met" if met else "NOT met",
                        "", f"recall {reranked:.3f} (reduced size, re-ranked, {code}-byte codes) and "
                            f"{per_fig:.1f} B/figure projected (PQ codes + 8-byte ids + "
                            f"centroids/HNSW/OPQ over n)"))
    return rows


def _pq_size_recall(results: dict[str, dict[str, Any]], code_bytes: int) -> tuple[float | None, str]:
    """Re-ranked recall@10 of ``code_bytes``-byte PQ codes from ``bench.ann --name
    ann_pq_sizes`` (its largest size), and where it comes from."""
    res = results.get("ann_pq_sizes")
    if not res:
        return None, "no bench/results/ann_pq_sizes.json"
    fig, par = res.get("figures") or {}, res.get("params") or {}
    runs = [(int(k.split()[0]), v) for k, v in fig.items()
            if re.fullmatch(rf"\d+ IVF-PQ{code_bytes} rerank recall", k)]
    if not runs:
        return None, f"{result_source(res, 'ann_pq_sizes')} has no PQ{code_bytes} run"
    n, value = max(runs)
    return float(value), (f"{result_source(res, 'ann_pq_sizes')}: IVF-PQ{code_bytes} at "
                          f"n={n:,}, intrinsic dim {par.get('intrinsic_dim')}, trained centroids")


def _store_rows(inputs: dict[str, Input], n: int, synth_chars: float | None) -> list[Row]:
    store = inputs["store_bytes_per_figure"]
    rows = [Row("store bytes / figure", store.value, "B", store.basis()),
            Row("store (SQLite + FTS5)", n * store.value / GIB, "GiB", "n x bytes/figure")]
    real = inputs["caption_chars"]
    if synth_chars and not store.assumed and "synthetic" in store.source:
        adjusted = store.value * real.value / synth_chars
        rows.append(Row("store, caption-length adjusted", n * adjusted / GIB, "GiB",
                        f"x {real.value:.0f}/{synth_chars:.0f} caption chars (real/synthetic; "
                        f"assumed linear in caption length; real: {real.source})"))
    img = inputs["image_bytes_per_figure"]
    rows += [Row("image bytes / figure", img.value, "B", img.basis()),
             Row("image disk (JPEG + thumbnail)", n * img.value / GIB, "GiB", "n x bytes/figure")]
    return rows


def _time_rows(results: dict[str, dict[str, Any]], inputs: dict[str, Input], n: int, factory: str,
               nprobe: int, dim: int) -> list[Row]:
    gpu_rate, gpu_basis = _gpu_throughput(results, inputs["embed_images_per_s"])
    emb = inputs["embed_images_per_s"]
    ingest, build = inputs["ingest_figures_per_s"], inputs["build_s_per_vector"]
    n_meas = _param(results, "ann", "n", "n_vectors", "count")
    f_meas = _param(results, "ann", "factory")
    rows = [
        Row("embedding, one GPU", n / gpu_rate / 3600, "h", f"{gpu_rate:,.0f} images/s; {gpu_basis}"),
        Row("ingest (parse + store images)", n / ingest.value / 3600, "h", f"{ingest.value:,.1f} figures/s; {ingest.basis()}"),
        _build_row(results, build, n),
    ]
    if not emb.assumed:
        rows.insert(1, Row("embedding, measured device", n / emb.value / 3600, "h",
                           f"{emb.value:,.1f} images/s; {emb.basis()}"))
    measured_bpv = _lookup(results, *KEYS["ann_bytes_per_vector"])
    if measured_bpv is not None:
        rows.append(Row("index bytes / vector (measured)", measured_bpv[0], "B",
                        f"measured: {measured_bpv[1]} at n={n_meas} ({f_meas})"))
    for key in ("api_p50_ms", "api_p99_ms"):  # end to end over HTTP: encoder + index + store
        found = _lookup(results, *KEYS[key])
        if found is not None:
            rows.append(Row(f"API latency {key[4:7]}, 1 client (measured)", found[0], "ms",
                            f"measured: {found[1]} at n={_param(results, 'api', 'n')}; not scaled"))
    for key in ("query_p50_ms", "query_p95_ms"):
        if inputs[key].assumed:  # measurements only: no row for a latency nobody measured
            continue
        value, basis = project_latency(inputs[key], n_meas, f_meas if isinstance(f_meas, str) else None,
                                       n, factory, nprobe, dim)
        rows.append(Row(f"query latency {key[6:9]}, index only, measured n", inputs[key].value, "ms", inputs[key].basis()))
        rows.append(Row(f"query latency {key[6:9]}, index only, at target", value, "ms", basis))
    return rows


# ----------------------------------------------------------------------------- CLI


def render_markdown(rows: list[Row], inputs: dict[str, Input], args: argparse.Namespace) -> str:
    table = markdown_table(["quantity", "value", "unit", "basis"],
                           [[r.quantity, r.value, r.unit, r.basis] for r in rows])
    sources = markdown_table(["input", "value", "source"],
                             [[i.name, i.value, i.basis()] for i in inputs.values()])
    return (f"# Scale projection: {args.figures:,} figures / {args.articles:,} articles\n\n"
            f"Every input is measured by a current bench script (its results file and date are "
            f"named) or marked *assumed*. Timings were taken on 2 CPU cores shared with up to 8 "
            f"other jobs: treat them as noisy upper bounds.\n\n"
            f"{table}\n\n## Inputs\n\n{sources}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--figures", type=int, default=15_000_000, help="target figures (default 15 M)")
    p.add_argument("--articles", type=int, default=4_500_000, help="target articles (default 4.5 M)")
    p.add_argument("--results", type=Path, default=None, help="results dir to read and write (default bench/results)")
    p.add_argument("--synth-n", type=int, default=60, help="synthetic articles ingested to measure the store")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    p.add_argument("--db", type=Path, default=None, help="measure an existing figsearch.db instead")
    p.add_argument("--images-dir", type=Path, default=None, help="its images directory (with --db)")
    p.add_argument("--dim", type=int, default=512, help="embedding size of the target model")
    p.add_argument("--memory-gb", type=float, default=None, help="index memory budget (default: settings)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: settings)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from figsearch.core.config import Settings

    args = parse_args(argv)
    settings = Settings()
    memory_gb = args.memory_gb or settings.index_memory_gb
    nprobe = args.nprobe or settings.nprobe
    results = load_results(args.results)
    if args.db:
        if not args.db.is_file():
            print(f"error: no database at {args.db}")
            return 2
        store = measure_store_db(args.db, args.images_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="figsearch-scale-") as tmp:
            store = measure_store_synthetic(args.synth_n, args.seed, Path(tmp))
    inputs = gather_inputs(results, store, args.dim)
    synth_chars = store["caption_chars"] if not args.db else None
    rows = project(results, inputs, args.figures, args.articles, memory_gb, nprobe, synth_chars)
    text = render_markdown(rows, inputs, args)
    out_dir = args.results or results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.md").write_text(text, encoding="utf-8")
    figures = {f"{r.quantity} ({r.unit})" if r.unit else r.quantity: r.value for r in rows}
    params = {"figures": args.figures, "articles": args.articles, "memory_gb": memory_gb,
              "nprobe": nprobe, "store_measured_on": store["how"],
              "inputs": {k: {"value": v.value, "source": v.source, "assumed": v.assumed} for k, v in inputs.items()}}
    _write(out_dir, params, figures, args.results is not None)
    print(text)
    return 0


def _write(out_dir: Path, params: dict[str, Any], figures: dict[str, Any], explicit: bool) -> None:
    import os

    if explicit:  # write_result honours FIGSEARCH_BENCH_RESULTS; point it at --results
        os.environ["FIGSEARCH_BENCH_RESULTS"] = str(out_dir)
    path = write_result("scale", params, figures)
    print(f"wrote {path} and {out_dir / 'scale.md'}\n")


if __name__ == "__main__":
    raise SystemExit(main())
