"""Text batches of similar length, for both encoder backends (torch and ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: on a CPU, at most this many token ids in one text batch once padded: measured on this
#: 2-core machine, 1,000 real ROCO captions encode in 5.2 s with it against 6.2 s sorted alone
#: (torch, figclip-mini), 500 with the exported all-MiniLM-L6-v2 in 5.6 s against 15.4 s
#: (ONNX Runtime); accelerators take whole batches (rows are the only bound there)
CPU_TEXT_BATCH_TOKENS = 1024


def text_batch_tokens(device: str) -> int:
    """The padded ids one text batch may hold on ``device``."""
    return CPU_TEXT_BATCH_TOKENS if str(device).startswith("cpu") else 1 << 62


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Row numbers in batches of similar length: at most ``max_rows`` rows, and at most
    ``max_tokens`` ids once padded to the batch's longest (one longer row is a batch alone).

    Why: a batch is padded to its longest text, and attention costs grow with that length, so
    a 256-token caption among 63 short ones made the batch cost as 64 long ones. Sorted and
    budgeted, 1,000 real PMC captions encode 1.3-8.6x faster (bench/results/text_batches.json).
    """
    order = np.argsort(np.asarray(lengths, np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        rows = end - start
        if end == len(order) or rows == max_rows or (rows + 1) * lengths[order[end]] > max_tokens:
            batches.append(order[start:end])
            start = end
    return batches
