"""``figsearch eval``: cross-modal retrieval recall@K and zero-shot figure-type accuracy.

Evaluates on the held-out split (articles the trainer never saw; same ``split_of`` as the
trainer). Dense recall is reported both directions in BiomedCLIP's table form; keyword
(FTS5/BM25) and hybrid (reciprocal-rank fusion of dense + keyword) text->image recall use each
caption as the query against the same gallery. Because the query *is* the indexed caption,
keyword recall here is an upper bound for caption-like queries, not a measure of semantics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.encoders import Encoder, LoadedClip, ModelLoadError, load_model, make_transform

KS = (1, 5, 10)


def embed_pairs(model: Any, loaded: LoadedClip, pairs: list[Any], device: str,
                batch_size: int = 64, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and caption embeddings of ``pairs`` (row i belongs to pair i)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from trainer.data import PairDataset, collate_pairs

    loader: DataLoader[Any] = DataLoader(PairDataset(pairs, make_transform(loaded.preprocess_cfg)),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate_pairs)
    images, texts = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with torch.inference_mode(), autocast:
        for pixels, captions in tqdm(loader, desc="embedding", unit="batch", leave=False):
            images.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
            tokens = loaded.tokenizer(captions).to(device)
            texts.append(model.encode_text(tokens, normalize=True).float().cpu())
    if not images:
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32)
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


def recall_at(similarity: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Recall@k when row i's correct column is i (ties broken against the correct item)."""
    n = similarity.shape[0]
    if n == 0:
        return {k: 0.0 for k in ks}
    correct = similarity[np.arange(n), np.arange(n)][:, None]
    rank = (similarity >= correct).sum(axis=1) - 1  # others scoring >= the right one
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_metrics(images: np.ndarray, texts: np.ndarray, ks: tuple[int, ...] = KS
                      ) -> dict[str, float]:
    """Flat metrics: ``t2i_R@k``, ``i2t_R@k``, ``mean_recall`` and the pool size ``n``."""
    sim = texts @ images.T
    t2i, i2t = recall_at(sim, ks), recall_at(sim.T, ks)
    out: dict[str, float] = {"n": float(len(images))}
    out.update({f"t2i_R@{k}": round(v, 4) for k, v in t2i.items()})
    out.update({f"i2t_R@{k}": round(v, 4) for k, v in i2t.items()})
    out["mean_recall"] = round(float(np.mean(list(t2i.values()) + list(i2t.values()))), 4)
    return out


