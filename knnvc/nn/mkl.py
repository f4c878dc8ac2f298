"""MKL-VC's matching step: a factorised Monge-Kantorovich linear map between two speakers' frames.

Lobashev, Yermekova and Larchenko, "Training-free voice conversion with factorized optimal transport",
Interspeech 2025 (arXiv 2506.09709). Pure tensor functions: no I/O, no state; results on the inputs' device.

The authors' ``run_inference``, step by step:

1. the feature dimensions are ordered by the source's standard deviation (torch's, unbiased), largest first;
2. the block size used is ``min(target frames - 4, K)``;
3. the ordered dimensions are cut into consecutive blocks of that size (the last block takes what is left), and
   each block is mapped by the closed-form optimal-transport (Monge-Kantorovich) map between Gaussian fits of the
   source's frames and the target's, computed in float64: ``(x - mean_s) @ T + mean_t`` with
   ``T = A^-1/2 (A^1/2 B A^1/2)^1/2 A^-1/2`` (A, B the blocks' unbiased covariances; negative eigenvalues clipped
   to 0, ``EPS`` added, as the authors' ``MKL``).

One departure: when the width leaves one dimension alone at the end, the authors' code copies it unchanged; here
it is mapped as a 1-d block (its mean and scale moved to the target's), like every other dimension.

A fitted map is an ``AffineMap``: a fixed per-frame ``x @ matrix + bias``, which is how a stream applies it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from knnvc.nn.linear import AffineMap
from knnvc.options import MKL_BLOCK

EPS = 2.2204e-16  # the authors' floor under the eigenvalues (float64's machine epsilon)
BLOCK_MARGIN = 4  # the block used is at most (target frames - 4), as the authors' code


def block_used(target_frames: int, block: int) -> int:
    """The block size the authors' code uses: ``min(target_frames - 4, block)``, at least 1."""
    return max(1, min(target_frames - BLOCK_MARGIN, block))


def dimension_order(source: Tensor) -> Tensor:
    """(D,) int64: the dimensions of (T, D) ``source`` by their standard deviation (unbiased), largest first."""
    return torch.argsort(source.std(0), descending=True)


def _block_runs(width: int, size: int) -> list[tuple[int, int, int]]:
    """Consecutive blocks of ``size`` over ``width`` dimensions, the last taking what is left, as runs of equal
    blocks, (start, stop, count): at most two, each one batched eigh."""
    full = width // size
    runs = [(0, full * size, full)] if full else []
    return runs + ([(full * size, width, 1)] if width % size else [])


def _sqrt_psd(eigenvalues: Tensor) -> Tensor:
    """The authors' ``np.sqrt(np.diag(eig) + EPS)`` on (..., K) eigenvalues (negatives clipped to 0): (..., K, K),
    EPS added to every entry as they do."""
    return torch.sqrt(torch.diag_embed(eigenvalues.clamp_min(0.0)) + EPS)


def monge_kantorovich(a: Tensor, b: Tensor) -> Tensor:
    """The linear optimal-transport map T between zero-mean Gaussians of covariances ``a`` and ``b``.

    Args:
        a: (..., K, K) float64 covariance of the source.
        b: (..., K, K) float64 covariance of the target.

    Returns:
        (..., K, K) float64 T, applied as ``x @ T`` to row vectors.
    """
    lam_a, u_a = torch.linalg.eigh(a)
    d_a = _sqrt_psd(lam_a)
    c = d_a @ u_a.mT @ b @ u_a @ d_a
    lam_c, u_c = torch.linalg.eigh((c + c.mT) / 2)
    d_c = _sqrt_psd(lam_c)
    d_a_inv = torch.diag_embed(1.0 / torch.diagonal(d_a, dim1=-2, dim2=-1))
    return u_a @ d_a_inv @ u_c @ d_c @ u_c.mT @ d_a_inv @ u_a.mT


def _covariance(x: Tensor) -> Tensor:
    """(..., N, K) float64 -> (..., K, K) unbiased covariance (numpy's ``cov(rowvar=False)``)."""
    centred = x - x.mean(dim=-2, keepdim=True)
    return centred.mT @ centred / (x.shape[-2] - 1)


def fit_mkl(source: Tensor, target: Tensor, block: int = MKL_BLOCK, order: Tensor | None = None) -> AffineMap:
    """Fit MKL-VC's map from ``source`` frames to ``target`` frames.

    Args:
        source: (T, D) frames whose statistics define the source side (an utterance, or a speaker's recordings).
        target: (M, D) the target speaker's frames, M >= 2 (a pipeline asks for 1 s: ``MKL_MIN_SECONDS``).
        block: K, dimensions mapped jointly (at least 1).
        order: (D,) the dimensions' order; default ``dimension_order(source)``.

    Returns:
        The ``AffineMap`` (D, D) + (D,) in float64 that maps each block, on the inputs' device.
    """
    if block < 1:
        raise ValueError(f"MKL block size must be at least 1, got {block}")
    if source.shape[-1] != target.shape[-1]:
        raise ValueError(f"feature widths differ: source {source.shape[-1]}, target {target.shape[-1]}")
    if source.shape[0] < 2 or target.shape[0] < 2:
        raise ValueError("MKL needs at least two source frames and two target frames for their covariances")
    order = dimension_order(source) if order is None else order
    x0 = source[:, order].to(torch.float64)
    x1 = target[:, order].to(torch.float64)
    mean0, mean1 = x0.mean(0), x1.mean(0)
    width = x0.shape[1]
    matrix = torch.zeros(width, width, dtype=torch.float64, device=source.device)
    size = block_used(target.shape[0], block)
    for start, stop, count in _block_runs(width, size):
        k = (stop - start) // count
        a = _covariance(x0[:, start:stop].reshape(-1, count, k).transpose(0, 1))
        b = _covariance(x1[:, start:stop].reshape(-1, count, k).transpose(0, 1))
        maps = monge_kantorovich(a, b)  # (count, k, k)
        for i in range(count):
            lo = start + i * k
            matrix[lo : lo + k, lo : lo + k] = maps[i]
    # Back to the original dimension order: y[order] = (x[order] - mean0) @ T + mean1.
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(width, device=order.device)
    permuted = matrix[inverse][:, inverse]
    bias = (mean1 - mean0 @ matrix)[inverse]
    return AffineMap(permuted, bias)


def mkl_transfer(source: Tensor, target: Tensor, block: int = MKL_BLOCK) -> Tensor:
    """MKL-VC's conversion of one utterance: (T, D) source frames -> (T, D) frames in the target's statistics.

    The map is fitted on this utterance's own frames (``fit_mkl``) and applied to them in float64; the result is
    in the source's dtype, on its device.
    """
    return fit_mkl(source, target, block)(source)
