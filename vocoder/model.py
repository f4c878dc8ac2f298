"""The kNN-VC HiFi-GAN generator: features (B, T, D) at 50 Hz -> waveform (B, 1, T * 320) at 16 kHz.

Module names match the published checkpoint (``lin_pre``, ``conv_pre``, ``ups.N``, ``resblocks.N.convs1.M``
/ ``convs2.M`` or ``convs.M``, ``conv_post``). Every convolution carries weight norm (as a
``torch.nn.utils.parametrizations.weight_norm`` parametrization) until :meth:`Generator.fold_weight_norm`.

Inference precision: :meth:`Generator.cast` casts the network but keeps an fp32 island at the output (the last
convolution and the tanh), where bf16 would quantise the waveform. A padded batch (``lengths``) gives each item
what it gives alone: the padding is zeroed before every convolution, as the convolutions' own zero padding.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

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
Mask = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def _zero_padding(x: Tensor, *, lengths: Tensor, scale: int) -> Tensor:
    """Zero (B, C, L) (or (B, C, 1, L)) activations past each item's ``lengths * scale`` valid steps."""
    steps = torch.arange(x.shape[-1], device=x.device)
    keep = steps[None, :] < (lengths * scale)[:, None]  # (B, L)
    return x * keep.reshape(x.shape[0], *[1] * (x.ndim - 2), x.shape[-1]).to(x.dtype)


def _as_2d(conv: _Conv) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same convolution over (B, C, 1, L) in channels-last layout: kernel (1, k), weights (O, I, 1, k)."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    if not isinstance(conv.padding, tuple):
        raise ValueError(f"only numeric padding converts, got {conv.padding!r}")
    (p,) = conv.padding
    two_d: nn.Conv2d | nn.ConvTranspose2d
    if isinstance(conv, nn.ConvTranspose1d):
        two_d = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, (1, k), (1, s), (0, p),
                                   output_padding=(0, conv.output_padding[0]), groups=conv.groups,
                                   bias=conv.bias is not None, dilation=(1, d))  # fmt: skip
    else:
        two_d = nn.Conv2d(conv.in_channels, conv.out_channels, (1, k), (1, s), (0, p), (1, d), conv.groups,
                          bias=conv.bias is not None)  # fmt: skip
    weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
    two_d.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        two_d.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad)
    return two_d.train(conv.training)


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

    def forward(self, x: Tensor, keep: Mask | None = None) -> Tensor:
        m = keep or _identity
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(m(F.leaky_relu(x, LRELU_SLOPE)))
            xt = c2(m(F.leaky_relu(xt, LRELU_SLOPE)))
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

    def forward(self, x: Tensor, keep: Mask | None = None) -> Tensor:
        m = keep or _identity
        for c in self.convs:
            x = c(m(F.leaky_relu(x, LRELU_SLOPE))) + x
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

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, input_dim) at 50 Hz -> (B, 1, T * hop) at 16 kHz, fp32 (the output island).

        ``lengths`` (B,): valid frames of a right-padded batch; samples past ``lengths * hop`` are meaningless.
        """
        x = self.lin_pre(x.to(self.lin_pre.weight.dtype)).permute(0, 2, 1)  # (B, hidden_dim, T)
        if self.layout_2d:  # (B, hidden_dim, 1, T), channels last
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        scale = 1
        keep = _identity if lengths is None else functools.partial(_zero_padding, lengths=lengths, scale=scale)
        x = self.conv_pre(keep(x))
        for i, (up, rate) in enumerate(zip(self.ups, self.config.upsample_rates, strict=True)):
            x = up(keep(F.leaky_relu(x, LRELU_SLOPE)))
            scale *= rate
            if lengths is not None:
                keep = functools.partial(_zero_padding, lengths=lengths, scale=scale)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, keep)
            for block in blocks[1:]:
                xs = xs + block(x, keep)
            x = xs / self.num_kernels
        x = self.conv_post(keep(F.leaky_relu(x, FINAL_LRELU_SLOPE)).to(self.conv_post.weight.dtype))
        x = torch.tanh(x.float())
        return x.squeeze(2) if self.layout_2d else x

    def cast(self, dtype: torch.dtype) -> Generator:
        """Cast to ``dtype`` in place for inference, keeping ``conv_post`` (and the tanh) fp32; returns ``self``."""
        self.to(dtype)
        self.conv_post.float()
        return self

    def channels_last(self) -> Generator:
        """Run every convolution as the same 2-D convolution over (B, C, 1, L) in channels-last layout.

        The arithmetic is the same (outputs agree to float rounding); oneDNN runs it 1.3-3.4x faster per
        convolution on a CPU than 1-D convolutions (measured on this project's CPU for the published layer
        shapes, bf16 and fp32). For inference after ``fold_weight_norm`` (the state dict then holds 4-D weights);
        in place, idempotent; returns ``self``.
        """
        if not self.is_folded:
            raise ValueError("channels_last needs the folded layout: call fold_weight_norm() first")
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv1d | nn.ConvTranspose1d):
                    setattr(parent, name, _as_2d(child))
        return self

    @property
    def layout_2d(self) -> bool:
        """True after ``channels_last``: the convolutions are 2-D and activations run as (B, C, 1, L)."""
        return isinstance(self.conv_post, nn.Conv2d)

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
