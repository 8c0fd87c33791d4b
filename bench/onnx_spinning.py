"""ONNX Runtime's spinning threads against the searches that follow a query's encoding.

A text query in the API is encoded on the model thread by both text models (the image model's
text tower and the caption model), then searched on the request thread. ONNX Runtime's idle
intra-op threads spin by default, busy for a while after each run on the same 2 cores.
This measures, in a fresh process per setting, ``--queries`` rounds of: encode a query with
every export under ``--onnx-encoders`` (p50 of the pair), then search ``--index-dir`` (a
``SearchIndex`` version; top 100, re-ranked, as the default query fetches) with a vector of
its own data (p50), with ``figsearch.onnx_encoder.ALLOW_SPINNING`` on and off.

    python -m bench.onnx_spinning --onnx-encoders /work/eval-data/models/onnx \\
        --index-dir /work/bench-data/vec-15m-r32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import markdown_table, write_result  # noqa: E402


def _run(args: dict[str, Any], spinning: bool, out: Any) -> None:
    import figsearch.onnx_encoder as onnx_encoder
    from bench.pmc_scale import load_queries, onnx_exports
    from figsearch.encoders import load_encoder
    from figsearch.index import SearchIndex

    onnx_encoder.ALLOW_SPINNING = spinning
    root = Path(args["onnx_encoders"])
    encoders = [load_encoder(key, "onnx", onnx_root=root) for key in onnx_exports(root)]
    index = SearchIndex.load(args["index_dir"], mmap_index=True)
    texts = load_queries()
    rng = np.random.default_rng(0)
    rows = index.vectors[np.sort(rng.choice(index.ntotal, len(texts), replace=False))]
    vectors = np.asarray(rows, np.float32)
    for i in range(5):  # warm both
        [e.encode_texts([texts[i]]) for e in encoders]
        index.search(vectors[i][None], 100)
    encode_ms, search_ms = [], []
    for i in range(args["queries"]):
        t = time.perf_counter()
        for e in encoders:
            e.encode_texts([f"{texts[i % len(texts)]} {i}"])  # never an earlier query's text
        encode_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        index.search(vectors[i % len(vectors)][None], 100, rerank=True, rerank_factor=10)
        search_ms.append((time.perf_counter() - t) * 1000)
    out.put({"encode_p50_ms": round(float(np.percentile(encode_ms, 50)), 2),
             "encode_p95_ms": round(float(np.percentile(encode_ms, 95)), 2),
             "search_p50_ms": round(float(np.percentile(search_ms, 50)), 2),
             "search_p95_ms": round(float(np.percentile(search_ms, 95)), 2)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx-encoders", type=Path, required=True)
    ap.add_argument("--index-dir", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=90)
    ap.add_argument("--name", default="onnx_spinning")
    args = ap.parse_args(argv)
    params = {"onnx_encoders": str(args.onnx_encoders), "index_dir": str(args.index_dir),
              "queries": args.queries}
    ctx = mp.get_context("spawn")
    figures: dict[str, Any] = {}
    rows = []
    for spinning in (True, False):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(params, spinning, queue))
        proc.start()
        r = queue.get(timeout=1800)
        proc.join()
        label = "spinning" if spinning else "sleeping"
        figures.update({f"{label}_{key}": value for key, value in r.items()})
        rows.append([label, r["encode_p50_ms"], r["encode_p95_ms"], r["search_p50_ms"],
                     r["search_p95_ms"]])
    print(markdown_table(["ONNX idle threads", "encode p50 ms", "p95", "search after p50 ms",
                          "p95"], rows))
    path = write_result(args.name, {**params, "note": (
        "2 cores; both text models encode each query, then one top-100 re-ranked search")},
        figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
