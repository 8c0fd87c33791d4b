"""Batch text encoding on real PMC captions: seconds per call of ``encode_texts`` for the torch
encoder of ``--model`` and for every ONNX export (with a text tower) under ``--onnx-root``.

A batch is padded to its longest text, so the order texts are batched in decides the cost: this
times what a caller pays for ``--captions`` real ROCO captions (up to the model's context) and
the peer harness's query strings, and checks that each row is the vector of its text encoded
alone (``max_abs_diff_alone``). Run it at two commits to compare their batching.

    .venv/bin/python -m bench.text_batches --model DATA/models/figclip-mini \\
        --onnx-root DATA/models/onnx --captions 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import markdown_table, write_result
from bench.quantise import roco_captions

#: rows checked against their text encoded alone
ALONE_CHECKED = 40


def peer_queries() -> list[str]:
    """The peer harness's biomedical query strings (short, as users type them)."""
    from bench.peer import QUERIES_FILE

    return [q.strip() for q in QUERIES_FILE.read_text().splitlines() if q.strip()]


def encoders(model: str, onnx_root: Path | None) -> dict[str, Any]:
    """Name -> encoder: ``torch`` for ``model``, ``onnx:<spec>`` per text export in the root."""
    found: dict[str, Any] = {}
    if model:
        from figsearch.encoders import load_model

        found["torch"] = load_model(model, device="cpu")
    for folder in sorted(onnx_root.iterdir()) if onnx_root else []:
        from figsearch.onnx_encoder import MANIFEST, OnnxEncoder

        manifest = folder / MANIFEST
        if manifest.is_file() and json.loads(manifest.read_text()).get("text"):
            encoder = OnnxEncoder(folder)
            found[f"onnx:{Path(encoder.spec).name}"] = encoder
    return found


def time_calls(encoder: Any, texts: list[str], rounds: int) -> float:
    """Median seconds of ``encoder.encode_texts(texts)`` over ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        encoder.encode_texts(texts)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(encoder: Any, captions: list[str], queries: list[str], rounds: int) -> dict[str, Any]:
    encoder.encode_texts(captions[:8] + queries[:8])  # first-call set-up out of the timing
    caption_s = time_calls(encoder, captions, rounds)
    query_s = time_calls(encoder, queries, rounds)
    mixed = [t for pair in zip(captions, queries, strict=False) for t in pair][:ALONE_CHECKED]
    alone = np.concatenate([encoder.encode_texts([t]) for t in mixed])
    return {"captions_s": round(caption_s, 3), "captions_per_s": round(len(captions) / caption_s, 1),
            "queries_s": round(query_s, 3), "queries_per_s": round(len(queries) / query_s, 1),
            "max_abs_diff_alone": float(np.abs(encoder.encode_texts(mixed) - alone).max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="torch model dir or spec ('' = none)")
    p.add_argument("--onnx-root", type=Path, default=None, help="ONNX export root")
    p.add_argument("--captions", type=int, default=1000, help="real ROCO captions per call")
    p.add_argument("--rounds", type=int, default=3, help="calls timed (median)")
    p.add_argument("--name", default="text_batches", help="results file name")
    args = p.parse_args(argv)
    captions, queries = roco_captions(args.captions), peer_queries()
    figures: dict[str, Any] = {"captions": len(captions), "queries": len(queries)}
    rows = []
    for name, encoder in encoders(args.model, args.onnx_root).items():
        got = measure(encoder, captions, queries, args.rounds)
        figures.update({f"{name}_{key}": value for key, value in got.items()})
        rows.append([name, got["captions_s"], got["captions_per_s"], got["queries_s"],
                     got["queries_per_s"], f"{got['max_abs_diff_alone']:.1e}"])
    if not rows:
        p.error("nothing to time: give --model and/or an --onnx-root with text exports")
    print(markdown_table(["encoder", "captions s", "captions/s", "queries s", "queries/s",
                          "max diff vs alone"], rows))
    path = write_result(args.name, {"model": args.model, "onnx_root": str(args.onnx_root or ""),
                                    "captions": args.captions, "rounds": args.rounds}, figures)
    print(f"text batches: {len(rows)} encoders, {len(captions)} captions and {len(queries)} "
          f"queries per call; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
