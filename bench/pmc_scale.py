"""PMC-scale search latency on realistic text: captions resampled from real PMC caption sentences.

The other benches write 25-token captions from a synthetic vocabulary (``w123``), in which
almost no word is common, so keyword search looks cheap. PMC captions are ~77 words of ordinary
English and biomedical terms: "the", "of", "cells" occur in most of them, and a query made of
such words matches (and FTS5 scores) most of the store. This bench writes ``--n`` figures whose
captions are sentences of real captions (ROCO, the JATS articles and the pathway figures of
``../shared/data``) into a real figsearch data dir, builds a served index version from synthetic
vectors with the product's own builders, and times queries through the product's
``SearchService`` as the API loads it (:class:`figsearch.api.state.AppState`, its versions opened by
:class:`figsearch.serving.VersionLoader`), so a new keyword
engine or filter columns are measured as soon as the service uses them.

Steps (each reuses what the previous wrote in ``--data-dir``)::

    python -m bench.pmc_scale generate --n 1000000 --data-dir /work/bench-data/pmc-1m
    python -m bench.pmc_scale build    --data-dir /work/bench-data/pmc-1m
    python -m bench.pmc_scale measure  --data-dir /work/bench-data/pmc-1m --name pmc_scale_1m
    python -m bench.pmc_scale all --n 2000 --data-dir /tmp/pmc-2k --name pmc_scale_smoke
    python -m bench.pmc_scale project   # growth fit of the pmc_scale_* results -> 15 M figures

``generate``: sentences split from the real captions (deterministic seed) resampled into
captions whose word count follows the shape of the real full-caption lengths (JATS + pathway
figures) scaled to ``--mean-words`` (77); labels "Figure 3"; article titles drawn from real
titles and sentences; in-figure text (``figure_ocr``) for ``--ocr-share`` of the figures with
images, drawn from real caption tokens; years 2000-2026 skewed to recent; a Zipf spread over
``--journals`` journal names (the real ones first, padded with names made of real words); PMC's
licence mix; figure types from :data:`figsearch.figure_types.LABELS`; ~3.3 figures per article.
Bulk SQL ``executemany`` in one transaction per chunk, the store's own FTS triggers filling the
FTS5 index. A complete store of the same n/seed/format is reused; a partial or different one is
refused unless ``--force`` (which deletes it and starts again).

``build``: clustered random unit vectors (``--dim``, default 512, float16 on disk) for the image
index of the figures with images and 384-d ones for the caption index of every figure, written by
:func:`indexer.build.build_version` with :func:`indexer.captions.write_caption_index` (factory:
:func:`figsearch.index.choose_factory` unless ``--factory``).

``measure``: p50/p95/p99 per kind over ``--queries`` researcher-style queries (real ones from
``bench/eval/queries.jsonl`` plus queries of common words): ``store_keyword_k100`` (the issue's
``FigureStore.keyword_search(q, 100)``), keyword, caption, dense and hybrid (k=20), hybrid
filtered at three selectivities (commercial-use licence, one year, one small journal: shares
measured on the store), the first use of each filter on a freshly loaded service, and the
``highlight`` / ``keyword`` stages of figsearch.timing; resident memory, disk and build time.
Query vectors are random unit vectors near the data's cluster centres (no model is run).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import math
import os
import resource
import shlex
import sqlite3
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO_ROOT,
    load_results,
    markdown_table,
    process_memory_mb,
    results_dir,
    write_result,
)

#: the real data (``$FIGSEARCH_SHARED/data``, as tests/conftest.py reads it)
SHARED = Path(os.environ.get("FIGSEARCH_SHARED", REPO_ROOT.parent / "shared")) / "data"
FORMAT = "pmc-scale-v1"  # bump when the generated rows change
META_KEY = "bench_pmc_scale"
INFO_FILE = "bench_pmc_scale.json"  # build figures, next to figsearch.db
CAPTION_DIM = 384  # all-MiniLM-L6-v2, the product's caption encoder
CLUSTERS = 1000
TARGET_FIGURES = 15_000_000

#: PMC's licence mix (cc-by 55 %, non-commercial 30 %, cc0/public domain 2 %, other/none 13 %)
LICENSE_MIX = {
    "cc-by": 0.55, "cc-by-nc": 0.12, "cc-by-nc-nd": 0.12, "cc-by-nc-sa": 0.06,
    "cc0": 0.015, "public-domain": 0.005, "other": 0.06, "none": 0.07,
}
LICENSE_URLS = {
    "cc-by": "https://creativecommons.org/licenses/by/4.0/",
    "cc-by-nc": "https://creativecommons.org/licenses/by-nc/4.0/",
    "cc-by-nc-nd": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "cc-by-nc-sa": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "cc0": "https://creativecommons.org/publicdomain/zero/1.0/", "public-domain": "",
    "other": "", "none": "",
}
#: figure-type shares (labels of figsearch.figure_types), roughly PMC's
TYPE_MIX = {
    "multi-panel figure": 0.26, "chart/plot": 0.22, "microscopy/fluorescence": 0.07,
    "histology": 0.06, "diagram/pathway": 0.07, "photograph": 0.05, "blot/gel": 0.05,
    "heatmap": 0.03, "Kaplan-Meier curve": 0.02, "flowchart": 0.03, "X-ray": 0.02, "CT": 0.025,
    "MRI": 0.025, "ultrasound": 0.01, "chemical structure": 0.02, "table/text": 0.01,
}
#: queries of common words: they match most captions (the slow case for FTS5)
COMMON_QUERIES = [
    "the role of the cell", "expression of genes in patients", "effect of treatment on cells",
    "results of the analysis", "cells in the tissue", "the expression of protein",
    "patients with disease", "changes in the level of expression", "analysis of the data",
    "comparison of the groups", "distribution of the samples", "images of the cells",
    "cell proliferation and apoptosis", "mice treated with the drug", "in vitro and in vivo",
    "effect of time on the response", "representative images of staining",
    "the number of cells per group", "control and treated groups", "protein levels in cells",
    "schematic of the model", "data are shown as mean", "structure of the protein",
    "the effect of the mutation", "gene expression in tumor", "time course of the infection",
]


# -- the real text -----------------------------------------------------------------------------
class Corpus:
    """Sentences, titles, journals and caption lengths of the real captions in ``SHARED``."""

    def __init__(self, shared: Path = SHARED) -> None:
        from figsearch.caption_index import _SENTENCE_END
        from indexer.jats import JatsError, parse_article

        captions: list[str] = []
        full_lengths: list[int] = []  # whole JATS / pathway captions (ROCO's are cut short)
        titles: list[str] = []
        journals: Counter[str] = Counter()
        with open(shared / "roco" / "roco_pmc_figures.csv", newline="") as fh:
            captions += [row["caption"] for row in csv.DictReader(fh) if row["caption"].strip()]
        for line in (shared / "pmc-figures" / "figures.jsonl").read_text().splitlines():
            row = json.loads(line)
            captions.append(row["caption"])
            full_lengths.append(len(row["caption"].split()))
            titles.append(row.get("paper_title") or "")
            journals[row.get("journal") or ""] += 1
        for path in sorted(glob.glob(str(shared / "jats" / "**" / "*.*xml"), recursive=True)):
            try:
                art = parse_article(Path(path).read_bytes())
            except (JatsError, OSError, ValueError):
                continue  # a MECA manifest, not an article
            titles.append(art.title)
            journals[art.journal] += 1
            for fig in art.figures:
                if fig.caption.strip():
                    captions.append(fig.caption)
                    full_lengths.append(len(fig.caption.split()))
        sentences = [s.strip() for c in captions for s in _SENTENCE_END.split(" ".join(c.split()))]
        self.sentences = sorted({s for s in sentences if len(s.split()) >= 2})
        self.sentence_words = [s.split() for s in self.sentences]
        self.sentence_len = np.array([len(w) for w in self.sentence_words])
        self.titles = sorted({t.strip() for t in titles if len(t.split()) >= 3})
        self.journals = [j for j, _ in journals.most_common() if j.strip()]
        self.full_lengths = np.array(sorted(full_lengths), np.float64)
        self.tokens = np.array([w for ws in self.sentence_words for w in ws], dtype=object)
        self.source_captions = len(captions)

    def journal_names(self, count: int, seed: int) -> list[str]:
        """``count`` journal names: the real ones (most frequent first), then names made of real
        capitalised words ("Journal of Cardiac Research")."""
        rng = np.random.default_rng(seed + 7)
        words = sorted({w.strip(".,;:()[]").capitalize() for w in self.tokens[:200_000]
                        if w.isalpha() and len(w) >= 6 and w.islower()})
        names = list(dict.fromkeys(self.journals))
        patterns = ("Journal of {a} {b}", "{a} {b} Reports", "International Journal of {a}",
                    "{a} and {b}", "Frontiers in {a}", "{a} Research", "Annals of {a} {b}",
                    "BMC {a}", "{a} Letters", "Current {a} {b}")
        seen = set(names)
        while len(names) < count:
            a, b = (words[int(i)] for i in rng.integers(0, len(words), 2))
            name = patterns[int(rng.integers(0, len(patterns)))].format(a=a, b=b)
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names[:count]


def caption_lengths(corpus: Corpus, count: int, mean_words: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Word counts drawn from the real full-caption lengths, scaled to ``mean_words`` (the
    distribution's shape, PMC's mean), at least 3."""
    real = corpus.full_lengths
    scaled = real * (mean_words / real.mean())
    drawn = scaled[rng.integers(0, len(scaled), count)] * rng.uniform(0.9, 1.1, count)
    return np.maximum(np.rint(drawn), 3).astype(np.int64)


