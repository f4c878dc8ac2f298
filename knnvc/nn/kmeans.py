"""Spherical k-means for compact voices: pure tensor functions (faiss when installed, else torch).

A compact voice replaces an hour of frames (180,000 at 50 Hz) by a few thousand cluster centres. Matching is by
cosine distance, so the frames are clustered on the unit sphere (spherical k-means: each centre is the
normalised mean of its members). faiss (``pip install faiss-cpu``, the ``[compact]`` extra) is the field's
standard and is used when it imports; the torch version below gives the same kind of result on any device.

Training runs on a sample of at most ``points_per_centre`` frames per centre (faiss's own rule, with a smaller
default); every frame is then assigned to its nearest centre.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from knnvc.nn.matcher import knn_indices

log = logging.getLogger(__name__)

ITERATIONS = 10  # Lloyd iterations
POINTS_PER_CENTRE = 16  # training frames per centre (faiss defaults to 256)
Method = Literal["auto", "faiss", "torch"]  # how ``spherical_kmeans`` clusters (auto: faiss when it imports)
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class Clustering:
    """Result of ``spherical_kmeans``: assignment (M,) int64 of each frame to a centre, and how it was made."""

    assignment: Tensor
    clusters: int
    method: str
    seconds: float


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def spherical_kmeans(
    x: Tensor,
    n: int,
    *,
    iterations: int = ITERATIONS,
    points_per_centre: int = POINTS_PER_CENTRE,
    seed: int = 0,
    method: Method = "auto",
) -> Clustering:
    """Cluster the directions of ``x`` (M, D) into at most ``n`` groups.

    Returns the assignment of every row to a cluster numbered 0..clusters-1 (empty clusters are dropped and the
    rest renumbered, so ``clusters <= n``). ``method`` is auto (faiss if it imports, else torch), faiss or torch.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 1 <= n <= x.shape[0]:
        raise ValueError(f"cannot make {n} clusters of {x.shape[0]} frames")
    use_faiss = method == "faiss" or (method == "auto" and faiss_available())
    start = time.perf_counter()
    unit = F.normalize(x.float(), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    sample = unit
    if x.shape[0] > n * points_per_centre:
        sample = unit[torch.randperm(x.shape[0], generator=gen)[: n * points_per_centre].to(x.device)]
    train = _faiss_train if use_faiss else _torch_train
    centres = train(sample, n, iterations, seed)
    assignment = knn_indices(unit, centres.to(unit.device), 1)[:, 0]
    used, assignment = torch.unique(assignment, return_inverse=True)
    seconds = time.perf_counter() - start
    log.info("k-means (%s): %d frames -> %d clusters in %.1f s", "faiss" if use_faiss else "torch",
             x.shape[0], used.numel(), seconds)  # fmt: skip
    return Clustering(assignment, int(used.numel()), "faiss" if use_faiss else "torch", seconds)


def _faiss_train(sample: Tensor, n: int, iterations: int, seed: int) -> Tensor:
    """faiss's spherical k-means on (S, D) unit rows -> (n, D) centres."""
    import faiss

    data = sample.detach().cpu().contiguous().numpy()
    km = faiss.Kmeans(data.shape[1], n, niter=iterations, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(1, -(-data.shape[0] // n)), min_points_per_centroid=1)  # fmt: skip
    km.train(data)
    centroids: Any = km.centroids
    return torch.from_numpy(np.array(centroids, dtype=np.float32))


def _torch_train(sample: Tensor, n: int, iterations: int, seed: int) -> Tensor:
    """Lloyd's algorithm on (S, D) unit rows -> (n, D) unit centres; an empty cluster restarts at a random row."""
    gen = torch.Generator().manual_seed(seed)
    centres = sample[torch.randperm(sample.shape[0], generator=gen)[:n].to(sample.device)].clone()
    for _ in range(iterations):
        nearest = knn_indices(sample, centres, 1)[:, 0]
        sums = torch.zeros_like(centres).index_add_(0, nearest, sample)
        sizes = torch.bincount(nearest, minlength=n)
        empty = sizes == 0
        if bool(empty.any()):
            picks = torch.randint(0, sample.shape[0], (int(empty.sum()),), generator=gen).to(sample.device)
            sums[empty] = sample[picks]
        centres = F.normalize(sums, dim=-1)
    return centres


def cluster_means(frames: Tensor, clustering: Clustering) -> Tensor:
    """Mean (clusters, D) of the frames (M, D) in each cluster: the compact voice's frames for one layer."""
    assignment = clustering.assignment.to(frames.device)
    sums = torch.zeros(clustering.clusters, frames.shape[1], dtype=torch.float64, device=frames.device)
    sums.index_add_(0, assignment, frames.double())
    sizes = torch.bincount(assignment, minlength=clustering.clusters).clamp_min(1)
    return (sums / sizes[:, None]).to(frames.dtype)


def cluster_sizes(clustering: Clustering) -> Tensor:
    """Frames (clusters,) int64 in each cluster."""
    return torch.bincount(clustering.assignment, minlength=clustering.clusters)
