"""Index training with the coarse k-means in torch, on any device (a GPU, or CPU in CI).

One function, :func:`train_index_on_device`, trains every factory family the rule can choose
(``Flat``, ``IVF…,Flat``, ``IVF…_HNSW32,Flat``, ``IVF…[_HNSW32],PQ…``,
``OPQ…,IVF…_HNSW32,PQ…``). The same code runs on ``device="cuda"`` in production and on
``device="cpu"`` in the tests; there is no second GPU path:

1. vector transforms (OPQ) are trained by faiss on the CPU — they sub-sample to 65k points;
2. the coarse quantizer's k-means runs in torch on ``device``: faiss's own k-means loop
   (:func:`faiss.contrib.clustering.kmeans`) over :class:`TorchAssign`, whose assignment step
   scores bounded-size blocks (``score_bytes``) so 65,536 lists never need the whole
   (points x lists) matrix, and which is *spherical* for inner-product indexes like faiss's
   own ``IndexIVF`` training (centroids normalised, points assigned by cosine);
3. the centroids go into the quantizer, and faiss's ``index.train`` does the rest (PQ codebooks
   on the residuals) and marks every level — the outer ``IndexPreTransform`` included — trained.

Packaging: GPU training needs only a CUDA build of torch. faiss stays ``faiss-cpu`` (search is
on the CPU); a faiss GPU wheel installed *as well* ships a second copy of the ``faiss`` module,
which :func:`check_faiss_install` detects (see docs/indexing.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from importlib import metadata
from typing import Any

import faiss
import numpy as np
import torch
from faiss.contrib.clustering import kmeans

log = logging.getLogger(__name__)

#: faiss warns below 39 training points per centroid; the builder refuses to train with fewer.
MIN_POINTS_PER_LIST = 39
#: Bound on one block of the (points x centroids) score matrix during assignment.
SCORE_BYTES = 256 * 2**20
GPU_TRAINING_MODES = ("auto", "on", "off")
#: pip distributions that each install a ``faiss`` module.
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12",
                       "faiss-gpu-cuvs", "faiss")


def cuda_available() -> bool:
    """Whether a CUDA device can be used for training."""
    return bool(torch.cuda.is_available())


def resolve_training_device(mode: str) -> str | None:
    """The torch device for index training under ``FIGSEARCH_INDEX_GPU_TRAINING``.

    ``auto``: ``"cuda"`` when CUDA is available, else ``"cpu"`` (the same torch k-means on the
    CPU: 3x faster than faiss's own on the 2-core machine, bfloat16 scores where the CPU has
    them; faiss's took > 7 minutes for 4096 lists at 1M); ``on``: ``"cuda"``, or a clear error
    without CUDA; ``off``: None (faiss's own CPU training).
    """
    mode = str(mode).strip().lower()
    if mode not in GPU_TRAINING_MODES:
        raise ValueError(f"GPU training mode {mode!r} is not one of {', '.join(GPU_TRAINING_MODES)}")
    if mode == "off":
        return None
    if cuda_available():
        return "cuda"
    if mode == "on":
        raise RuntimeError("GPU index training is on (FIGSEARCH_INDEX_GPU_TRAINING=on or "
                           "--gpu-training on) but torch sees no CUDA device; use auto or off")
    return "cpu"


# -- packaging ---------------------------------------------------------------------------------
def installed_faiss_distributions() -> list[str]:
    """Installed pip distributions that provide a ``faiss`` module (name==version)."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name}=={metadata.version(name)}")
    return found


def faiss_install_problem(dists: list[str] | None = None) -> str | None:
    """A message when more than one distribution installs the ``faiss`` module, else None."""
    dists = installed_faiss_distributions() if dists is None else dists
    if len(dists) <= 1:
        return None
    names = [d.split("==")[0] for d in dists]
    others = " ".join(n for n in names if n != "faiss-cpu")
    return (f"{len(dists)} pip distributions install the same `faiss` module ({', '.join(dists)}); "
            f"whichever was installed last overwrote the other's files. figsearch needs only "
            f"faiss-cpu (GPU index training uses torch): run `pip uninstall -y {others} faiss-cpu "
            f"&& pip install faiss-cpu`")


def check_faiss_install() -> None:
    """Raise RuntimeError when two faiss distributions share the module (see above)."""
    problem = faiss_install_problem()
    if problem:
        raise RuntimeError(problem)


# -- k-means -----------------------------------------------------------------------------------
class TorchAssign:
    """faiss k-means dataset (the ``DatasetAssign`` interface of :mod:`faiss.contrib.clustering`)
    over a tensor on any torch device, with bounded-memory, optionally spherical,
    nearest-centroid assignment.

    Not a subclass of ``faiss.contrib.torch.clustering.DatasetAssign``: importing that module
    imports ``faiss.contrib.torch_utils``, which replaces ``Index.search`` process-wide with a
    wrapper that refuses the ``params=`` keyword the search side uses.
    """

    def __init__(self, x: torch.Tensor, spherical: bool, score_bytes: int = SCORE_BYTES,
                 score_dtype: torch.dtype = torch.float32) -> None:
        self.x = x
        self.spherical = spherical
        self.score_bytes = score_bytes
        self.score_dtype = score_dtype
        # the scoring copy (bfloat16: hardware matmuls on AMX CPUs); sums stay float32
        self.xs = x if score_dtype == x.dtype else x.to(score_dtype)

    def count(self) -> int:
        return int(self.x.shape[0])

    def dim(self) -> int:
        return int(self.x.shape[1])

    def get_subset(self, indices: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(indices, device=self.x.device)]

    def assign_to(self, centroids: torch.Tensor, weights: Any = None
                  ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(labels as numpy, squared distances, per-centroid sums), summed on the device."""
        dist, idx = self.perform_search(centroids)
        labels = idx.ravel()
        sums = torch.zeros_like(centroids)
        sums.index_add_(0, labels, self.x if weights is None else self.x * weights[:, None])
        return labels.cpu().numpy(), dist.ravel(), sums

    def block_rows(self, k: int) -> int:
        """Rows per block so that one (rows x k) float32 score block stays under the bound."""
        return max(1, min(len(self.x), self.score_bytes // (4 * max(k, 1))))

    def perform_search(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distance, index) of each point's nearest centroid, as (n, 1) tensors."""
        c = centroids.to(self.x.device, torch.float32)
        if self.spherical:  # assign by cosine to the normalised centroids (spherical k-means)
            c = torch.nn.functional.normalize(c, dim=1)
        half_norms = 0.5 * (c * c).sum(1)
        dist = torch.empty(len(self.x), device=self.x.device)
        idx = torch.empty(len(self.x), dtype=torch.int64, device=self.x.device)
        rows = self.block_rows(len(c))
        cs = c.to(self.score_dtype)
        for start in range(0, len(self.x), rows):
            xb = self.x[start : start + rows]
            scores = (self.xs[start : start + rows] @ cs.T).float()
            scores -= half_norms  # argmax(x.c - |c|^2/2) = argmin |x - c|^2
            best, arg = scores.max(1)
            dist[start : start + rows] = (xb * xb).sum(1) - 2 * best
            idx[start : start + rows] = arg
            del scores
        return dist.clamp_(min=0)[:, None], idx[:, None]


def torch_kmeans(x: np.ndarray | torch.Tensor, k: int, device: str, *, spherical: bool,
                 niter: int = 20, seed: int = 1234, score_bytes: int = SCORE_BYTES,
                 score_dtype: torch.dtype = torch.float32) -> np.ndarray:
    """k float32 centroids of ``x`` (unit-norm when ``spherical``) by faiss's k-means loop,
    with the assignment in torch on ``device`` (point-centroid scores in ``score_dtype``;
    centroid sums in float32)."""
    n = len(x)
    if n < MIN_POINTS_PER_LIST * k:
        raise ValueError(f"k-means with {k} centroids needs >= {MIN_POINTS_PER_LIST * k} "
                         f"training points ({MIN_POINTS_PER_LIST} per centroid), got {n}")
    xt = torch.as_tensor(np.ascontiguousarray(x, np.float32) if isinstance(x, np.ndarray) else x)
    data = TorchAssign(xt.to(device, torch.float32).contiguous(), spherical, score_bytes,
                       score_dtype)
    with contextlib.redirect_stdout(io.StringIO()):  # contrib's kmeans prints "preproc..."
        centroids = kmeans(k, data, niter=niter, seed=seed, verbose=False)
    if spherical:
        centroids = torch.nn.functional.normalize(centroids, dim=1)
    return np.ascontiguousarray(centroids.float().cpu().numpy())


# -- whole-index training ----------------------------------------------------------------------
def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IndexIVF inside ``index`` (through a pre-transform), or None."""
    return faiss.try_extract_index_ivf(index)


def ivf_lists_of(index: faiss.Index) -> int:
    """IVF list count of ``index`` (0 when it has no IVF level)."""
    ivf = ivf_of(index)
    return int(ivf.nlist) if ivf is not None else 0


def check_training_points(index: faiss.Index, n: int) -> None:
    """Refuse to train an IVF of k lists on fewer than 39·k points (faiss's minimum)."""
    k = ivf_lists_of(index)
    if k and n < MIN_POINTS_PER_LIST * k:
        fit = 2 ** int(math.log2(max(n // MIN_POINTS_PER_LIST, 1)))
        raise ValueError(
            f"{n} training vectors are too few for {k} IVF lists: faiss needs >= "
            f"{MIN_POINTS_PER_LIST} per list ({MIN_POINTS_PER_LIST * k}); use IVF{fit} or fewer "
            f"lists, or more vectors")


def train_transforms(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Train the pre-transform chain (OPQ) of ``index`` on ``x``; return ``x`` transformed."""
    pre = faiss.downcast_index(index)
    if not isinstance(pre, faiss.IndexPreTransform):
        return x
    chain: Any = pre.chain  # a SWIG vector (the stubs call it a list)
    for i in range(chain.size()):
        vt = chain.at(i)
        if not vt.is_trained:
            vt.train(x)
        x = vt.apply(x)
    return x


def kmeans_score_dtype(device: str) -> torch.dtype:
    """bfloat16 on a CPU that multiplies it in hardware (AMX / AVX-512 BF16: ~3x the float32
    rate, measured on the 2-core machine), float32 elsewhere (GPUs included: unchanged)."""
    from figsearch.encoders import fast_bf16_cpu

    return torch.bfloat16 if torch.device(device).type == "cpu" and fast_bf16_cpu() \
        else torch.float32


def train_index_on_device(index: faiss.Index, x: np.ndarray, device: str, *, niter: int = 10,
                          seed: int = 1234, score_bytes: int = SCORE_BYTES,
                          score_dtype: torch.dtype | None = None) -> None:
    """Train ``index`` on the (normalised) sample ``x`` with the coarse k-means in torch on
    ``device`` (``niter`` 10: faiss's IVF default; scores in ``score_dtype``, default
    :func:`kmeans_score_dtype`); faiss trains transforms and codecs and sets every
    ``is_trained`` flag."""
    x = np.ascontiguousarray(x, np.float32)
    ivf = ivf_of(index)
    if ivf is None:
        index.train(x)
        return
    check_training_points(index, len(x))
    xt = train_transforms(index, x)
    spherical = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    centroids = torch_kmeans(xt, ivf.nlist, device, spherical=spherical, niter=niter, seed=seed,
                             score_bytes=score_bytes,
                             score_dtype=score_dtype or kmeans_score_dtype(device))
    del xt
    ivf.quantizer.reset()
    ivf.quantizer.add(centroids)
    index.train(x)  # quantizer full -> faiss only trains the codec, then marks all levels trained
    if not index.is_trained or not ivf.is_trained:
        raise RuntimeError(f"index {type(index).__name__} still untrained after training")


def train_index_faiss(index: faiss.Index, x: np.ndarray) -> None:
    """faiss's own CPU training, with an exact flat index for the coarse k-means when the
    quantizer is HNSW (faiss would otherwise rebuild the graph every iteration)."""
    x = np.ascontiguousarray(x, np.float32)
    check_training_points(index, len(x))
    ivf = ivf_of(index)
    flat = None
    if ivf is not None and not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        flat = faiss.IndexFlatL2(ivf.d)  # held here: faiss does not own clustering_index
        ivf.clustering_index = flat
    try:
        index.train(x)
    finally:
        if ivf is not None and flat is not None:
            ivf.clustering_index = None  # type: ignore[assignment]  # SWIG: nullptr
    log.debug("trained %s on %d vectors (faiss CPU)", type(index).__name__, len(x))