def make_caption(corpus: Corpus, length: int, picks: Any) -> str:
    """Whole real sentences until ``length`` words, the last one cut to fit."""
    out: list[str] = []
    while len(out) < length:
        out.extend(corpus.sentence_words[next(picks)])
    text = " ".join(out[:length])
    return text if text.endswith((".", "?", "!")) else text.rstrip(",;:") + "."


def _shares(mix: dict[str, float]) -> tuple[list[str], np.ndarray]:
    p = np.array(list(mix.values()), np.float64)
    return list(mix), p / p.sum()


def year_shares() -> tuple[np.ndarray, np.ndarray]:
    """Years 2000-2026, each ~11 % more articles than the one before (PMC's OA growth)."""
    years = np.arange(2000, 2027)
    p = 1.11 ** (years - 2000)
    return years, p / p.sum()


# -- generate ----------------------------------------------------------------------------------
def store_marker(db: Path) -> dict[str, Any] | None:
    """The generation record of a bench store (None when there is none)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


def _remove_data(data_dir: Path) -> None:
    import shutil

    db = data_dir / "figsearch.db"
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
                 data_dir / INFO_FILE):
        path.unlink(missing_ok=True)
    shutil.rmtree(data_dir / "indexes", ignore_errors=True)


def generate(data_dir: Path, n: int, seed: int = 0, mean_words: float = 77.0,
             ocr_share: float = 0.4, image_share: float = 0.92, n_journals: int = 3000,
             figures_per_article: float = 3.3, chunk_articles: int = 20_000,
             force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write ``n`` figures into ``data_dir/figsearch.db``; returns the generation figures."""
    from tqdm import tqdm

    from figsearch.store import FigureStore

    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "figsearch.db"
    wanted = {"format": FORMAT, "n": n, "seed": seed, "mean_words": mean_words,
              "ocr_share": ocr_share, "journals": n_journals}
    marker = store_marker(db)
    if marker is not None and marker.get("complete") and all(
            marker.get(k) == v for k, v in wanted.items()):
        print(f"pmc_scale: {db} already holds {n:,} generated figures ({FORMAT}); reused",
              file=sys.stderr)
        return dict(marker)
    if db.exists():
        if not force:
            state = ("a partial generation" if marker else "not a pmc_scale store") \
                if not marker or not marker.get("complete") else f"another generation {marker}"
            raise SystemExit(f"pmc_scale: {db} exists ({state}); pass --force to delete it and "
                             "generate again, or use another --data-dir")
        print(f"pmc_scale: --force: deleting {db} and its indexes", file=sys.stderr)
        _remove_data(data_dir)

    t0 = time.perf_counter()
    corpus = Corpus()
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    # articles: 1 + Poisson(mean - 1) figures each, until n figures
    counts = 1 + rng.poisson(figures_per_article - 1, int(n / figures_per_article * 1.2) + 10)
    ends = np.cumsum(counts)
    n_articles = int(np.searchsorted(ends, n) + 1)
    counts = counts[:n_articles]
    counts[-1] -= int(ends[n_articles - 1] - n)
    years, year_p = year_shares()
    lic_names, lic_p = _shares(LICENSE_MIX)
    type_names, type_p = _shares(TYPE_MIX)
    journals = corpus.journal_names(n_journals, seed)
    zipf = 1.0 / np.arange(1, n_journals + 1)
    zipf /= zipf.sum()

    FigureStore(db).close()  # the product's schema, FTS5 table and triggers
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: FTS5 segment merges
    marker = {**wanted, "complete": False, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime())}
    with conn:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     (META_KEY, json.dumps(marker)))
    picks_rng = np.random.default_rng(seed + 1)

    def sentence_picks() -> Any:
        while True:
            yield from picks_rng.integers(0, len(corpus.sentences), 1 << 16).tolist()

    picks = sentence_picks()
    n_sent = len(corpus.tokens)
    fig_id = 0
    words_total = ocr_rows = images = 0
    t_write = time.perf_counter()
    with tqdm(total=n, desc="pmc_scale generate", unit="fig", disable=not progress,
              mininterval=5) as bar:
        for a0 in range(0, n_articles, chunk_articles):
            a1 = min(a0 + chunk_articles, n_articles)
            m = a1 - a0
            a_year = years[rng.choice(len(years), m, p=year_p)]
            a_lic = rng.choice(len(lic_names), m, p=lic_p)
            a_jour = rng.choice(n_journals, m, p=zipf)
            use_title = rng.random(m) < 0.35
            title_pick = rng.integers(0, len(corpus.titles), m)
            art_rows = []
            for j in range(m):
                aid = a0 + j + 1
                if use_title[j]:
                    title = corpus.titles[int(title_pick[j])]
                else:
                    words = corpus.sentence_words[next(picks)][:20]
                    title = " ".join(words).rstrip(".,;:")
                lic = lic_names[int(a_lic[j])]
                pmcid = f"PMC{1_000_000 + aid}"
                art_rows.append((aid, pmcid, pmcid, str(20_000_000 + aid),
                                 f"10.1371/bench.{aid}", title, journals[int(a_jour[j])],
                                 int(a_year[j]), lic if lic not in ("other", "none") else "",
                                 LICENSE_URLS[lic], lic, f"{aid:x}"))
            f_counts = counts[a0:a1]
            k = int(f_counts.sum())
            lengths = caption_lengths(corpus, k, mean_words, rng)
            has_image = rng.random(k) < image_share
            has_ocr = has_image & (rng.random(k) < ocr_share)
            f_type = rng.choice(len(type_names), k, p=type_p)
            fig_rows, ocr = [], []
            pos = 0
            for j in range(m):
                aid = a0 + j + 1
                for num in range(1, int(f_counts[j]) + 1):
                    fig_id += 1
                    caption = make_caption(corpus, int(lengths[pos]), picks)
                    words_total += int(lengths[pos])
                    sha = path = None
                    if has_image[pos]:
                        images += 1
                        sha = hashlib.sha256(f"pmc-scale:{seed}:{fig_id}".encode()).hexdigest()
                        path = f"images/{sha[:2]}/{sha}.jpg"
                    if has_ocr[pos]:
                        start = int(rng.integers(0, n_sent - 40))
                        words = corpus.tokens[start:start + int(rng.integers(3, 40))]
                        ocr.append((sha, " ".join(w.strip(".,;:()") for w in words)))
                    label = f"Figure {num}" if fig_id % 5 else f"Fig. {num}"
                    fig_rows.append((fig_id, f"PMC{1_000_000 + aid}/F{num}", aid, f"F{num}",
                                     label, caption, path,
                                     path and path.replace(".jpg", "_thumb.jpg"), sha,
                                     int(sha is not None), type_names[int(f_type[pos])]))
                    pos += 1
            with conn:
                conn.executemany(
                    "INSERT INTO articles(id, key, pmcid, pmid, doi, title, journal, year, "
                    "license_text, license_url, license_class, source, content_hash, retracted, "
                    "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'bench', ?, 0, "
                    "'2026-12-01 00:00:00')", art_rows)
                # OCR rows first: the figures' insert trigger copies their text into the FTS row
                conn.executemany(
                    "INSERT INTO figure_ocr(sha256, text, boxes, engine, error, ocr_at) "
                    "VALUES (?, ?, 1, 'bench', NULL, '2026-12-01 00:00:00')", ocr)
                conn.executemany(
                    "INSERT INTO figures(id, key, article_id, fig_id, label, caption, image_path, "
                    "thumb_path, width, height, orig_width, orig_height, sha256, has_image, "
                    "source, figure_type, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1024, 768, "
                    "2048, 1536, ?, ?, 'bench', ?, '{}')", fig_rows)
            ocr_rows += len(ocr)
            bar.update(k)
    write_s = time.perf_counter() - t_write
    marker.update(complete=True, articles=n_articles, figures=fig_id, images=images,
                  ocr=ocr_rows, mean_caption_words=round(words_total / max(fig_id, 1), 1),
                  source_sentences=len(corpus.sentences),
                  source_captions=corpus.source_captions, corpus_load_s=round(load_s, 1),
                  write_s=round(write_s, 1), figures_per_s=round(fig_id / write_s, 1))
    with conn:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     (META_KEY, json.dumps(marker)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"pmc_scale: generated {fig_id:,} figures in {n_articles:,} articles ({images:,} with "
          f"images, {ocr_rows:,} with in-figure text), mean {marker['mean_caption_words']} words "
          f"per caption from {len(corpus.sentences):,} real sentences; {write_s:.0f} s, "
          f"{fig_id / write_s:,.0f} figures/s; store {db.stat().st_size / 1e9:.2f} GB",
          file=sys.stderr, flush=True)
    return dict(marker)


