"""CPU precision and threads for the torch encoder: bfloat16 where the CPU multiplies it in
hardware, torch's intra-op thread count, and handing freed heap back to the OS after loading."""

from __future__ import annotations

from typing import Any

PRECISIONS = ("float32", "bfloat16", "auto")


def fast_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cpu_precision(precision: str) -> str:
    """``float32`` or ``bfloat16`` for CPU inference; ``auto`` is bfloat16 where the CPU has
    hardware bfloat16 (there it halves the weights' memory and runs the ViT ~2x faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if fast_bf16_cpu() else "float32"
    return precision


def _torch_dtype(precision: str) -> Any:
    import torch

    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def set_torch_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (0 or less: leave torch's default)."""
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

def release_freed_memory() -> None:
    """Hand memory freed while loading (the float32 state dict, random init weights) back to
    the OS: glibc keeps freed heap pages mapped, and a server's RSS would count them forever."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, as figsearch.index's madvise
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
