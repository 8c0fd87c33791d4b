"""Train IVF coarse quantizers on the GPU when there is one.

Order of preference:

1. faiss-gpu installed (``pip install figsearch[gpu]``): the k-means of the coarse quantizer
   runs against a ``GpuIndexFlatL2`` clustering index (the documented faiss way), the rest of
   training (OPQ rotation, PQ codebooks — 256 centroids each, cheap) on the CPU.
2. faiss-cpu + torch with CUDA: the coarse k-means is ``faiss.contrib.clustering.kmeans``
   (faiss's own k-means loop) over a dataset wrapper whose assignment step is a torch matmul
   on the GPU; the centroids are put into the quantizer, which faiss then treats as trained.
3. Otherwise plain ``index.train`` on the CPU.

Path 2 runs on CPU torch too (``device="cpu"``), which is how the tests exercise it.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch
from faiss.contrib.clustering import DatasetAssign, kmeans


def cuda_available() -> bool:
    """Whether a CUDA device can be used for training."""
    return bool(torch.cuda.is_available())


def faiss_has_gpu() -> bool:
    """Whether the installed faiss is a GPU build with at least one device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class TorchAssign(DatasetAssign):
    """faiss k-means dataset whose nearest-centroid search is a torch matmul (any device)."""

    def __init__(self, x: np.ndarray, device: str) -> None:
        super().__init__(x)
        self.device = device
        self.xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32)).to(self.device)
        c_norms = (c * c).sum(1)
        dists, labels = [], []
        for start in range(0, len(self.xt), 65_536):  # bound the (batch, k) score matrix
            xb = self.xt[start : start + 65_536]
            d = c_norms[None, :] - 2 * xb @ c.T
            best, idx = d.min(1)
            dists.append((best + (xb * xb).sum(1)).cpu())
            labels.append(idx.cpu())
        return torch.cat(dists).numpy()[:, None], torch.cat(labels).numpy()[:, None]

    def assign_to(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, distances and per-centroid sums (summed on the device, not np.add.at)."""
        dist, labels = self.perform_search(centroids)
        lab = torch.from_numpy(labels.ravel()).to(self.device)
        xw = self.xt if weights is None else self.xt * torch.from_numpy(weights).to(self.device)[:, None]
        sums = torch.zeros((len(centroids), self.xt.shape[1]), device=self.device)
        sums.index_add_(0, lab, xw)
        return labels.ravel(), dist.ravel(), sums.cpu().numpy()


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IndexIVF inside ``index`` (through a pre-transform), or None."""
    return faiss.try_extract_index_ivf(index)


def train_coarse_with_torch(index: faiss.Index, x: np.ndarray, device: str, niter: int = 20) -> None:
    """Coarse k-means through torch on ``device``, then faiss trains the rest of ``index``."""
    ivf = ivf_of(index)
    if ivf is None:
        index.train(x)
        return
    pre = faiss.downcast_index(index)
    if isinstance(pre, faiss.IndexPreTransform):
        # OPQ must be trained first: the IVF sees rotated vectors.
        chain: Any = pre.chain  # a SWIG vector (the stubs call it a list)
        for i in range(chain.size()):
            vt = chain.at(i)
            vt.train(x)
            x = vt.apply(x)
    centroids = kmeans(ivf.nlist, TorchAssign(x, device), niter=niter, verbose=False)
    ivf.quantizer.add(np.ascontiguousarray(centroids, np.float32))
    ivf.train(x)  # the quantizer is full, so faiss only trains the codec (PQ) here


def train_with_gpu(index: faiss.Index, x: np.ndarray) -> None:
    """Train ``index`` on ``x`` using the best GPU path available (see module docstring)."""
    if faiss_has_gpu():
        ivf = ivf_of(index)
        if ivf is not None:
            res = faiss.StandardGpuResources()
            ivf.clustering_index = faiss.GpuIndexFlatL2(res, ivf.d)
        index.train(x)
        return
    if cuda_available():
        train_coarse_with_torch(index, x, "cuda")
        return
    index.train(x)
