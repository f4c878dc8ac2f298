"""HiFi-GAN losses: log-mel L1, feature matching, and least-squares GAN losses.

The mel spectrogram is computed in torch (no torchaudio) with transformers' Slaney mel filterbank
(``transformers.audio_utils.mel_filter_bank``), equal to HiFi-GAN's ``librosa.filters.mel(sr, n_fft, n_mels,
fmin, fmax)`` (slaney scale and area normalisation). transformers is a dependency of knnvc, not of the ``vocoder``
package's inference half: ``vocoder.train`` is used with knnvc installed, which brings it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.audio_utils import mel_filter_bank

from vocoder.train.discriminators import FeatureMaps, Scores


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters over the STFT bins of ``n_fft`` at ``sample_rate`` Hz.

    Slaney mel scale and area normalisation, as HiFi-GAN's ``librosa.filters.mel``; ``fmax`` None = sr/2.
    transformers returns (n_fft // 2 + 1, n_mels): transposed here so ``basis @ magnitude`` maps bins to mels.
    """
    basis = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
        max_frequency=sample_rate / 2 if fmax is None else fmax, sampling_rate=sample_rate,
        norm="slaney", mel_scale="slaney",
    )
    return np.ascontiguousarray(basis.T, dtype=np.float32)


class LogMelSpectrogram(nn.Module):
    """HiFi-GAN's loss spectrogram: waveform (B, N) at ``sample_rate`` -> log mel (B, n_mels, N // hop).

    Reflect-pads ``(n_fft - hop) / 2`` on each side, STFT with a Hann window (not centred), magnitude,
    mel filterbank, natural log clamped at 1e-5. Always computed in float32.
    """

    basis: Tensor  # (n_mels, n_fft // 2 + 1)
    window: Tensor  # (win_size,)

    def __init__(
        self, sample_rate: int, n_fft: int, hop: int, win_size: int, n_mels: int = 80,
        fmin: float = 0.0, fmax: float | None = None,
    ) -> None:
        super().__init__()
        if win_size > n_fft:
            raise ValueError(f"mel window {win_size} is longer than n_fft {n_fft}")
        self.n_fft, self.hop, self.win_size = n_fft, hop, win_size
        self.register_buffer("basis", torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)))
        self.register_buffer("window", torch.hann_window(win_size))

    def forward(self, wav: Tensor) -> Tensor:
        """(B, N) or (B, 1, N) -> (B, n_mels, frames) float32."""
        x = wav.float().reshape(wav.shape[0], -1)
        pad = (self.n_fft - self.hop) // 2
        x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(
                x, self.n_fft, hop_length=self.hop, win_length=self.win_size, window=self.window,
                center=False, normalized=False, onesided=True, return_complex=True,
            )
            magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
            return torch.log(torch.clamp(self.basis @ magnitude, min=1e-5))


def mel_loss(mel: LogMelSpectrogram, real: Tensor, fake: Tensor) -> Tensor:
    """Mean absolute difference of the log mel spectrograms of two (B, 1, N) waveforms (a scalar)."""
    return F.l1_loss(mel(fake), mel(real))


def feature_matching_loss(real: FeatureMaps, fake: FeatureMaps) -> Tensor:
    """Sum over discriminators and layers of mean |real - fake| activation, times 2 (as HiFi-GAN).

    The real activations are treated as constants (detached).
    """
    total = torch.zeros((), device=fake[0][0].device)
    for maps_r, maps_g in zip(real, fake, strict=True):
        for r, g in zip(maps_r, maps_g, strict=True):
            total = total + torch.mean(torch.abs(r.detach().float() - g.float()))
    return 2.0 * total


def discriminator_loss(real: Scores, fake: Scores) -> Tensor:
    """Least-squares GAN loss for the discriminators: sum of mean (1 - D(real))^2 + mean D(fake)^2."""
    total = torch.zeros((), device=real[0].device)
    for r, g in zip(real, fake, strict=True):
        total = total + torch.mean((1.0 - r.float()) ** 2) + torch.mean(g.float() ** 2)
    return total


def generator_adversarial_loss(fake: Scores) -> Tensor:
    """Least-squares GAN loss for the generator: sum of mean (1 - D(fake))^2."""
    total = torch.zeros((), device=fake[0].device)
    for g in fake:
        total = total + torch.mean((1.0 - g.float()) ** 2)
    return total
