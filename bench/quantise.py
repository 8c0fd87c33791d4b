"""The fast encoder variants vs the float model: per-query cosine, top-10 agreement, speed.

Variants of one model: ``float32-full`` (the reference: the text tower over the whole padded
context, as open_clip and clip-retrieval run it), ``float32`` (padding trimmed, the default),
``bfloat16`` (``FIGSEARCH_CPU_PRECISION=bfloat16``) and ``int8`` (``FIGSEARCH_QUANTIZE_TEXT``).
The model is open_clip ViT-B-16 with the random weights both sides of ``bench/peer.py`` serve
(seed 0), or ``--model DIR`` (e.g. the trained figclip-mini, where top-10 lists mean something:
random weights put all captions within a hair of each other, so near-ties swap).

Checks: text queries (the peer harness's biomedical query strings) against ``--corpus`` real
ROCO captions, and image queries (real PMC figures) against the other figures, both corpora
encoded by the reference; each variant's query vectors and top-10 lists are compared with the
reference's. Timing, after each variant's warm-up (as the API warms up at load): one text query at
a time (p50 ms), batches of 32 (queries/s), one image at a time (p50 ms). Writes ``bench/results/<--name>.json``.

    .venv/bin/python -m bench.quantise                                  # ViT-B-16, 2000 captions
    .venv/bin/python -m bench.quantise --model D/models/figclip-mini --name quantise_figclip
"""

from __future__ import annotations

import argparse
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


def median_ms(encode: Any, items: list[Any]) -> float:
    """Median ms of ``encode([item])``, one item at a time."""
    times = []
    for item in items:
        t0 = time.perf_counter()
        encode([item])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def batch_qps(encoder: Any, queries: list[str], batch: int = 32) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(queries), batch):
        encoder.encode_texts(queries[start:start + batch])
    return len(queries) / (time.perf_counter() - t0)


def top_k_agreement(ref: np.ndarray, other: np.ndarray, corpus: np.ndarray, k: int,
                    skip: int = 0) -> tuple[list[bool], list[float]]:
    """Per query: whether the two query vectors' top-k over ``corpus`` are the same ordered
    list, and the share of the reference's top-k the other finds (``skip``: leading ranks left
    out, e.g. 1 when the query is itself in the corpus)."""
    top_r = np.argsort(-(ref @ corpus.T), axis=1)[:, skip:skip + k]
    top_o = np.argsort(-(other @ corpus.T), axis=1)[:, skip:skip + k]
    pairs = list(zip(top_r, top_o, strict=True))
    return ([bool(np.array_equal(a, b)) for a, b in pairs],
            [len(set(a) & set(b)) / k for a, b in pairs])


def compare(float_enc: Any, other: Any, queries: list[str], corpus: np.ndarray,
            k: int = 10) -> dict[str, float]:
    """Cosine between the reference's and another variant's query vectors, and their top-k
    agreement over ``corpus``."""
    qf = float_enc.encode_texts(queries)
    qq = other.encode_texts(queries)
    cos = np.sum(qf * qq, axis=1)
    same, overlap = top_k_agreement(qf, qq, corpus, k)
    return {"cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "queries_cosine_ge_099": round(float(np.mean(cos >= 0.99)), 4),
            f"top{k}_overlap_mean": round(float(np.mean(overlap)), 4),
            f"top{k}_overlap_min": round(float(np.min(overlap)), 4),
            f"top{k}_identical": round(float(np.mean(same)), 4)}


VARIANTS = ("float32-full", "float32", "bfloat16", "int8", "onnx", "onnx-int8-image")
PMC_IMAGES = ROCO_CSV.parents[1] / "pmc-figures" / "images"