# -- build -------------------------------------------------------------------------------------
class _CaptionEncoderName:
    """What :func:`indexer.captions.write_caption_index` records of an encoder."""

    def __init__(self, spec: str, model_key: str, dim: int) -> None:
        self.spec, self.model_key, self.dim = spec, model_key, dim


def model_keys(dim: int, seed: int) -> tuple[str, str]:
    """(image model key, caption model key) of the synthetic vectors."""
    return (f"bench-pmc-scale:clusters-d{dim}-s{seed}",
            f"bench-pmc-scale:captions-d{CAPTION_DIM}-s{seed}")


def derived_steps() -> list[tuple[str, Any]]:
    """The per-version files the product derives from the store besides the vector indexes,
    for whichever of them this checkout has: the keyword index (``figsearch.keyword_index``)
    and the filter columns (``figsearch.columns``). (name, step(store, version_dir) -> manifest
    entries)."""
    import importlib

    steps: list[tuple[str, Any]] = []
    for module, func in (("figsearch.keyword_index", "write_keyword_index"),
                         ("figsearch.columns", "write_columns")):
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue
        steps.append((f"{module}.{func}", fn))
    return steps


def write_derived(data_dir: Path, version_dir: Path) -> dict[str, Any]:
    """Run :func:`derived_steps` into ``version_dir``; manifest entries + seconds of each."""
    from figsearch.store import FigureStore

    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    store = FigureStore(data_dir / "figsearch.db", create=False)
    try:
        for name, fn in derived_steps():
            t = time.perf_counter()
            out.update(fn(store, version_dir))
            seconds[name] = round(time.perf_counter() - t, 1)
            print(f"pmc_scale: {name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    finally:
        store.close()
    return {**out, "bench_derived_s": seconds}


def derive(data_dir: Path) -> dict[str, Any]:
    """Add the derived files (:func:`derived_steps`) to the *current* version in place and merge
    their entries into its manifest: the new keyword engine / filter columns on an existing
    bench data dir without rebuilding its vector indexes (bench data only; the product builds a
    new version)."""
    from figsearch.index import current_version_dir

    version_dir = current_version_dir(data_dir / "indexes")
    if version_dir is None:
        raise SystemExit(f"pmc_scale: no index version in {data_dir}; run build first")
    if not derived_steps():
        raise SystemExit("pmc_scale: this checkout has neither figsearch.keyword_index nor "
                         "figsearch.columns; nothing to derive")
    entries = write_derived(data_dir, version_dir)
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(entries)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    info_path = data_dir / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["derived_s"] = entries["bench_derived_s"]
    info_path.write_text(json.dumps(info, indent=2))
    return entries


def build(data_dir: Path, dim: int = 512, factory: str | None = None, seed: int = 0,
          memory_gb: float = 4.0, derived: bool = True) -> dict[str, Any]:
    """A served version: image index of the figures with images, caption index of all, and
    (``derived``) the keyword index / filter columns when this checkout has them."""
    from bench.api import clustered_vectors
    from figsearch.index import image_budget
    from indexer.build import build_version
    from indexer.captions import CaptionReport, CaptionVectors, write_caption_index

    db = data_dir / "figsearch.db"
    marker = store_marker(db)
    if not marker or not marker.get("complete"):
        raise SystemExit(f"pmc_scale: {db} holds no complete generated store; run generate first")
    with sqlite3.connect(db) as conn:
        all_ids = np.array([r[0] for r in conn.execute("SELECT id FROM figures ORDER BY id")],
                           np.int64)
        img_ids = np.array([r[0] for r in conn.execute(
            "SELECT id FROM figures WHERE has_image = 1 ORDER BY id")], np.int64)
    image_key, caption_key = model_keys(dim, seed)
    t0 = time.perf_counter()
    cap_vectors = clustered_vectors(len(all_ids), CAPTION_DIM, seed + 1, CLUSTERS)
    built = CaptionVectors(all_ids, cap_vectors, np.zeros(0, np.int64),
                           np.zeros((0, CAPTION_DIM), np.float32),
                           CaptionReport(len(all_ids), 0, 0, 0.0))
    cap_encoder = _CaptionEncoderName("bench-pmc-scale-captions", caption_key, CAPTION_DIM)
    caption_s: dict[str, float] = {}

    def add_captions(version_dir: Path) -> dict[str, Any]:
        t = time.perf_counter()
        summary = write_caption_index(version_dir, built, cap_encoder, memory_gb)
        caption_s["s"] = time.perf_counter() - t
        t = time.perf_counter()
        entries = write_derived(data_dir, version_dir) if derived else {}
        caption_s["derived"] = time.perf_counter() - t
        return {"captions": summary, **entries}

    vectors = clustered_vectors(len(img_ids), dim, seed, CLUSTERS)
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    extra = {"bench_pmc_scale": {"seed": seed, "clusters": CLUSTERS, "dim": dim,
                                 "caption_dim": CAPTION_DIM}}
    version = build_version(data_dir / "indexes", vectors, img_ids,
                            model_spec="bench-pmc-scale-image", model_key=image_key,
                            factory=factory, memory_gb=image_budget(memory_gb), use_gpu=False, extra=extra,
                            add_files=add_captions)
    total_s = time.perf_counter() - t1
    manifest = json.loads((version / "manifest.json").read_text())
    cap_manifest = json.loads((version / "captions" / "manifest.json").read_text())
    info = {"build_total_s": round(total_s, 1), "vector_gen_s": round(gen_s, 1),
            "image_index_s": round(float(manifest["build_seconds"]), 1),
            "caption_index_s": round(caption_s.get("s", 0.0), 1),
            "derived_s": manifest.get("bench_derived_s", {}),
            "image_factory": manifest["factory"], "caption_factory": cap_manifest["factory"],
            "image_vectors": int(len(img_ids)), "caption_vectors": int(len(all_ids)),
            "dim": dim, "version": version.name}
    (data_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    print(f"pmc_scale: built {version.name}: {len(img_ids):,} image vectors "
          f"({manifest['factory']}), {len(all_ids):,} caption vectors ({cap_manifest['factory']})"
          f" in {total_s:.0f} s", file=sys.stderr, flush=True)
    return info


# -- measure -----------------------------------------------------------------------------------
class ClusterEncoder:
    """A stand-in model: a text's vector is a random unit vector near one of the data's cluster
    centres, chosen by a hash of the text (same text, same vector). No model is run."""

    def __init__(self, model_key: str, dim: int, seed: int, clusters: int = CLUSTERS) -> None:
        self.model_key, self.dim, self.spec = model_key, dim, model_key
        rng = np.random.default_rng(seed)  # bench.api.clustered_vectors draws its centres first
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32)

    def _vector(self, key: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        v = self.centres[int(rng.integers(0, len(self.centres)))] + \
            0.6 * rng.standard_normal(self.dim).astype(np.float32)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts])

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return np.stack([self._vector(repr(i)) for i in images])

    def warm_up(self, max_rows: int = 1) -> int:
        return 0

    def close(self) -> None:
        pass


