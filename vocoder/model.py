"""The kNN-VC HiFi-GAN generator: features (B, T, D) at 50 Hz -> waveform (B, 1, T * 320) at 16 kHz.

Module names match the published checkpoint (``lin_pre``, ``conv_pre``, ``ups.N``, ``resblocks.N.convs1.M``
/ ``convs2.M`` or ``convs.M``, ``conv_post``). Every convolution carries weight norm (as a
``torch.nn.utils.parametrizations.weight_norm`` parametrization) until :meth:`Generator.fold_weight_norm`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from vocoder.config import HifiganConfig

logger = logging.getLogger(__name__)

LRELU_SLOPE = 0.1  # every activation but the last
FINAL_LRELU_SLOPE = 0.01  # the original calls F.leaky_relu with its default slope before conv_post

_Conv = nn.Conv1d | nn.ConvTranspose1d


def _padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


def _wn(module: _Conv) -> _Conv:
    """Weight-normalise ``module.weight`` over every dim but 0 (as the original's ``weight_norm``)."""
    return weight_norm(module, name="weight", dim=0)


class ResBlock1(nn.Module):
    """Residual block with two convolutions per dilation; (B, C, L) -> (B, C, L)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            _wn(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _wn(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x


class ResBlock2(nn.Module):
    """Residual block with one convolution per dilation (the first two dilations); (B, C, L) -> (B, C, L)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _wn(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations[:2]
        )

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            x = c(F.leaky_relu(x, LRELU_SLOPE)) + x
        return x


class Generator(nn.Module):
    """HiFi-GAN generator of kNN-VC (bshall/knn-vc ``hifigan/models.py``), written from its description.

    ``forward``: features (B, T, input_dim) at ``config.frame_rate`` Hz (50 Hz) -> waveform
    (B, 1, T * config.hop) in [-1, 1] at ``config.sample_rate`` Hz (16 kHz).
    """

    def __init__(self, config: HifiganConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else HifiganConfig()
        self.config = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.num_upsamples = len(cfg.upsample_rates)
        ch0 = cfg.upsample_initial_channel
        self.lin_pre = nn.Linear(cfg.input_dim, cfg.hidden_dim)
        self.conv_pre = _wn(nn.Conv1d(cfg.hidden_dim, ch0, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            _wn(nn.ConvTranspose1d(ch0 // 2**i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(ch0 // 2 ** (i + 1), k, d)
            for i in range(self.num_upsamples)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = _wn(nn.Conv1d(ch0 // 2**self.num_upsamples, 1, 7, 1, padding=3))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, input_dim) at 50 Hz -> (B, 1, T * hop) at 16 kHz."""
        x = self.lin_pre(x).permute(0, 2, 1)  # (B, hidden_dim, T)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)

    def _convs(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]

    @property
    def is_folded(self) -> bool:
        """True when no convolution carries a weight-norm parametrization (inference layout)."""
        return not any(parametrize.is_parametrized(m, "weight") for m in self._convs())

    def fold_weight_norm(self) -> Generator:
        """Replace every weight-norm parametrization by the plain weight ``g * v / ||v||`` it computes.

        State-dict keys change from ``X.parametrizations.weight.original0/1`` to ``X.weight``. Idempotent;
        returns ``self``.
        """
        for m in self._convs():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return self

    def remove_weight_norm(self) -> Generator:
        """Alias of :meth:`fold_weight_norm` (the original's name)."""
        return self.fold_weight_norm()

    @property
    def device(self) -> torch.device:
        return self.lin_pre.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lin_pre.weight.dtype

    @torch.inference_mode()
    def synthesise(self, features: Tensor) -> Tensor:
        """Features (T, input_dim) or (B, T, input_dim) at 50 Hz -> waveform (T * hop,) or (B, T * hop) at
        16 kHz, on the model's device and dtype. Does not change train/eval mode: call ``eval()`` first."""
        if features.ndim not in (2, 3) or features.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"synthesise expects features of shape (T, {self.config.input_dim}) or "
                f"(B, T, {self.config.input_dim}), got {tuple(features.shape)}"
            )
        batched = features.ndim == 3
        x = features if batched else features.unsqueeze(0)
        if x.shape[1] == 0:  # no frames: convolutions cannot run on an empty sequence
            empty = torch.zeros(x.shape[0], 0, device=self.device, dtype=self.dtype)
            return empty if batched else empty.squeeze(0)
        wav = self(x.to(device=self.device, dtype=self.dtype)).squeeze(1)  # (B, N)
        return wav if batched else wav.squeeze(0)
