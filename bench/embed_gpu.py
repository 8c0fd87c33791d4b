"""GPU embedding throughput: ViT-B/16 (224 px) image tower, bf16, channels-last.

Run on a CUDA machine from the repository root::

    .venv/bin/python -m bench.embed_gpu                     # full run (~5 min on an H100/H200)
    .venv/bin/python -m bench.embed_gpu --quick             # smoke: small batches, few iterations

Measures images/s of (a) the model alone on random pixels for several batch sizes, with and
without ``torch.compile``, and (b) end to end from JPEG files (DataLoader workers decode and
preprocess with the model's own transform, pinned memory, non-blocking copies). Weights are
random (``figclip-b16``: same image tower shape as BiomedCLIP); throughput does not depend on
them. Writes ``bench/results/embed_gpu.json``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data as torch_data


def _sync(device: str = "cuda") -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_alone(visual: Any, batch: int, iters: int, compiled: bool, device: str = "cuda",
                warmup: int = 3, size: int = 224) -> float:
    """Images/s of the image tower on random bf16 pixels (after warm-up) on ``device``."""
    import torch

    fn = torch.compile(visual, mode="max-autotune-no-cudagraphs") if compiled else visual
    pixels = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        for _ in range(warmup):
            fn(pixels)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn(pixels)
        _sync(device)
    return batch * iters / (time.perf_counter() - start)


def write_jpegs(directory: Path, n: int) -> list[Path]:
    """``n`` varied JPEG figures (~800x600) to decode end to end."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((800, 600), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path = directory / f"{i:06d}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


class _Files(torch_data.Dataset):  # type: ignore[type-arg]
    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def end_to_end(visual: Any, transform: Any, paths: list[Path], batch: int, workers: int,
               device: str = "cuda") -> float:
    """Images/s from JPEG files to vectors on the host (bf16 autocast on ``device``)."""
    import torch
    from torch.utils.data import DataLoader

    cuda = device.startswith("cuda")
    loader: DataLoader[Any] = DataLoader(_Files(paths, transform), batch_size=batch, num_workers=workers,
                        pin_memory=cuda, prefetch_factor=4 if workers else None,
                        persistent_workers=False)
    count = 0
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        for pixels in loader:
            pixels = pixels.to(device, non_blocking=cuda).to(memory_format=torch.channels_last)
            out = visual(pixels)
            out.float().cpu()
            count += len(pixels)
    return count / (time.perf_counter() - start)


def main() -> None:
    import torch

    from bench.common import write_result
    from figsearch.encoders import create_clip, make_transform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--batches", default="256,512,1024")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--files", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.embed_gpu needs a CUDA GPU")
    batches = [64] if args.quick else [int(b) for b in args.batches.split(",")]
    iters, n_files = (3, 256) if args.quick else (args.iters, args.files)
    torch.backends.cuda.matmul.allow_tf32 = True
    loaded = create_clip("figclip-b16", device="cuda")
    visual = loaded.model.visual.eval().to(memory_format=torch.channels_last)
    figures: dict[str, Any] = {}
    for batch in batches:
        figures[f"model_bf16_b{batch}_img_s"] = round(model_alone(visual, batch, iters, False), 1)
        print(f"batch {batch}: eager {figures[f'model_bf16_b{batch}_img_s']} img/s", flush=True)
        if not args.no_compile:
            figures[f"model_bf16_compiled_b{batch}_img_s"] = round(
                model_alone(visual, batch, iters, True), 1)
            print(f"batch {batch}: compiled {figures[f'model_bf16_compiled_b{batch}_img_s']} "
                  "img/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n_files)
        transform = make_transform(loaded.preprocess_cfg)
        batch = batches[len(batches) // 2]
        figures[f"end_to_end_jpeg_b{batch}_img_s"] = round(
            end_to_end(visual, transform, paths, batch, args.workers), 1)
    print(figures)
    path = write_result("embed_gpu", {"model": "figclip-b16 image tower (ViT-B/16, 224 px)",
                                      "batches": batches, "iters": iters, "files": n_files,
                                      "workers": args.workers, "gpu": torch.cuda.get_device_name(0)},
                        figures)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
