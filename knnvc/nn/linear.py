"""LinearVC's matching step: one linear map W from a source speaker's frames to a target speaker's.

Kamper, van Niekerk, Zaidi and Carbonneau, "LinearVC: linear transformations of self-supervised features through
the lens of voice conversion", Interspeech 2025 (arXiv 2506.01510). Pure tensor functions: no I/O, no state;
results on the inputs' device (the lasso is solved by celer on the CPU).

The authors' ``get_projmat``:

- **non-parallel**: the source speaker's frames (the first ``LINEAR_MAX_FRAMES``, 8,192) each take their nearest
  target frame (k = 1, cosine), and W is the least-squares fit ``source @ W ~ matched``;
- **parallel**: utterances with the same name are paired, each pair matched on its own (k = 1), the pairs'
  frames stacked, and W is a lasso fit (alpha 0.3 by default, no intercept) with celer.

A source frame x (1, D) converts as ``x @ W``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from knnvc.errors import missing_extra
from knnvc.nn.matcher import knn_indices
from knnvc.options import LINEAR_LASSO, LINEAR_MAX_FRAMES


@dataclass(frozen=True)
class AffineMap:
    """A fixed per-frame map ``x @ matrix + bias``: what LinearVC (bias 0) and MKL-VC fit.

    Attributes:
        matrix: (D, D) float32 or float64.
        bias: (D,) of the same dtype.
    """

    matrix: Tensor
    bias: Tensor

    def __call__(self, frames: Tensor) -> Tensor:
        """(T, D) frames -> (T, D) mapped, in the map's precision (float32 on MPS, which has no float64), returned in
        the frames' dtype and device."""
        dtype = torch.float32 if frames.device.type == "mps" else self.matrix.dtype  # MPS has no float64
        out = frames.to(dtype) @ self.matrix.to(frames.device, dtype) + self.bias.to(frames.device, dtype)
        return out.to(frames.dtype)


def nearest_frames(source: Tensor, target: Tensor) -> Tensor:
    """(T, D) source frames -> (T, D): each one's nearest ``target`` frame (M, D) by cosine distance (k = 1)."""
    return target[knn_indices(source, target, 1)[:, 0]]


def least_squares(inputs: Tensor, outputs: Tensor) -> Tensor:
    """W (D, E) minimising ``|inputs @ W - outputs|^2`` for (N, D) inputs and (N, E) outputs (float32, as the
    authors' ``numpy.linalg.lstsq`` on float32 features), on the inputs' device."""
    solution = np.linalg.lstsq(_host(inputs), _host(outputs), rcond=None)[0]
    return torch.from_numpy(np.asarray(solution, dtype=np.float32)).to(inputs.device)


def lasso(inputs: Tensor, outputs: Tensor, alpha: float) -> Tensor:
    """W (D, E) of the lasso ``celer.Lasso(alpha, fit_intercept=False)`` fitted to (N, D) -> (N, E), as the
    authors fit it (celer's default tolerances), on the inputs' device.

    Raises:
        ExtraError: celer is not installed (``pip install "knnvc[linear]"``).
    """
    try:
        import celer
    except ModuleNotFoundError as exc:
        raise missing_extra("a lasso fit (a parallel LinearVC pair)", "linear", "celer") from exc

    fitted = celer.Lasso(alpha=alpha, fit_intercept=False).fit(_host(inputs), _host(outputs))
    weights = np.asarray(fitted.coef_, dtype=np.float32).reshape(outputs.shape[-1], inputs.shape[-1]).T
    return torch.from_numpy(np.ascontiguousarray(weights)).to(inputs.device)


def fit_nonparallel(source: Tensor, target: Tensor, alpha: float | None = None) -> Tensor:
    """W (D, D) from a source speaker's (N, D) frames to a target speaker's (M, D), not parallel.

    The first ``LINEAR_MAX_FRAMES`` frames of each are kept; each source frame's nearest target frame is its
    regression target. ``alpha``: None for least squares (the authors' default here), else a lasso of that alpha.
    """
    source, target = source[:LINEAR_MAX_FRAMES], target[:LINEAR_MAX_FRAMES]
    matched = nearest_frames(source, target)
    return least_squares(source, matched) if alpha is None else lasso(source, matched, alpha)


def fit_parallel(pairs: Sequence[tuple[Tensor, Tensor]], alpha: float | None = LINEAR_LASSO) -> Tensor:
    """W (D, D) from parallel utterances: (source (T_i, D), target (M_i, D)) pairs saying the same words.

    Each source frame takes its nearest frame of its own pair's target; ``alpha``: the lasso's (the authors'
    0.3), or None for least squares.
    """
    if not pairs:
        raise ValueError("a parallel fit needs at least one pair of utterances")
    inputs = torch.cat([s for s, _ in pairs])
    outputs = torch.cat([nearest_frames(s, t) for s, t in pairs])
    return least_squares(inputs, outputs) if alpha is None else lasso(inputs, outputs, alpha)


def _host(frames: Tensor) -> np.ndarray:
    """(N, D) frames as a float32 numpy array on the host."""
    return frames.detach().to("cpu", torch.float32).contiguous().numpy()
