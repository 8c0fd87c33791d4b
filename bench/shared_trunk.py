"""A default query's two text encodings with and without the shared MiniLM trunk (ONNX Runtime).

figclip-mini trained with its text tower locked is all-MiniLM-L6-v2 (the caption model) plus a
bias-free projection, so its exported text queries can reuse the caption model's tower
(:meth:`figsearch.onnx_encoder.OnnxEncoder.share_trunk_with`). This bench times both ways in
turn, query by query, and checks the vectors agree:

- ``encodings``: the two exports' ``encode_texts`` for one query each (the exports under
  ``--onnx-root``, or under the data dir's ``models/onnx``);
- ``--data-dir``: also default (hybrid) text queries through the search service of a served data
  dir whose exports share a trunk (``bench/eval/queries.jsonl``), with the top 20 compared.

    .venv/bin/python -m bench.shared_trunk --data-dir /work/eval-data --name shared_trunk_eval
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, markdown_table, write_result  # noqa: E402
from bench.pmc_scale import load_queries, onnx_exports, percentiles  # noqa: E402


def export_dirs(onnx_root: Path) -> tuple[Path, Path]:
    """(image model export, caption model export) under ``onnx_root``, found as the other
    benches find them (:func:`bench.pmc_scale.onnx_exports`)."""
    from figsearch.onnx_encoder import find_export

    image_key, caption_key = onnx_exports(onnx_root)
    return find_export(onnx_root, image_key), find_export(onnx_root, caption_key)


def in_turn(queries: list[str], rounds: int,
            ways: dict[str, Callable[[str], Any]]) -> tuple[dict[str, dict[str, list[float]]],
                                                            list[dict[str, Any]]]:
    """Every query asked every way, the first way alternating: wall and CPU ms, and answers."""
    times: dict[str, dict[str, list[float]]] = {w: {"wall": [], "cpu": []} for w in ways}
    answers: list[dict[str, Any]] = []
    names = list(ways)
    for r in range(rounds):
        for i, query in enumerate(queries):
            got: dict[str, Any] = {}
            for name in names[(i + r) % 2:] + names[:(i + r) % 2]:
                wall, cpu = time.perf_counter(), time.process_time()
                got[name] = ways[name](query)
                times[name]["wall"].append((time.perf_counter() - wall) * 1000)
                times[name]["cpu"].append((time.process_time() - cpu) * 1000)
            answers.append(got)
    return times, answers


def summary(prefix: str, times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for way, ms in times.items():
        out.update({f"{prefix}_{way}_{k}": v for k, v in percentiles(ms["wall"]).items()})
        out[f"{prefix}_{way}_cpu_mean_ms"] = round(float(np.mean(ms["cpu"])), 2)
    return out


def encodings(dense_dir: Path, caption_dir: Path, queries: list[str], rounds: int
              ) -> dict[str, Any]:
    """One query's image-model and caption-model encodings, two separate towers against one
    shared trunk (each way its own encoders: no vector crosses over)."""
    from figsearch.onnx_encoder import OnnxEncoder

    plain = OnnxEncoder(dense_dir), OnnxEncoder(caption_dir)
    shared = OnnxEncoder(dense_dir), OnnxEncoder(caption_dir)
    if not shared[0].share_trunk_with(shared[1]):
        raise SystemExit(f"{dense_dir} and {caption_dir} do not share a trunk")

    def both(pair: tuple[Any, Any]) -> Callable[[str], Any]:
        return lambda q: np.concatenate([pair[0].encode_texts([q])[0],
                                         pair[1].encode_texts([q])[0]])

    for q in queries[:10]:  # ONNX Runtime plans its memory on first runs
        both(plain)(f"{q} warm")
        both(shared)(f"{q} warm")
    times, answers = in_turn(queries, rounds, {"separate": both(plain), "shared": both(shared)})
    out = summary("encode", times)
    out["encode_max_abs_diff"] = float(max(np.abs(a["separate"] - a["shared"]).max()
                                           for a in answers))
    out["encode_tower_runs_separate"] = plain[0].text_runs + plain[1].text_runs
    out["encode_tower_runs_shared"] = shared[0].text_runs + shared[1].text_runs
    return out


def service_queries(data_dir: Path, queries: list[str], rounds: int) -> dict[str, Any]:
    """Default text queries through the served data dir's search service, the shared trunk
    switched on and off in turn (the caption model keeping no vector across the two ways)."""
    from figsearch.api.state import AppState
    from figsearch.core.config import Settings

    state = AppState(Settings(data_dir=data_dir, encoder_backend="onnx", query_cache_size=0))
    state.reload()
    try:
        current = state.current
        if current is None or current.service.captions is None:
            raise SystemExit(f"{data_dir} serves no caption index")
        dense = current.encoder.encoder
        caption = current.service.captions.encoder.encoder
        partner = getattr(dense, "_partner", None)
        if partner is not caption:
            raise SystemExit(f"{data_dir}: its exports do not share a trunk")

        def ask(share: bool) -> Callable[[str], list[int]]:
            def run(query: str) -> list[int]:
                dense._partner = partner if share else None
                caption._recent = OrderedDict() if share else None
                return [h.id for h in current.service.search_text(query, k=20, mode="hybrid").hits]
            return run

        for q in queries[:10]:
            ask(True)(q)
            ask(False)(q)
        times, answers = in_turn(queries, rounds, {"separate": ask(False), "shared": ask(True)})
        dense._partner = partner
        out = summary("default", times)
        out["default_same_top20"] = sum(a["separate"] == a["shared"] for a in answers)
        out["default_queries_asked"] = len(answers)
        return out
    finally:
        state.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx-root", type=Path, default=None,
                   help="exports to time (default: the data dir's models/onnx)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="also time default queries through this data dir's search service")
    p.add_argument("--queries", type=int, default=0, help="first N queries only (0: all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="shared_trunk")
    args = p.parse_args(argv)
    queries = load_queries(args.queries)
    figures: dict[str, Any] = {"queries": len(queries)}
    root = args.onnx_root or (args.data_dir / "models" / "onnx" if args.data_dir else None)
    if root is None:
        p.error("give --onnx-root or --data-dir")
    dense, caption = export_dirs(root)
    figures.update(encodings(dense, caption, queries, args.rounds))
    if args.data_dir is not None:
        path = REPO_ROOT / "bench" / "eval" / "queries.jsonl"
        real = [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]
        figures.update(service_queries(args.data_dir, real[:args.queries] if args.queries
                                       else real, args.rounds))
    for way in ("separate", "shared"):
        line = f"shared_trunk: {way:8s} encodings p50 {figures[f'encode_{way}_p50_ms']:.2f} ms"
        if f"default_{way}_p50_ms" in figures:
            line += f", default query p50 {figures[f'default_{way}_p50_ms']:.1f} ms"
        print(line, file=sys.stderr)
    print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    write_result(args.name, {"command": "python -m bench.shared_trunk " + " ".join(
        argv if argv is not None else sys.argv[1:]), "rounds": args.rounds}, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