def chance_level(n: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k of a random ranking over ``n`` candidates."""
    return {f"R@{k}": round(min(k, n) / n, 4) if n else 0.0 for k in ks}


def keyword_and_hybrid(store: Any, pairs: list[Any], images: np.ndarray, texts: np.ndarray,
                       depth: int = 100) -> dict[str, Any]:
    """Text->image recall@K of keyword and hybrid search, captions as queries, same gallery."""
    from figsearch.search import reciprocal_rank_fusion as rrf

    gallery = np.array([p.figure_id for p in pairs])
    allowed = set(gallery.tolist())
    hits = {"keyword": dict.fromkeys(KS, 0), "hybrid": dict.fromkeys(KS, 0)}
    from tqdm import tqdm

    for row, pair in enumerate(tqdm(pairs, desc="keyword/hybrid", unit="query", leave=False)):
        found = store.keyword_search(pair.caption, limit=depth * 5)
        keyword = [fid for fid, _ in found if fid in allowed][:depth]
        dense = gallery[np.argsort(-(images @ texts[row]))[:depth]].tolist()
        hybrid = [fid for fid, _ in rrf([dense, keyword], k=60)]
        for mode, ranking in (("keyword", keyword), ("hybrid", hybrid)):
            for k in KS:
                hits[mode][k] += pair.figure_id in ranking[:k]
    n = max(len(pairs), 1)
    out: dict[str, Any] = {mode: {f"R@{k}": round(v / n, 4) for k, v in counts.items()}
                           for mode, counts in hits.items()}
    out["rrf"] = "figsearch.search.reciprocal_rank_fusion"
    return out


def figure_type_accuracy(encoder: Encoder, pairs: list[Any], images: np.ndarray
                         ) -> dict[str, Any]:
    """Zero-shot type accuracy on figures with synthetic ground truth."""
    from figsearch.figure_types import LABELS, TRUTH_TO_LABEL, classify

    rows = [i for i, p in enumerate(pairs) if p.truth_type in TRUTH_TO_LABEL]
    if not rows:
        return {"n": 0, "accuracy": None, "chance": round(1 / len(LABELS), 4)}
    predicted = classify(encoder, images[rows])
    truth = [TRUTH_TO_LABEL[pairs[i].truth_type] for i in rows]
    per_type: dict[str, list[int]] = {}
    for (label, _), want in zip(predicted, truth, strict=True):
        per_type.setdefault(want, []).append(int(label == want))
    correct = sum(sum(v) for v in per_type.values())
    return {"n": len(rows), "accuracy": round(correct / len(rows), 4),
            "chance": round(1 / len(LABELS), 4),
            "per_type": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_type.items())}}


def evaluate(spec: str, data_dir: Path, split: str = "val", device: str | None = None,
             batch_size: int = 64, workers: int = 2, limit: int | None = None) -> dict[str, Any]:
    """All metrics for model ``spec`` on ``split`` of the store in ``data_dir``."""
    from figsearch.core.config import Settings
    from figsearch.store import FigureStore
    from trainer.data import load_pairs

    settings = Settings(data_dir=data_dir)
    if not settings.db_path.is_file():
        raise ModelLoadError(f"no figure store at {settings.db_path}")
    started = time.monotonic()
    encoder = load_model(spec, device=device, batch_size=batch_size)
    store = FigureStore(settings.db_path, create=False)
    try:
        pairs = load_pairs(store, settings.images_dir, split, limit=limit)
        if not pairs:
            raise ValueError(f"split '{split}' of {settings.db_path} has no captioned images")
        images, texts = embed_pairs(encoder.model, encoder.loaded, pairs, encoder.device,
                                    batch_size, workers)
        result = {
            "model": spec, "model_key": encoder.model_key, "split": split, "n": len(pairs),
            "articles": len({p.article_key for p in pairs}),
            "dense": retrieval_metrics(images, texts), "chance": chance_level(len(pairs)),
            "text_to_image_modes": keyword_and_hybrid(store, pairs, images, texts),
            "figure_type": figure_type_accuracy(encoder, pairs, images),
        }
    finally:
        store.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def format_table(result: dict[str, Any]) -> str:
    """BiomedCLIP-style table: rows per direction / mode, columns R@1 R@5 R@10."""
    dense = result["dense"]
    lines = [f"model {result['model']} ({result['model_key']}), split {result['split']}: "
             f"{result['n']} figures from {result['articles']} articles",
             f"{'':<24}{'R@1':>8}{'R@5':>8}{'R@10':>8}"]

    def row(name: str, values: list[float]) -> None:
        lines.append(f"{name:<24}" + "".join(f"{100 * v:>8.1f}" for v in values))

    row("text->image (dense)", [dense[f"t2i_R@{k}"] for k in KS])
    row("image->text (dense)", [dense[f"i2t_R@{k}"] for k in KS])
    for mode in ("keyword", "hybrid"):
        row(f"text->image ({mode})", [result["text_to_image_modes"][mode][f"R@{k}"] for k in KS])
    row("chance", [result["chance"][f"R@{k}"] for k in KS])
    ft = result["figure_type"]
    if ft["accuracy"] is not None:
        lines.append(f"zero-shot figure type accuracy: {100 * ft['accuracy']:.1f}% "
                     f"(n={ft['n']}, chance {100 * ft['chance']:.1f}%)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``figsearch eval``."""
    parser.add_argument("--model", default=None, help="model spec (default: the configured one)")
    parser.add_argument("--split", default=None, choices=("val", "train", "all", "dev", "test"),
                        help="held-out recall: val (default) | train | all; with --queries: the "
                             "query split, test (default) | dev | all")
    parser.add_argument("--queries", default=None,
                        help="real-figure query set (JSONL, bench/eval/queries.jsonl): report "
                             "hit@1/hit@10/MRR/nDCG@10 per search mode through the search service")
    parser.add_argument("--tune", action="store_true",
                        help="with --queries: choose the hybrid fusion weights on the dev split")
    parser.add_argument("--tune-step", type=float, default=None,
                        help="with --tune: grid step of the fusion weights (default 0.05)")
    parser.add_argument("--out", default=None, help="write the metrics JSON here")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N figures")
    parser.add_argument("--workers", type=int, default=2)


def command(args: argparse.Namespace) -> int:
    """Evaluate, print the table, optionally write JSON."""
    from figsearch.encoders import resolve_model_spec

    settings = args.settings
    if args.queries:
        from figsearch.evaluation import command as queries_command

        if args.split in ("val", "train"):
            print("figsearch eval: with --queries, --split is dev, test or all", file=sys.stderr)
            return 2
        return queries_command(args)
    if args.split in ("dev", "test") or args.tune:
        print("figsearch eval: --split dev/test and --tune need --queries FILE", file=sys.stderr)
        return 2
    try:
        spec = args.model or resolve_model_spec(settings)
        result = evaluate(spec, settings.data_dir, args.split or "val", settings.device or None,
                          settings.batch_size, args.workers, args.limit)
    except (ModelLoadError, ValueError) as exc:
        print(f"figsearch eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"metrics -> {args.out}")
    return 0
