"""GPU check for the first lent device: embedding, full-size index training, DDP training.

Run all three with ``bash bench/gpu_check.sh`` (< 8 min on one H100/H200); ``--smoke`` runs
every line once at tiny sizes on the CPU (figclip-mini instead of figclip-b16, a 32-d
``OPQ4,IVF32_HNSW32,PQ4x4`` on 1,500 vectors, 2 steps). Parts (each writes ``bench/results/<name>.json``):

``embed``  figclip-b16 image tower (ViT-B/16, BiomedCLIP's shape), 224 px, bf16 autocast:
           images/s of the model alone and end to end from JPEG files (DataLoader decode +
           the model's own preprocessing) -> ``gpu_check_embed``;
``index``  the full-size factory ``OPQ64,IVF65536_HNSW32,PQ64`` built by the product's builder
           with the coarse k-means on the device (:func:`indexer.gpu.train_index_on_device`)
           over 2.62 M vectors (40 per list) of low intrinsic dimension; recall@10 against exact
           search with and without re-ranking, bytes/vector, train and build time
           -> ``gpu_check_index``;
``train``  50 DDP steps of ``figclip-b16`` in bf16 through the trainer's ``train_step``
           (run under ``torchrun``; the process group is joined even for one process, so the
           DDP all-reduce runs) -> ``gpu_check_train``;
``summary`` prints the three results.

Weights are random: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import results_dir, write_result  # noqa: E402
from figsearch.encoders import image_size  # noqa: E402

FULL_FACTORY = "OPQ64,IVF65536_HNSW32,PQ64"
K = 10
#: Full-size and smoke parameters per part.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"config": "figclip-b16", "embed_batches": [256, 512], "embed_iters": 20,
             "files": 4096, "index_n": 40 * 65_536, "dim": 512, "factory": FULL_FACTORY,
             "intrinsic": 32, "queries": 1000, "nprobe": 32, "train_batch": 256,
             "train_steps": 50, "warmup_steps": 5},
    "smoke": {"config": "figclip-mini", "embed_batches": [2], "embed_iters": 1, "files": 4,
              "index_n": 1500, "dim": 32, "factory": "OPQ4,IVF32_HNSW32,PQ4x4",
              "intrinsic": 8, "queries": 20, "nprobe": 8, "train_batch": 2, "train_steps": 2,
              "warmup_steps": 1},
}


def say(text: str) -> None:
    print(f"gpu_check: {text}", flush=True)


def pick_device(smoke: bool) -> str:
    """``cuda`` (the full run refuses to run without it) or, for ``--smoke``, ``cpu``."""
    import torch

    if torch.cuda.is_available() and not smoke:
        return "cuda"
    if not smoke:
        raise SystemExit("bench.gpu_check needs a CUDA GPU (use --smoke for the CPU smoke run)")
    return "cpu"


def _machine_params(device: str) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu (smoke)"
    return {"device": device, "gpu": name}


# -- embedding ---------------------------------------------------------------------------------
def part_embed(size: dict[str, Any], device: str, workers: int) -> dict[str, Any]:
    """Images/s of the image tower alone and end to end from JPEGs (bf16, 224 px)."""
    import torch

    from bench.embed_gpu import end_to_end, model_alone, write_jpegs
    from figsearch.encoders import create_clip, make_transform

    loaded = create_clip(size["config"], device=device)
    visual = loaded.model.visual.eval().to(memory_format=torch.channels_last)
    figures: dict[str, Any] = {}
    for batch in size["embed_batches"]:
        rate = model_alone(visual, batch, size["embed_iters"], False, device,
                           warmup=1 if device == "cpu" else 3, size=image_size(loaded.preprocess_cfg))
        figures[f"model_bf16_b{batch}_img_s"] = round(rate, 1)
        say(f"embed: model alone, batch {batch}: {rate:,.1f} images/s")
    batch = size["embed_batches"][-1]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), size["files"])
        transform = make_transform(loaded.preprocess_cfg)
        rate = end_to_end(visual, transform, paths, batch, workers, device)
    figures[f"end_to_end_jpeg_b{batch}_img_s"] = round(rate, 1)
    say(f"embed: end to end from {size['files']} JPEGs (~800x600), batch {batch}, {workers} "
        f"decode workers: {rate:,.1f} images/s")
    write_result("gpu_check_embed", {"model": f"{size['config']} image tower, "
                                              f"{image_size(loaded.preprocess_cfg)} px, bf16",
                                     "batches": size["embed_batches"], "files": size["files"],
                                     "workers": workers, **_machine_params(device)}, figures)
    return figures


# -- index training ----------------------------------------------------------------------------
def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)])) / K


def part_index(size: dict[str, Any], device: str, tmp: str | None) -> dict[str, Any]:
    """Build the full-size factory with the coarse k-means on ``device``; measure recall."""
    import faiss

    from bench.ann import make_data
    from figsearch.index import INDEX_FILE, SearchIndex
    from indexer.build import build_version

    n, factory = size["index_n"], size["factory"]
    t0 = time.perf_counter()
    base, queries = make_data(n, size["dim"], size["queries"], seed=1, intrinsic=size["intrinsic"])
    say(f"index: {n:,} x {size['dim']} vectors (intrinsic dim {size['intrinsic']}) made in "
        f"{time.perf_counter() - t0:.1f}s")
    _, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    stages: dict[str, float] = {}
    start = time.perf_counter()

    def hook(stage: str) -> None:
        stages[stage] = time.perf_counter() - start
        say(f"index: {stage} after {stages[stage]:.1f}s")

    with tempfile.TemporaryDirectory(dir=tmp) as workdir:
        vdir = build_version(Path(workdir), base, np.arange(n), model_spec="gpu-check",
                             model_key="gpu-check", factory=factory, use_gpu=device, keep=0,
                             hook=hook)
        index = SearchIndex.load(vdir, nprobe=size["nprobe"])
        figures: dict[str, Any] = {
            "train_s": round(stages["trained"], 2), "build_s": round(stages["written"], 2),
            "bytes_per_vector": round((vdir / INDEX_FILE).stat().st_size / n, 2),
            "training": index.manifest["training"],
            "training_size": index.manifest["training_size"],
        }
        for rerank in (False, True):
            t1 = time.perf_counter()
            found = index.search(queries, K, rerank=rerank, rerank_factor=10)[1]
            qps = len(queries) / (time.perf_counter() - t1)
            tag = "rerank" if rerank else "no_rerank"
            figures[f"recall_at_10_{tag}"] = round(recall_at_k(found, truth), 4)
            figures[f"qps_batch_{tag}"] = round(qps, 1)
            say(f"index: {factory} recall@10 {'with' if rerank else 'without'} re-ranking "
                f"{figures[f'recall_at_10_{tag}']:.4f} ({qps:,.0f} q/s batched, nprobe "
                f"{size['nprobe']})")
    say(f"index: trained in {figures['train_s']}s ({figures['training']}, "
        f"{figures['training_size']:,} vectors), built in {figures['build_s']}s, "
        f"{figures['bytes_per_vector']} bytes/vector")
    write_result("gpu_check_index", {"factory": factory, "n": n, "dim": size["dim"],
                                     "intrinsic_dim": size["intrinsic"], "k": K,
                                     "queries": size["queries"], "nprobe": size["nprobe"],
                                     "rerank_factor": 10, **_machine_params(device)}, figures)
    return figures


# -- DDP training ------------------------------------------------------------------------------
def join_process_group(device: str) -> Any:
    """The trainer's device/rank setup, plus a process group even for one process (torchrun
    sets the rendezvous variables) so that DDP really wraps the model."""
    import torch.distributed as tdist

    from trainer.train import setup_distributed

    dist = setup_distributed(device)
    if not tdist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        tdist.init_process_group("nccl" if dist.device.startswith("cuda") else "gloo",
                                 rank=dist.rank, world_size=dist.world)
    return dist


def part_train(size: dict[str, Any], device: str) -> dict[str, Any]:
    """``train_steps`` DDP steps of ``size['config']`` on random images and captions."""
    import torch
    import torch.distributed as tdist
    from open_clip import ClipLoss

    from trainer.train import TrainConfig, build_model, make_optimizer, train_step

    dist = join_process_group(device)
    cfg = TrainConfig(out=Path("unused"), config=size["config"], batch_size=size["train_batch"])
    loaded = build_model(cfg, dist)
    optimizer = make_optimizer(loaded.model, cfg)
    model = torch.nn.parallel.DistributedDataParallel(
        loaded.model, device_ids=[dist.local_rank] if dist.device.startswith("cuda") else None)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                       rank=dist.rank, world_size=dist.world)
    gen = torch.Generator().manual_seed(dist.rank)
    words = ["western", "blot", "microscopy", "kaplan", "meier", "survival", "bar", "chart",
             "scatter", "plot", "heatmap", "expression", "mouse", "tumour", "cells", "panel"]
    batch, steps, warm = size["train_batch"], size["train_steps"], size["warmup_steps"]
    side = image_size(loaded.preprocess_cfg)
    images = torch.randn(batch, 3, side, side, generator=gen).to(dist.device)
    captions = [" ".join(words[int(j)] for j in torch.randint(0, len(words), (24,), generator=gen))
                for _ in range(batch)]
    tokens = loaded.tokenizer(captions).to(dist.device)
    model.train()
    losses, t_warm = [], time.perf_counter()
    for step in range(steps):
        if step == warm:
            if dist.device.startswith("cuda"):
                torch.cuda.synchronize()
            t_warm = time.perf_counter()
        losses.append(train_step(model, loss_fn, [(images, tokens)], optimizer, dist.device))
    if dist.device.startswith("cuda"):
        torch.cuda.synchronize()
    timed = max(steps - warm, 1)
    seconds = time.perf_counter() - t_warm
    figures = {
        "steps": steps, "steps_per_s": round(timed / seconds, 3),
        "samples_per_s": round(timed * batch * dist.world / seconds, 1),
        "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
        "loss_finite": bool(np.isfinite(losses).all()),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if dist.device.startswith("cuda") else 0.0,
    }
    if dist.main:
        precision = "bf16 autocast" if dist.device.startswith("cuda") else "fp32"
        say(f"train: {steps} DDP steps of {size['config']} ({precision} on "
            f"{dist.device}, batch {batch} x {dist.world}): {figures['steps_per_s']} steps/s, "
            f"{figures['samples_per_s']:,} samples/s after {warm} warm-up steps, loss "
            f"{figures['first_loss']} -> {figures['last_loss']}, peak {figures['peak_mem_gib']} GiB")
        write_result("gpu_check_train", {"config": size["config"], "batch_per_rank": batch,
                                         "world": dist.world, "warmup_steps": warm,
                                         **_machine_params(device)}, figures)
    tdist.destroy_process_group()
    if not figures["loss_finite"]:
        raise SystemExit("gpu_check: training loss is not finite")
    return figures


# -- summary -----------------------------------------------------------------------------------
def summary() -> int:
    """Print the figures of the three parts; 1 when one is missing."""
    missing = 0
    for name in ("gpu_check_embed", "gpu_check_index", "gpu_check_train"):
        path = results_dir() / f"{name}.json"
        if not path.is_file():
            say(f"{name}: MISSING (that part failed or timed out)")
            missing += 1
            continue
        data = json.loads(path.read_text())
        gpu = (data.get("params") or {}).get("gpu")
        say(f"{name} ({gpu}, {data['timestamp']}): " + ", ".join(
            f"{k}={v}" for k, v in sorted(data["figures"].items())))
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["embed", "index", "train", "summary"])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, every line once")
    p.add_argument("--workers", type=int, default=None, help="JPEG decode workers (embed)")
    p.add_argument("--tmp", default=None, help="scratch directory for the index version")
    args = p.parse_args(argv)
    if args.part == "summary":
        return summary()
    size = SIZES["smoke" if args.smoke else "full"]
    device = pick_device(args.smoke)
    if args.part == "embed":
        workers = args.workers if args.workers is not None else (
            0 if args.smoke else min(12, max((os.cpu_count() or 2) - 2, 1)))
        part_embed(size, device, workers)
    elif args.part == "index":
        part_index(size, device, args.tmp)
    else:
        part_train(size, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