class OnnxCostEncoder(ClusterEncoder):
    """A stand-in that first encodes each query text with a real exported model on ONNX Runtime
    (what the default serve does) and then returns the stand-in's vector, so a query's latency
    holds the real encoding cost while it still searches the generated clustered vectors (a
    real model's vectors would land nowhere in particular in them)."""

    def __init__(self, real: Any, model_key: str, dim: int, seed: int) -> None:
        super().__init__(model_key, dim, seed)
        self.real = real

    def encode_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        self.real.encode_texts(texts)
        return super().encode_texts(texts)


def onnx_exports(onnx_root: Path) -> tuple[str, str]:
    """(image model key, caption model key) of the exports under ``onnx_root``: the one caption
    model (``st:...``) and the one image model beside it."""
    from figsearch.onnx_encoder import MANIFEST

    manifests = [json.loads(m.read_text()) for m in sorted(onnx_root.glob(f"*/{MANIFEST}"))]
    keys = [str(m["model_key"]) for m in manifests if "model_key" in m]
    captions = [k for k in keys if k.startswith("st:")]
    images = [k for k in keys if not k.startswith("st:")]
    if len(captions) != 1 or len(images) != 1:
        raise SystemExit(f"{onnx_root}: want one image and one caption export, found {keys}")
    return images[0], captions[0]


