"""Embedding throughput on CPU: the indexer's pipeline vs a naive loop, same model and images.

    .venv/bin/python -m bench.embed                 # 512 images, figclip-mini and ViT-B/16
    .venv/bin/python -m bench.embed --n 16 --quick  # smoke run (figclip-mini only)

The naive loop decodes, preprocesses and encodes in the main thread, batch by batch. The
pipeline is ``indexer/embed.py`` (DataLoader workers decode and preprocess while the model
runs). Models: figclip-mini (128 px) and the figclip-b16 image tower (ViT-B/16, 224 px), random
weights — throughput does not depend on the weights. Images are stored JPEG figures of varied
sizes written into a temporary figure store. Writes ``bench/results/embed.json``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_images(images_dir: Path, n: int) -> list[Path]:
    """``n`` JPEG figures (400-1000 px wide) stored like the ingest stores them."""
    from PIL import Image

    from figsearch.imaging import store_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(400, 1000)), int(rng.integers(300, 800))
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        stored = store_image(buf.getvalue() + bytes([i % 251]), images_dir)  # distinct bytes
        paths.append(images_dir / stored.image_path)
    return paths


def naive(encoder: Any, paths: list[Path], batch: int) -> float:
    """Figures/s: decode + preprocess + encode, all in the main thread."""
    import torch

    from figsearch.imaging import open_image

    start = time.perf_counter()
    for first in range(0, len(paths), batch):
        pixels = torch.stack([encoder.preprocess(open_image(p.read_bytes()))
                              for p in paths[first:first + batch]])
        encoder.encode_pixels(pixels)
    return len(paths) / (time.perf_counter() - start)


def pipeline(encoder: Any, paths: list[Path], images_dir: Path, batch: int, workers: int
             ) -> float | None:
    """Figures/s of ``indexer.embed``'s reader + mapper (DataLoader decode workers -> encoder)."""
    try:
        from indexer import embed as indexer_embed
    except ImportError:
        return None
    rows = [(i, str(p.relative_to(images_dir)), p.stem) for i, p in enumerate(paths)]
    start = time.perf_counter()
    count = 0
    for _ids, pixels, failures in indexer_embed.decode_batches(
            rows, images_dir, encoder.preprocess, batch, workers, 90_000_000):
        if failures:
            raise RuntimeError(f"pipeline could not decode: {failures[:3]}")
        count += len(indexer_embed.encode_batch(encoder, pixels))
    elapsed = time.perf_counter() - start
    if count != len(paths):
        raise RuntimeError(f"pipeline returned {count} vectors for {len(paths)} images")
    return len(paths) / elapsed


def encoder_for(name: str, batch: int) -> Any:
    """figclip-mini as is; for ``vit-b16`` the figclip-b16 config (ViT-B/16 image tower)."""
    from figsearch.encoders import load_model

    return load_model("figclip-b16" if name == "vit-b16" else name, device="cpu",
                      batch_size=batch)


def main() -> None:
    from bench.common import print_figures, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="figclip-mini only (smoke run)")
    args = parser.parse_args()
    models = ["figclip-mini"] if args.quick else ["figclip-mini", "vit-b16"]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = Path(tmp) / "images"
        paths = make_images(images_dir, args.n)
        for name in models:
            encoder = encoder_for(name, args.batch)
            naive(encoder, paths[: args.batch], args.batch)  # warm-up
            figures[f"{name}_naive_fig_s"] = round(naive(encoder, paths, args.batch), 2)
            rate = pipeline(encoder, paths, images_dir, args.batch, args.workers)
            figures[f"{name}_pipeline_fig_s"] = round(rate, 2) if rate else "indexer.embed missing"
            if rate:
                figures[f"{name}_speedup"] = round(rate / figures[f"{name}_naive_fig_s"], 2)
            print(f"{name}: naive {figures[f'{name}_naive_fig_s']} fig/s, "
                  f"pipeline {figures[f'{name}_pipeline_fig_s']} fig/s", flush=True)
    import os

    import torch

    params = {"n": args.n, "batch": args.batch, "workers": args.workers, "models": models,
              "device": "cpu", "torch_threads": torch.get_num_threads(),
              "load_average_at_end": os.getloadavg()[0]}
    path = write_result("embed", params, figures)
    print_figures("embed", figures)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
