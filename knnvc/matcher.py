"""k-nearest-neighbour regression by cosine distance: pure tensor functions.

No I/O, no model state, no globals: every function works on the device and dtype of its inputs. Work is
blocked over the queries and over the matching set, so the largest intermediate is
``query_block x key_block`` similarities however long the matching set is (a 1-hour set is 180,000 frames).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from knnvc.constants import DEFAULT_K

QUERY_BLOCK = 2048  # query frames per block
KEY_BLOCK = 16384  # matching-set frames per block: 2048 x 16384 fp32 similarities = 128 MiB


def cosine_distance(query: Tensor, keys: Tensor) -> Tensor:
    """Cosine distance ``1 - cos(q, m)`` between every query and every key.

    Args:
        query: (Q, D) frames.
        keys: (M, D) frames.

    Returns:
        (Q, M) distances in [0, 2], in the inputs' dtype.
    """
    return 1.0 - F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def _merge_topk(best: tuple[Tensor, Tensor] | None, sims: Tensor, offset: int, k: int) -> tuple[Tensor, Tensor]:
    """Merge a block's similarities (Qb, Mb) into the running top-k (values, indices), largest first."""
    vals, idx = sims.topk(min(k, sims.shape[-1]), dim=-1, largest=True, sorted=True)
    idx = idx + offset
    if best is not None:
        vals = torch.cat([best[0], vals], dim=-1)
        idx = torch.cat([best[1], idx], dim=-1)
        vals, order = vals.topk(k, dim=-1, largest=True, sorted=True)
        idx = idx.gather(-1, order)
    return vals, idx


def _check(query: Tensor, keys: Tensor, k: int) -> None:
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"feature widths differ: query {query.shape[-1]}, matching set {keys.shape[-1]}")
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k={k} needs 1 <= k <= matching-set size ({keys.shape[0]} frames)")


def _block_indices(query: Tensor, keys_n: Tensor, k: int, key_block: int) -> Tensor:
    """Top-k key indices (Qb, k) for one block of queries (Qb, D) against normalised keys (M, D)."""
    q = F.normalize(query, dim=-1)
    best: tuple[Tensor, Tensor] | None = None
    for m0 in range(0, keys_n.shape[0], key_block):
        best = _merge_topk(best, q @ keys_n[m0 : m0 + key_block].T, m0, k)
    assert best is not None
    return best[1]


def _blocked(
    query: Tensor, keys: Tensor, k: int, query_block: int, key_block: int, normalised: bool = False
) -> Iterator[tuple[int, Tensor]]:
    """(first query row, (Qb, k) neighbour indices) for each block of the flattened (Q, D) queries."""
    _check(query, keys, k)
    flat = query.reshape(-1, query.shape[-1])
    keys_n = keys if normalised else F.normalize(keys, dim=-1)
    for q0 in range(0, flat.shape[0], query_block):
        yield q0, _block_indices(flat[q0 : q0 + query_block], keys_n, k, key_block)


def knn_indices(
    query: Tensor,
    keys: Tensor,
    k: int = DEFAULT_K,
    *,
    query_block: int = QUERY_BLOCK,
    key_block: int = KEY_BLOCK,
    keys_normalised: bool = False,
) -> Tensor:
    """Indices of the ``k`` keys nearest to each query by cosine distance, nearest first.

    Args:
        query: (Q, D) or (B, Q, D) frames; a batch of sources shares the matching set.
        keys: (M, D) matching set, M >= k.
        k: neighbours per query.
        keys_normalised: the keys already have unit norm (a pipeline normalises a voice once).

    Returns:
        (Q, k) or (B, Q, k) int64 indices into ``keys``, on the inputs' device.
    """
    out = torch.empty(query.numel() // max(1, query.shape[-1]), k, dtype=torch.long, device=query.device)
    for q0, idx in _blocked(query, keys, k, query_block, key_block, keys_normalised):
        out[q0 : q0 + idx.shape[0]] = idx
    return out.reshape(*query.shape[:-1], k)


def knn_regression(
    query: Tensor,
    keys: Tensor,
    k: int = DEFAULT_K,
    *,
    query_block: int = QUERY_BLOCK,
    key_block: int = KEY_BLOCK,
) -> Tensor:
    """Replace each query frame by the mean of its ``k`` nearest matching-set frames (kNN-VC's step 3).

    Args:
        query: (Q, D) or (B, Q, D) source frames at 50 Hz.
        keys: (M, D) matching set of the target voice.
        k: neighbours averaged (4 in the paper).

    Returns:
        frames shaped like ``query``, in the matching set's dtype.
    """
    out = torch.empty(query.numel() // max(1, query.shape[-1]), keys.shape[-1], dtype=keys.dtype, device=query.device)
    for q0, idx in _blocked(query, keys, k, query_block, key_block):
        out[q0 : q0 + idx.shape[0]] = keys[idx].mean(dim=-2)
    return out.reshape(query.shape)