def bench_state(settings: Any, manifest: dict[str, Any], onnx_root: Path | None = None) -> Any:
    """The API's :class:`~figsearch.api.state.AppState` (store, index, caption index, service:
    whatever the product loads for a version) with the models swapped for
    :class:`ClusterEncoder` s - or, with ``onnx_root``, :class:`OnnxCostEncoder` s that also
    run that root's exported models on each query."""
    from figsearch.api.state import AppState

    info = manifest.get("bench_pmc_scale") or {}
    seed = int(info.get("seed", 0))
    image_key, caption_key = str(manifest["model_key"]), str(manifest["captions"]["model_key"])
    image_dim, caption_dim = int(manifest["dim"]), int(manifest["captions"]["dim"])
    if onnx_root is None:
        image = ClusterEncoder(image_key, image_dim, seed)
        caption = ClusterEncoder(caption_key, caption_dim, seed + 1)
    else:
        from figsearch.encoders import load_encoder

        real_image, real_caption = onnx_exports(onnx_root)
        image = OnnxCostEncoder(load_encoder(real_image, "onnx", onnx_root=onnx_root),
                                image_key, image_dim, seed)
        caption = OnnxCostEncoder(load_encoder(real_caption, "onnx", onnx_root=onnx_root),
                                  caption_key, caption_dim, seed + 1)

    from figsearch.serving import VersionLoader

    class BenchLoader(VersionLoader):
        def _new_encoder(self, spec: str) -> Any:
            return image

        def _new_caption_encoder(self, spec: str) -> Any:
            return caption

    state = AppState(settings)
    state.loader = BenchLoader(settings)
    return state


def load_queries(limit: int = 0) -> list[str]:
    """92 queries: 66 real researcher queries (every fourth of bench/eval/queries.jsonl) and
    26 made of common words."""
    path = REPO_ROOT / "bench" / "eval" / "queries.jsonl"
    real = [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]
    queries = list(dict.fromkeys(real[::4][:66] + COMMON_QUERIES))
    return queries[:limit] if limit else queries


def percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms, np.float64)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "mean_ms": round(float(arr.mean()), 2)}


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def choose_filters(db: Path) -> dict[str, tuple[dict[str, Any], int]]:
    """Three filters at ~40-60 %, ~5 % and ~0.1 % of the figures: (filter kwargs, figures)."""
    from figsearch.licenses import COMMERCIAL_CLASSES

    with sqlite3.connect(db) as conn:
        total = conn.execute("SELECT count(*) FROM figures").fetchone()[0]
        marks = ",".join("?" * len(COMMERCIAL_CLASSES))
        commercial = conn.execute(
            "SELECT count(*) FROM figures f JOIN articles a ON a.id = f.article_id "
            f"WHERE a.license_class IN ({marks})", sorted(COMMERCIAL_CLASSES)).fetchone()[0]
        years = conn.execute("SELECT a.year, count(*) FROM figures f JOIN articles a ON "
                             "a.id = f.article_id GROUP BY a.year").fetchall()
        journals = conn.execute("SELECT a.journal, count(*) FROM figures f JOIN articles a ON "
                                "a.id = f.article_id GROUP BY a.journal").fetchall()
    year, y_count = min(years, key=lambda r: (abs(r[1] / total - 0.05), r[0]))
    journal, j_count = min(journals, key=lambda r: (abs(r[1] / total - 0.001), r[0]))
    return {"broad": ({"commercial_only": True}, commercial),
            "mid": ({"year_from": year, "year_to": year}, y_count),
            "narrow": ({"journal": journal}, j_count)}


