"""HiFi-GAN's discriminators: multi-period (periods 2, 3, 5, 7, 11) and multi-scale (3 scales).

Both take a batch of waveforms (B, 1, N) and return, per sub-discriminator, its score map flattened to
(B, L) and its feature maps (the activations after every layer), used by the feature-matching loss.
``scale`` shrinks every channel count (1.0 is the published size; small values make CPU tests fast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LRELU_SLOPE = 0.1
PERIODS = (2, 3, 5, 7, 11)
NUM_SCALES = 3

Scores = list[Tensor]  # one (B, L) score map per sub-discriminator
FeatureMaps = list[list[Tensor]]  # per sub-discriminator, every layer's activation


def _channels(base: int, scale: float, multiple: int) -> int:
    """``base * scale`` rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, int(base * scale) // multiple * multiple)


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU conv stack then the output conv: (flattened score, every layer's feature map)."""
    fmaps: list[Tensor] = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = post(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class PeriodDiscriminator(nn.Module):
    """Looks at every ``period``-th sample: (B, 1, N) is folded to (B, 1, ceil(N / period), period)."""

    def __init__(self, period: int, scale: float = 1.0, kernel: int = 5, stride: int = 3) -> None:
        super().__init__()
        self.period = period
        widths = [1] + [_channels(c, scale, 4) for c in (32, 128, 512, 1024, 1024)]
        strides = [stride, stride, stride, stride, 1]
        pad = (kernel - 1) // 2
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (kernel, 1), (s, 1), padding=(pad, 0)))
            for c_in, c_out, s in zip(widths[:-1], widths[1:], strides, strict=True)
        )
        self.conv_post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, N) -> score (B, L) and feature maps."""
        batch, channels, length = x.shape
        if length % self.period:
            x = F.pad(x, (0, self.period - length % self.period), mode="reflect")
        x = x.view(batch, channels, -1, self.period)
        return _conv_stack(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """Grouped strided 1-D convolutions over the waveform (B, 1, N)."""

    def __init__(self, scale: float = 1.0, use_spectral_norm: bool = False) -> None:
        super().__init__()
        self.use_spectral_norm = use_spectral_norm
        norm = spectral_norm if use_spectral_norm else weight_norm
        c = [_channels(16, scale, 4)] + [_channels(w, scale, 16) for w in (64, 256, 1024, 1024, 1024)]
        self.convs = nn.ModuleList(
            [
                norm(nn.Conv1d(1, c[0], 15, 1, padding=7)),
                norm(nn.Conv1d(c[0], c[1], 41, 4, groups=4, padding=20)),
                norm(nn.Conv1d(c[1], c[2], 41, 4, groups=16, padding=20)),
                norm(nn.Conv1d(c[2], c[3], 41, 4, groups=16, padding=20)),
                norm(nn.Conv1d(c[3], c[4], 41, 4, groups=16, padding=20)),
                norm(nn.Conv1d(c[4], c[5], 5, 1, padding=2)),
            ]
        )
        self.conv_post = norm(nn.Conv1d(c[5], 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, N) -> score (B, L) and feature maps.

        Spectral norm's weights are computed once per call in fp32, outside any autocast: under CUDA autocast
        its power iteration's ``mv`` would run in bf16 and its ``vdot`` with the fp32 vector ``u`` would fail.
        """
        if not self.use_spectral_norm:
            return self._forward(x)
        with parametrize.cached():
            with torch.autocast(x.device.type, enabled=False):
                for conv in [*self.convs, self.conv_post]:
                    conv.weight  # noqa: B018 - fills the cache
            return self._forward(x)

    def _forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return _conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`PeriodDiscriminator` per period (2, 3, 5, 7, 11)."""

    def __init__(self, periods: tuple[int, ...] = PERIODS, scale: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, scale) for p in periods)

    def forward(self, x: Tensor) -> tuple[Scores, FeatureMaps]:
        """(B, 1, N) waveforms -> per period, scores (B, L_p) and feature maps."""
        scores, fmaps = zip(*(d(x) for d in self.discriminators), strict=True)
        return list(scores), list(fmaps)


class MultiScaleDiscriminator(nn.Module):
    """Three :class:`ScaleDiscriminator` s on the raw, x2 and x4 average-pooled waveform.

    The first uses spectral norm, the others weight norm, as in HiFi-GAN.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(scale, use_spectral_norm=(i == 0)) for i in range(NUM_SCALES)
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: Tensor) -> tuple[Scores, FeatureMaps]:
        """(B, 1, N) waveforms -> per scale, scores (B, L_s) and feature maps."""
        scores: Scores = []
        fmaps: FeatureMaps = []
        for i, disc in enumerate(self.discriminators):
            if i > 0:
                x = self.pool(x)
            score, fmap = disc(x)
            scores.append(score)
            fmaps.append(fmap)
        return scores, fmaps


class Discriminators(nn.Module):
    """MPD and MSD together, so one DDP wrapper and one optimiser cover both."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(scale=scale)
        self.msd = MultiScaleDiscriminator(scale=scale)

    def forward(self, x: Tensor) -> tuple[Scores, FeatureMaps]:
        """(B, 1, N) -> scores and feature maps of the 5 period then the 3 scale discriminators."""
        p_scores, p_fmaps = self.mpd(x)
        s_scores, s_fmaps = self.msd(x)
        return p_scores + s_scores, p_fmaps + s_fmaps
