"""k-nearest-neighbour regression by cosine distance, and the controls on top of it: pure tensor functions.

No I/O, no model state, no globals: every function works on the device and dtype of its inputs. Work is
blocked over the queries and over the matching set, so the largest intermediate is
``query_block x key_block`` similarities however long the matching set is (a 1-hour set is 180,000 frames).

The controls (see ``knnvc.options.ConvertOptions``):

- match on one set of frames and average another's (the original's ``synth_set``): ``knn_regression(...,
  synth=...)`` matches source layer-L frames against the voice's layer-L frames and averages the SAME frames'
  layer-6 features;
- neighbour weighting: ``uniform`` (the paper's mean) or ``inverse-distance`` (weights ``1 / d**2``);
- ``morph(a, b, w)``: ``(1 - w) * a + w * b`` between two voices' matched features;
- ``blend(matched, source, strength)``: ``strength * matched + (1 - strength) * source`` (kNN-TTS's lambda).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from knnvc.options import DEFAULT_K

QUERY_BLOCK = 2048  # query frames per block
KEY_BLOCK = 16384  # matching-set frames per block: 2048 x 16384 fp32 similarities = 128 MiB
DISTANCE_FLOOR = 1e-6  # cosine distance below which inverse-distance weights stop growing

Weighting = Literal["uniform", "inverse-distance"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "inverse-distance")


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


def _check(query: Tensor, keys: Tensor, k: int, exclude: Tensor | None) -> None:
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"feature widths differ: query {query.shape[-1]}, matching set {keys.shape[-1]}")
    widest = 0 if exclude is None or exclude.numel() == 0 else int((exclude[..., 1] - exclude[..., 0]).max())
    if not 1 <= k <= keys.shape[0] - widest:
        raise ValueError(f"k={k} needs 1 <= k <= usable matching-set size ({keys.shape[0] - widest} frames)")


def _block_topk(
    query: Tensor, keys_n: Tensor, k: int, key_block: int, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k cosine similarities and key indices, each (Qb, k), of queries (Qb, D) against normalised keys (M, D).

    ``exclude``: (Qb, 2) [start, stop) key rows each query may not use, or None.
    """
    q = F.normalize(query, dim=-1)
    best: tuple[Tensor, Tensor] | None = None
    for m0 in range(0, keys_n.shape[0], key_block):
        sims = q @ keys_n[m0 : m0 + key_block].T
        if exclude is not None:
            rows = torch.arange(m0, m0 + sims.shape[1], device=sims.device)
            banned = (rows[None, :] >= exclude[:, :1]) & (rows[None, :] < exclude[:, 1:])
            sims = sims.masked_fill(banned, float("-inf"))
        best = _merge_topk(best, sims, m0, k)
    assert best is not None
    return best


def _blocked(
    query: Tensor, keys: Tensor, k: int, query_block: int, key_block: int, exclude: Tensor | None = None,
    normalised: bool = False,
) -> Iterator[tuple[int, Tensor, Tensor]]:  # fmt: skip
    """(first query row, (Qb, k) similarities, (Qb, k) indices) per block of the flattened (Q, D) queries."""
    _check(query, keys, k, exclude)
    flat = query.reshape(-1, query.shape[-1])
    ranges = None if exclude is None else exclude.reshape(-1, 2).to(query.device)
    keys_n = keys if normalised else F.normalize(keys, dim=-1)
    for q0 in range(0, flat.shape[0], query_block):
        part = None if ranges is None else ranges[q0 : q0 + query_block]
        sims, idx = _block_topk(flat[q0 : q0 + query_block], keys_n, k, key_block, part)
        yield q0, sims, idx


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
    for q0, _, idx in _blocked(query, keys, k, query_block, key_block, normalised=keys_normalised):
        out[q0 : q0 + idx.shape[0]] = idx
    return out.reshape(*query.shape[:-1], k)