KINDS = ("store_keyword_k100", "keyword", "caption", "dense", "hybrid",
         "filtered_broad", "filtered_mid", "filtered_narrow")


def warm_page_cache(version_dir: Path, block: int = 16 << 20) -> float:
    """Read every file of a version once (MB read): memory-mapped codes, re-rank vectors,
    keyword segments and filter columns are then in the page cache before timing, as in a
    server that has been answering queries (the goals are for a warm cache; a bench that has
    just written gigabytes has evicted them)."""
    read = 0
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                read += len(chunk)
    return round(read / 2**20, 1)


def measure(data_dir: Path, queries: list[str], kinds: list[str], k: int = 20,
            warmup: int = 3, checkpoint: Any = None, onnx_root: Path | None = None,
            ) -> tuple[dict[str, Any], list[list[Any]]]:
    """Latency per kind, first use of each filter, memory and disk; (figures, table rows).
    ``checkpoint(figures)`` is called after each kind (a long run keeps what it measured);
    ``onnx_root``: queries also pay the real ONNX encoders' cost (:class:`OnnxCostEncoder`)."""
    from figsearch import timing
    from figsearch.core.config import Settings
    from figsearch.index import current_version_dir, read_manifest
    from figsearch.store import FigureFilter

    db = data_dir / "figsearch.db"
    marker = store_marker(db) or {}
    version_dir = current_version_dir(data_dir / "indexes")
    if version_dir is None:
        raise SystemExit(f"pmc_scale: no index version in {data_dir}; run build first")
    manifest = read_manifest(version_dir)
    warmed_mb = warm_page_cache(version_dir)
    rss0 = process_memory_mb()
    # every query is encoded: each kind runs the same query texts, and the API's embedding
    # cache would answer all but the first kind's from memory (no model cost at all)
    settings = Settings(data_dir=data_dir, query_cache_size=0)
    state = bench_state(settings, manifest, onnx_root)
    t0 = time.perf_counter()
    state.reload()
    load_s = time.perf_counter() - t0
    service = state.current.service
    rss_loaded = process_memory_mb()
    filters = choose_filters(db)
    n = int(marker.get("figures") or 0)
    figures: dict[str, Any] = {
        "figures": n, "articles": marker.get("articles"), "images": marker.get("images"),
        "mean_caption_words": marker.get("mean_caption_words"),
        "generate_figures_per_s": marker.get("figures_per_s"), "generate_s": marker.get("write_s"),
        "service_load_s": round(load_s, 2), "signals": ",".join(service.fused_signals()),
        "page_cache_warmed_mb": warmed_mb,
        # what serves: the service's parts (a keyword index or filter columns show up here)
        "service_parts": ",".join(f"{k}={type(v).__name__}" for k, v in sorted(
            vars(service).items()) if not k.startswith("_") and v is not None
            and type(v).__module__.startswith("figsearch")),
        "version_files": ",".join(sorted(p.name for p in version_dir.iterdir())),
    }
    info_path = data_dir / INFO_FILE
    if info_path.exists():
        for key, value in json.loads(info_path.read_text()).items():
            if isinstance(value, dict):  # seconds of each derived-file step
                figures.update({f"{key} {k}": v for k, v in value.items()})
            else:
                figures[key] = value
    for name, (flt, count) in filters.items():
        figures[f"filter_{name}"] = json.dumps(flt, sort_keys=True)
        figures[f"filter_{name}_share"] = round(count / max(n, 1), 5)
    rows: list[list[Any]] = []
    stage_ms: dict[str, list[float]] = {}

    cpu_ms: list[float] = []

    def run(kind: str, q: str) -> tuple[float, dict[str, float]]:
        acc, token = timing.begin()
        t, c = time.perf_counter(), time.process_time()
        try:
            if kind == "store_keyword_k100":
                state.store.keyword_search(q, 100)
            elif kind.startswith("filtered_"):
                flt = FigureFilter(**filters[kind.removeprefix("filtered_")][0])
                service.search_text(q, k=k, mode="hybrid", flt=flt)
            else:
                service.search_text(q, k=k, mode=kind)
        finally:
            ms = (time.perf_counter() - t) * 1000
            cpu_ms.append((time.process_time() - c) * 1000)  # all threads: less load-sensitive
            timing.end(token)
        return ms, dict(acc)

    for kind in kinds:
        for q in queries[:warmup]:
            run(kind, q)
        times: list[float] = []
        cpu_ms.clear()
        t_kind = time.perf_counter()
        for q in queries:
            ms, stages = run(kind, q)
            times.append(ms)
            for stage in ("keyword", "highlight", "metadata", "search", "collapse"):
                if stage in stages:
                    stage_ms.setdefault(f"{kind}:{stage}", []).append(stages[stage])
        stats = percentiles(times)
        figures.update({f"{kind}_{key}": v for key, v in stats.items()})
        figures.update({f"{kind}_cpu_{key}": v for key, v in percentiles(cpu_ms).items()
                        if key in ("p50_ms", "mean_ms")})
        slowest = queries[int(np.argmax(times))]
        figures[f"{kind}_slowest_query"] = slowest
        rows.append([kind, len(times), stats["p50_ms"], stats["p95_ms"], stats["p99_ms"],
                     stats["mean_ms"], figures[f"{kind}_cpu_p50_ms"], "", slowest])
        print(f"pmc_scale: {kind:>20}: p50 {stats['p50_ms']:8.1f} ms  p95 {stats['p95_ms']:8.1f}"
              f"  p99 {stats['p99_ms']:8.1f}  ({time.perf_counter() - t_kind:.0f} s)",
              file=sys.stderr, flush=True)
        if checkpoint is not None:
            checkpoint({**figures, "partial": f"{len(rows)} of {len(kinds)} kinds measured"})
    # first use of each filter: a freshly loaded service (its filter caches empty; the page
    # cache warm from the runs above, as in a server that has been answering queries), one query
    for i, name in enumerate(filters):
        if f"filtered_{name}" not in kinds:
            continue
        state.reload(force=True)
        service = state.current.service
        ms, _ = run(f"filtered_{name}", queries[(i * 7 + 1) % len(queries)])
        figures[f"filtered_{name}_first_ms"] = round(ms, 2)
        for row in rows:
            if row[0] == f"filtered_{name}":
                row[7] = round(ms, 2)
        print(f"pmc_scale: first use of filter {name} ({filters[name][0]}): {ms:.0f} ms",
              file=sys.stderr, flush=True)
    for key, values in sorted(stage_ms.items()):
        kind, stage = key.split(":")
        stats = percentiles(values)
        figures.update({f"{kind}_stage_{stage}_{s}": v for s, v in stats.items()
                        if s != "mean_ms"})
    for stage in ("highlight", "keyword"):
        if f"hybrid:{stage}" in stage_ms:
            stats = percentiles(stage_ms[f"hybrid:{stage}"])
            rows.append([f"stage {stage} (hybrid)", len(stage_ms[f"hybrid:{stage}"]),
                         stats["p50_ms"], stats["p95_ms"], stats["p99_ms"], stats["mean_ms"],
                         "", "", ""])
            figures.update({f"stage_{stage}_{s}": v for s, v in stats.items()})
    rss_end = process_memory_mb()
    figures.update({"rss_before_load_mb": rss0["rss_mb"], "rss_loaded_mb": rss_loaded["rss_mb"],
                    "rss_end_mb": rss_end["rss_mb"], "peak_rss_mb": rss_end["peak_rss_mb"],
                    "rss_end_anon_mb": rss_end["rss_anon_mb"],
                    "rss_end_file_mb": rss_end["rss_file_mb"],
                    "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                       1)})
    version_dir = current_version_dir(data_dir / "indexes")
    assert version_dir is not None
    store_bytes = sum(dir_size(p) for p in data_dir.glob("figsearch.db*"))
    figures["disk_store_mb"] = round(store_bytes / 2**20, 1)
    figures["disk_version_mb"] = round(dir_size(version_dir) / 2**20, 1)
    for part in sorted(version_dir.iterdir()):  # image index files, captions/, any new engine
        figures[f"disk_version_{part.name}_mb"] = round(dir_size(part) / 2**20, 1)
    figures["disk_total_mb"] = round(figures["disk_store_mb"] + figures["disk_version_mb"], 1)
    figures["disk_store_bytes_per_figure"] = round(store_bytes / max(n, 1), 1)
    with sqlite3.connect(db) as conn:
        try:
            fts = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'figures_fts%'"
                               ).fetchone()[0]
            figures["disk_fts_mb"] = round((fts or 0) / 2**20, 1)
        except sqlite3.Error:
            pass
    state.close()
    return figures, rows


# -- projection -------------------------------------------------------------------------------
PROJECTED = ("store_keyword_k100_cpu_p50_ms", "keyword_cpu_p50_ms", "hybrid_cpu_p50_ms",
             "caption_cpu_p50_ms", "dense_cpu_p50_ms", "filtered_broad_cpu_p50_ms",
             "filtered_mid_cpu_p50_ms", "filtered_narrow_cpu_p50_ms",
             "store_keyword_k100_p50_ms", "keyword_p50_ms", "keyword_p95_ms", "hybrid_p50_ms",
             "hybrid_p95_ms", "hybrid_p99_ms", "caption_p50_ms", "dense_p50_ms",
             "filtered_broad_p50_ms", "filtered_mid_p50_ms", "filtered_narrow_p50_ms",
             "filtered_broad_first_ms", "filtered_mid_first_ms", "filtered_narrow_first_ms",
             "stage_highlight_p50_ms", "stage_keyword_p50_ms", "rss_end_mb", "disk_store_mb",
             "disk_version_mb",
             "disk_total_mb", "build_total_s", "generate_s")


def project(results: dict[str, dict[str, Any]], target: int = TARGET_FIGURES,
            engine: str | None = None) -> dict[str, Any]:
    """Power-law growth ``y = a·n^b`` of each metric, least squares in log-log over every
    measured size (of the same keyword engine), extrapolated to ``target`` figures. Wall times
    on shared cores scatter with the load; the CPU times fit better (``_r2`` says how well)."""
    runs = [r for name, r in results.items() if name.startswith("pmc_scale_")
            and "projection" not in name and (r.get("figures") or {}).get("figures")]
    if engine:
        runs = [r for r in runs if r["params"].get("engine_label") == engine]
    runs.sort(key=lambda r: r["figures"]["figures"])
    by_n = {r["figures"]["figures"]: r for r in runs}
    sizes = sorted(by_n)
    out: dict[str, Any] = {"target_figures": target, "sizes": sizes,
                           "inputs": {str(s): by_n[s]["_path"] if "_path" in by_n[s] else ""
                                      for s in sizes}}
    if len(sizes) < 2:
        out["note"] = "fewer than two measured sizes: no projection"
        return out
    out["fit"] = (f"y = a*n^b, least squares in log-log over n = "
                  f"{', '.join(f'{n:,}' for n in sizes)} (measured), extrapolated")
    for key in PROJECTED:
        points = [(n, by_n[n]["figures"].get(key)) for n in sizes]
        points = [(n, y) for n, y in points if isinstance(y, (int, float)) and y > 0]
        if len(points) < 2:
            continue
        x = np.log([n for n, _ in points])
        y = np.log([v for _, v in points])
        b, log_a = np.polyfit(x, y, 1)
        fitted = log_a + b * x
        ss = float(((y - y.mean()) ** 2).sum())
        out[f"{key}_exponent"] = round(float(b), 3)
        out[f"{key}_r2"] = round(1 - float(((y - fitted) ** 2).sum()) / ss, 3) if ss else 1.0
        out[f"{key}_at_{target // 1_000_000}m"] = round(math.exp(log_a + b * math.log(target)), 1)
    return out


def projection_table(results: dict[str, dict[str, Any]], proj: dict[str, Any],
                     engine: str) -> str:
    """Each projected metric at every measured size, its growth exponent and its value at the
    target."""
    by_n = {r["figures"]["figures"]: r["figures"] for name, r in results.items()
            if name.startswith("pmc_scale_") and "projection" not in name
            and (r.get("figures") or {}).get("figures")
            and r["params"].get("engine_label") == engine}
    sizes = sorted(by_n)
    target = f"{proj['target_figures'] // 1_000_000}m"
    rows = [[key, *(by_n[n].get(key, "") for n in sizes), proj.get(f"{key}_exponent", ""),
             proj.get(f"{key}_r2", ""), proj.get(f"{key}_at_{target}", "")] for key in PROJECTED]
    return markdown_table(["metric", *(f"n={n:,}" for n in sizes), "exponent b", "r²",
                           f"projected n={proj['target_figures']:,}"], rows)


# -- CLI -------------------------------------------------------------------------------------
def _size_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("generate", "build", "derive", "measure", "all", "project"))
    p.add_argument("--data-dir", type=Path, default=None, help="the bench data dir (kept)")
    p.add_argument("--n", type=int, default=100_000, help="figures to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean-words", type=float, default=77.0, help="mean caption words")
    p.add_argument("--ocr-share", type=float, default=0.4,
                   help="share of figures with images that have in-figure text")
    p.add_argument("--journals", type=int, default=3000, help="journal names (Zipf)")
    p.add_argument("--force", action="store_true", help="delete a partial/other store first")
    p.add_argument("--dim", type=int, default=512, help="image vector dimension")
    p.add_argument("--factory", default=None, help="image index factory (default: choose_factory)")
    p.add_argument("--memory-gb", type=float, default=4.0,
                   help="the version's index memory budget (FIGSEARCH_INDEX_MEMORY_GB)")
    p.add_argument("--queries", type=int, default=0, help="use only the first N queries")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--name", default=None,
                   help="result name (default pmc_scale_<size>); also the projection's input")
    p.add_argument("--engine-label", default="fts5",
                   help="what keyword engine/filter code this run measures ('fts5' = before)")
    p.add_argument("--target", type=int, default=TARGET_FIGURES, help="projection target")
    p.add_argument("--no-derived", action="store_true",
                   help="build without the keyword index / filter columns of this checkout")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--onnx-encoders", type=Path, default=None,
                   help="an export root (`figsearch export-onnx --out`): each query also runs "
                        "its real image-text and caption models on ONNX Runtime")
    args = p.parse_args(argv)
    command = "python -m bench.pmc_scale " + shlex.join(argv)
    if args.step == "project":
        results = load_results()
        proj = project(results, args.target, args.engine_label)
        path = write_result(f"pmc_scale_projection_{args.engine_label}",
                            {"command": command, "engine_label": args.engine_label}, proj)
        print(projection_table(results, proj, args.engine_label))
        print(f"wrote {path}")
        return 0
    if args.data_dir is None:
        p.error("--data-dir is required")
    data_dir: Path = args.data_dir
    if args.step in ("generate", "all"):
        generate(data_dir, args.n, args.seed, args.mean_words, args.ocr_share,
                 n_journals=args.journals, force=args.force, progress=not args.no_progress)
    if args.step == "build" or (args.step == "all" and
                                not (data_dir / "indexes" / "current").exists()):
        build(data_dir, args.dim, args.factory, args.seed, args.memory_gb,
              derived=not args.no_derived)
    if args.step == "derive":
        derive(data_dir)
    if args.step in ("measure", "all"):
        queries = load_queries(args.queries)
        kinds = [x for x in args.kinds.split(",") if x]
        unknown = set(kinds) - set(KINDS)
        if unknown:
            p.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        params = {"command": command, "data_dir": str(data_dir), "queries": len(queries),
                  "k": args.k, "kinds": kinds, "engine_label": args.engine_label,
                  "note": "in-process SearchService (AppState) with stand-in encoders; "
                          "2 CPU cores shared with other jobs",
                  "onnx_encoders": str(args.onnx_encoders or "")}

        def checkpoint(partial: dict[str, Any]) -> None:
            name = args.name or f"pmc_scale_{_size_label(int(partial['figures']))}"
            write_result(name, {**params, "load_avg": [round(x, 2) for x in os.getloadavg()]},
                         partial)

        figures, rows = measure(data_dir, queries, kinds, args.k, checkpoint=checkpoint,
                                onnx_root=args.onnx_encoders)
        name = args.name or f"pmc_scale_{_size_label(int(figures['figures']))}"
        params["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        path = write_result(name, params, figures)
        print(markdown_table(["kind", "queries", "p50 ms", "p95 ms", "p99 ms", "mean ms",
                              "CPU p50 ms", "first use ms", "slowest query"], rows))
        print()
        shown = ("disk_", "rss", "peak", "build", "filter_", "figures", "generate", "image_",
                 "caption_index", "caption_factory", "caption_vectors", "service_parts")
        print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()
                                                  if k.startswith(shown)]))
        proj = project(load_results(results_dir()), args.target, args.engine_label)
        if len(proj.get("sizes", [])) >= 2:
            write_result(f"pmc_scale_projection_{args.engine_label}",
                         {"command": command, "engine_label": args.engine_label}, proj)
        print(f"pmc_scale: {len(rows)} rows, n={figures['figures']:,}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