def make_variant(spec: str, name: str, work: Path | None = None) -> Any:
    """The encoder of ``spec`` as variant ``name`` (one of :data:`VARIANTS`); ``onnx`` is the
    torch-free backend's encoder, exported under ``work``."""
    from figsearch.encoders import load_model, quantize_text_tower

    enc = load_model(spec, device="cpu", precision="bfloat16" if name == "bfloat16" else "float32")
    if name.startswith("onnx"):
        from bench.api import ensure_onnx_export
        from figsearch.onnx_encoder import OnnxEncoder

        folder = ensure_onnx_export(work or Path(tempfile.mkdtemp(prefix="bench-onnx-")), enc,
                                    int8_image=name == "onnx-int8-image")
        return OnnxEncoder(folder)
    if name == "int8":
        quantize_text_tower(enc)
    if name == "float32-full":
        enc.pad_token = None  # the untrimmed forward
    return enc


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from bench.peer import QUERIES_FILE, vitb16_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="model dir (default: the peer's ViT-B-16)")
    p.add_argument("--corpus", type=int, default=2000, help="ROCO captions for the top-10 check")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--images", type=int, default=189, help="real PMC figures (image check)")
    p.add_argument("--timing-queries", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--work-dir", type=Path, default=None, help="keep the model dir here")
    p.add_argument("--name", default="quantise", help="results file name")
    args = p.parse_args(argv)
    tmp = None
    model_name = args.model
    if not args.model:
        if args.work_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench-quantise-")
            args.work_dir = Path(tmp.name)
        args.model = str(vitb16_model_dir(args.work_dir))
        model_name = "ViT-B-16 (random, seed 0)"
    queries = [q for q in QUERIES_FILE.read_text().splitlines() if q.strip()][: args.queries]
    images = [Image.open(f).convert("RGB") for f in sorted(PMC_IMAGES.glob("*.jpg"))[: args.images]]
    reference = make_variant(args.model, "float32-full")
    t0 = time.perf_counter()
    corpus = reference.encode_texts(roco_captions(args.corpus))
    image_corpus = reference.encode_images(images)
    figures: dict[str, Any] = {"corpus": len(corpus), "images": len(images),
                               "corpus_encode_s": round(time.perf_counter() - t0, 1)}
    rows = []
    for name in args.variants:
        enc = (reference if name == "float32-full"
               else make_variant(args.model, name, args.work_dir))
        text = compare(reference, enc, queries, corpus)
        image = compare_images(reference, enc, images, image_corpus)
        enc.warm_up()  # as the API does at load: no timed query pays for a new shape
        per_q = median_ms(enc.encode_texts, queries[: args.timing_queries])
        qps = batch_qps(enc, queries)
        per_img = median_ms(enc.encode_images, images[:10])
        figures[name] = {**text, **image, "query_p50_ms": round(per_q, 2),
                         "batch32_qps": round(qps, 1), "image_p50_ms": round(per_img, 1),
                         "padding_trimmed": getattr(enc, "pad_token", 0) is not None}
        rows.append([name, round(per_q, 2), round(qps, 1), round(per_img, 1), text["cosine_min"],
                     text["top10_identical"], text["top10_overlap_mean"],
                     image.get("image_cosine_min", "-"), image.get("image_top10_identical", "-")])
        del enc
    print(markdown_table(["variant", "1 query p50 ms", "batch-32 queries/s", "1 image p50 ms",
                          "text cos min", "text top-10 identical", "text top-10 overlap",
                          "image cos min", "image top-10 identical"], rows))
    path = write_result(args.name, {"model": model_name, "queries": len(queries),
                                    "corpus": args.corpus, "images": len(images)}, figures)
    low = [n for n in args.variants if figures[n]["cosine_min"] < 0.99]
    print(f"quantise bench: {len(queries)} queries, {len(images)} images, variants "
          f"{', '.join(args.variants)}; cosine >= 0.99 for all but {low or 'none'}; wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def compare_images(reference: Any, enc: Any, images: list[Any], corpus: np.ndarray,
                   k: int = 10) -> dict[str, float]:
    """Image queries (each figure against the others) under ``enc`` vs the reference."""
    if type(enc) is type(reference) and enc.precision == reference.precision:
        return {}  # the image tower is untouched by trimming and int8 text quantisation
    qf, qq = corpus, enc.encode_images(images)
    cos = np.sum(qf * qq, axis=1)
    same, overlap = top_k_agreement(qf, qq, corpus, min(k, len(corpus) - 1), skip=1)
    return {"image_cosine_min": round(float(cos.min()), 5),
            "image_top10_identical": round(float(np.mean(same)), 4),
            "image_top10_overlap_mean": round(float(np.mean(overlap)), 4)}


if __name__ == "__main__":
    sys.exit(main())
