"""Int8 text tower vs the float model: per-query cosine, top-10 agreement and encode time.

The model is open_clip ViT-B-16 with the random weights both sides of ``bench/peer.py`` serve
(seed 0, made by the peer harness's ``make_checkpoint.py``). Queries: the harness's 200
biomedical query strings. Corpus for the top-10 check: ``--corpus`` real ROCO captions encoded by
the float text tower; each query's top-10 captions under the float and the int8 query vector
are compared. Timing: one query at a time (p50 ms) and batches of 32 (queries/s), both towers.
Writes ``bench/results/quantise.json``.

    .venv/bin/python -m bench.quantise                 # ViT-B-16, 2000 captions
    .venv/bin/python -m bench.quantise --corpus 200    # quicker
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, markdown_table, write_result

ROCO_CSV = REPO_ROOT.parent / "shared" / "data" / "roco" / "roco_pmc_figures.csv"


def roco_captions(n: int) -> list[str]:
    """The first n non-empty ROCO captions (real PMC figure captions)."""
    out: list[str] = []
    with open(ROCO_CSV, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("caption", "").strip():
                out.append(row["caption"].strip())
            if len(out) >= n:
                break
    return out


def per_query_ms(encoder: Any, queries: list[str]) -> float:
    """Median ms to encode one query on its own."""
    times = []
    for q in queries:
        t0 = time.perf_counter()
        encoder.encode_texts([q])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def batch_qps(encoder: Any, queries: list[str], batch: int = 32) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(queries), batch):
        encoder.encode_texts(queries[start:start + batch])
    return len(queries) / (time.perf_counter() - t0)


def compare(float_enc: Any, int8_enc: Any, queries: list[str], corpus: np.ndarray,
            k: int = 10) -> dict[str, float]:
    """Cosine between float and int8 query vectors and their top-k agreement over ``corpus``."""
    qf = float_enc.encode_texts(queries)
    qq = int8_enc.encode_texts(queries)
    cos = np.sum(qf * qq, axis=1)
    top_f = np.argsort(-(qf @ corpus.T), axis=1)[:, :k]
    top_q = np.argsort(-(qq @ corpus.T), axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_f, top_q, strict=True)]
    same = [bool(np.array_equal(a, b)) for a, b in zip(top_f, top_q, strict=True)]
    return {"cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "queries_cosine_ge_099": round(float(np.mean(cos >= 0.99)), 4),
            f"top{k}_overlap_mean": round(float(np.mean(overlap)), 4),
            f"top{k}_overlap_min": round(float(np.min(overlap)), 4),
            f"top{k}_identical": round(float(np.mean(same)), 4)}


def main(argv: list[str] | None = None) -> int:
    from bench.peer import QUERIES_FILE, vitb16_model_dir
    from figsearch.encoders import load_model, quantize_text_tower

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="model dir (default: the peer's ViT-B-16)")
    p.add_argument("--corpus", type=int, default=2000, help="ROCO captions for the top-10 check")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--timing-queries", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the model dir here")
    args = p.parse_args(argv)
    tmp = None
    if not args.model:
        if args.work_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench-quantise-")
            args.work_dir = Path(tmp.name)
        args.model = str(vitb16_model_dir(args.work_dir))
    queries = [q for q in QUERIES_FILE.read_text().splitlines() if q.strip()][: args.queries]
    float_enc = load_model(args.model, device="cpu")
    int8_enc = copy.copy(float_enc)
    int8_enc.model = copy.deepcopy(float_enc.model)
    layers = quantize_text_tower(int8_enc)
    t0 = time.perf_counter()
    corpus = float_enc.encode_texts(roco_captions(args.corpus))
    corpus_s = time.perf_counter() - t0
    figures: dict[str, Any] = {"quantised_linear_layers": layers, "corpus": len(corpus),
                               "corpus_encode_s": round(corpus_s, 1),
                               **compare(float_enc, int8_enc, queries, corpus)}
    rows = []
    for name, enc in (("float32", float_enc), ("int8", int8_enc)):
        per_q = per_query_ms(enc, queries[: args.timing_queries])
        qps = batch_qps(enc, queries)
        figures[f"{name}_query_p50_ms"] = round(per_q, 2)
        figures[f"{name}_batch32_qps"] = round(qps, 1)
        rows.append([name, round(per_q, 2), round(qps, 1)])
    figures["speedup_one_query"] = round(figures["float32_query_p50_ms"]
                                         / figures["int8_query_p50_ms"], 2)
    print(markdown_table(["text tower", "1 query p50 ms", "batch-32 queries/s"], rows))
    print(markdown_table(["check", "value"], [[k, v] for k, v in figures.items()
                                               if k.startswith(("cosine", "top", "queries"))]))
    path = write_result("quantise", {"model": "ViT-B-16 (random, seed 0)" if tmp or args.work_dir
                                     else args.model, "queries": len(queries),
                                     "corpus": args.corpus}, figures)
    ok = figures["cosine_min"] >= 0.99
    print(f"quantise bench: {len(queries)} queries, {layers} int8 layers, cosine min "
          f"{figures['cosine_min']} ({'ok' if ok else 'BELOW 0.99'}), top-10 identical "
          f"{figures['top10_identical']:.0%}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