def neighbour_weights(similarities: Tensor, weighting: Weighting = "uniform") -> Tensor:
    """Weights (..., k) summing to 1 over the k neighbours, from their cosine similarities (..., k).

    ``uniform``: 1/k each (the paper's mean). ``inverse-distance``: proportional to ``1 / d**2`` with
    ``d = 1 - similarity`` the cosine distance floored at ``DISTANCE_FLOOR`` (RVC's inverse squared distance),
    so a near neighbour counts for much more than a far one.
    """
    if weighting == "uniform":
        return torch.full_like(similarities, 1.0 / similarities.shape[-1])
    if weighting == "inverse-distance":
        dist = (1.0 - similarities).clamp_min(DISTANCE_FLOOR)
        inv = dist.pow(-2)
        return inv / inv.sum(dim=-1, keepdim=True)
    raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def knn_regression(
    query: Tensor,
    keys: Tensor,
    k: int = DEFAULT_K,
    *,
    synth: Tensor | None = None,
    weighting: Weighting = "uniform",
    query_block: int = QUERY_BLOCK,
    key_block: int = KEY_BLOCK,
    exclude: Tensor | None = None,
    keys_normalised: bool = False,
) -> Tensor:
    """Replace each query frame by the (weighted) mean of its ``k`` nearest matching-set frames (kNN-VC's step 3).

    Args:
        query: (Q, D) or (B, Q, D) source frames at 50 Hz.
        keys: (M, D) matching set of the target voice, searched by cosine distance.
        k: neighbours averaged (4 in the paper).
        synth: (M, E) frames averaged in place of ``keys`` (the original's ``synth_set``): row i belongs to the
            same moment as ``keys`` row i, e.g. layer-6 frames when matching on layer 8. Default: ``keys``.
        weighting: ``uniform`` or ``inverse-distance`` (see ``neighbour_weights``).
        exclude: optional (Q, 2) or (B, Q, 2) int64 [start, stop) rows of ``keys`` each query frame may not
            use (prematching: the query's own utterance inside its speaker's pool), so no key is copied.
        keys_normalised: ``keys`` already have unit norm (a pipeline normalises a voice once).

    Returns:
        (Q, E) or (B, Q, E) frames, in ``synth``'s dtype.
    """
    synth = keys if synth is None else synth
    if synth.shape[0] != keys.shape[0]:
        raise ValueError(f"synth set has {synth.shape[0]} frames, matching set {keys.shape[0]}: they must pair up")
    rows = query.numel() // max(1, query.shape[-1])
    out = torch.empty(rows, synth.shape[-1], dtype=synth.dtype, device=query.device)
    for q0, sims, idx in _blocked(query, keys, k, query_block, key_block, exclude, keys_normalised):
        if weighting == "uniform":
            out[q0 : q0 + idx.shape[0]] = synth[idx].mean(dim=-2)
        else:
            w = neighbour_weights(sims, weighting).to(synth.dtype)
            out[q0 : q0 + idx.shape[0]] = (w.unsqueeze(-1) * synth[idx]).sum(dim=-2)
    return out.reshape(*query.shape[:-1], synth.shape[-1])


def morph(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """``(1 - weight) * a + weight * b``: matched features (T, D) of voice A and voice B, weight in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"morphing needs features of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if weight == 0.0:
        return a
    if weight == 1.0:
        return b
    return torch.lerp(a, b, weight)


def blend(matched: Tensor, source: Tensor, strength: float) -> Tensor:
    """``strength * matched + (1 - strength) * source`` (kNN-TTS's lambda): (T, D) each, both layer 6.

    Strength 0 gives the source back, 1 the matched (target) features; above 1 exaggerates the target.
    """
    if matched.shape != source.shape:
        raise ValueError(f"blend needs features of one shape, got {tuple(matched.shape)} and {tuple(source.shape)}")
    if strength == 1.0:
        return matched
    return strength * matched + (1.0 - strength) * source.to(matched.dtype)
