"""Loudness: ITU-R BS.1770-4 integrated loudness of mono audio in bounded memory, and normalisation to a target.

The same measurement as ``pyloudnorm.Meter(rate).integrated_loudness`` (K-weighting from RBJ biquads, 400 ms
blocks with 75 % overlap, -70 LUFS absolute and -10 LU relative gates), but the K-weighting filters run over
chunks with carried filter state and only one energy per 100 ms step is kept. pyloudnorm copies and filters
the whole signal in float64 several times over, about 2 GB for an hour at 16 kHz; this stays at a few MB.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.signal import lfilter

from knnvc.constants import DEFAULT_LOUDNESS, SAMPLE_RATE
from knnvc.errors import AudioError

logger = logging.getLogger(__name__)

BLOCK_S = 0.4  # s: gating block
STEP_S = 0.1  # s: block hop (75 % overlap)
ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness
CHUNK = 1 << 18  # samples filtered at a time (about 16 s at 16 kHz)
PEAK_CEILING = 10 ** (-1 / 20)  # -1 dBFS (0.891): sample-peak guard after loudness gain (EBU R128 headroom)


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ cookbook high-shelf or high-pass biquad, normalised so a[0] == 1."""
    amp = 10 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * fc / rate
    alpha = math.sin(w0) / (2.0 * q)
    cos = math.cos(w0)
    if kind == "high_shelf":
        root = 2 * math.sqrt(amp) * alpha
        b = [amp * ((amp + 1) + (amp - 1) * cos + root), -2 * amp * ((amp - 1) + (amp + 1) * cos),
             amp * ((amp + 1) + (amp - 1) * cos - root)]  # fmt: skip
        a = [(amp + 1) - (amp - 1) * cos + root, 2 * ((amp - 1) - (amp + 1) * cos), (amp + 1) - (amp - 1) * cos - root]
    else:
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """BS.1770's two K-weighting stages (head shelf, then high-pass) as (b, a) pairs at ``rate`` Hz."""
    return [_biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0, rate), _biquad("high_pass", 0.0, 0.5, 38.0, rate)]


def _prefix_at(wav: np.ndarray, rate: int, positions: np.ndarray) -> np.ndarray:
    """Sum of squared K-weighted samples before each of the sorted sample ``positions`` (0..N).

    Filters chunk by chunk with carried state; memory is one chunk plus one value per position.
    """
    filters = k_weighting(rate)
    states = [np.zeros(len(a) - 1) for _, a in filters]
    out = np.zeros(len(positions))
    total = 0.0
    for start in range(0, len(wav), CHUNK):
        y = np.asarray(wav[start : start + CHUNK], dtype=np.float64)
        for i, (b, a) in enumerate(filters):
            y, states[i] = lfilter(b, a, y, zi=states[i])
        csum = total + np.cumsum(y * y)
        inside = (positions > start) & (positions <= start + len(y))
        out[inside] = csum[positions[inside] - start - 1]
        total = float(csum[-1])
    return out


def integrated_loudness(wav: np.ndarray, rate: int) -> float:
    """Gated integrated loudness of (N,) audio in LUFS; -inf for silence. Needs at least 0.4 s of samples."""
    n = len(wav)
    if n < BLOCK_S * rate:
        raise ValueError(f"loudness needs at least {BLOCK_S} s of audio, got {n / rate:.3f} s")
    blocks = int(np.round((n / rate - BLOCK_S) / STEP_S)) + 1
    j = np.arange(blocks)
    # Block bounds exactly as pyloudnorm computes them (int truncation of float seconds * rate).
    lower = np.array([int(BLOCK_S * (i * STEP_S / BLOCK_S) * rate) for i in j], dtype=np.int64).clip(0, n)
    upper = np.array([int(BLOCK_S * (i * STEP_S / BLOCK_S + 1) * rate) for i in j], dtype=np.int64).clip(0, n)
    positions, inverse = np.unique(np.concatenate([lower, upper]), return_inverse=True)
    prefix = _prefix_at(wav, rate, positions)
    z = (prefix[inverse[blocks:]] - prefix[inverse[:blocks]]) / (BLOCK_S * rate)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    gated = block_lufs > ABSOLUTE_GATE
    if not gated.any():
        return float("-inf")
    relative = -0.691 + 10.0 * np.log10(z[gated].mean()) + RELATIVE_GATE
    gated &= block_lufs > relative
    if not gated.any():
        return float("-inf")
    return float(-0.691 + 10.0 * np.log10(z[gated].mean()))


def loudness_lufs(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Integrated loudness (ITU-R BS.1770, as pyloudnorm) of (N,) audio in LUFS; ``-inf`` for silence/empty.

    Measured in bounded memory. Audio shorter than one 0.4 s gating block is measured
    tiled (repeated) to that length.
    """
    if wav.size == 0:
        return float("-inf")
    data = wav
    block = int(np.ceil(BLOCK_S * sample_rate)) + 1
    if data.shape[0] < block:
        data = np.tile(data, -(-block // data.shape[0]))
    return integrated_loudness(data, sample_rate)


def loudness_gain(
    wav: np.ndarray, target_lufs: float, sample_rate: int = SAMPLE_RATE, *, peak_ceiling: float = PEAK_CEILING
) -> float:
    """The one linear gain ``normalise_loudness`` applies to (N,) audio: to ``target_lufs``, lowered so the
    sample peak stays at or under ``peak_ceiling``; 1.0 for empty or silent audio (below the -70 LUFS gate)."""
    if wav.size == 0:
        return 1.0
    measured = loudness_lufs(wav, sample_rate)
    if not np.isfinite(measured):
        return 1.0
    gain = 10.0 ** ((target_lufs - measured) / 20.0)
    peak = float(np.max(np.abs(wav))) * gain
    if peak > peak_ceiling:
        logger.debug("loudness gain %.1f dB limited by the peak guard", 20 * np.log10(gain))
        gain *= peak_ceiling / peak
    return float(gain)


def normalise_loudness(
    wav: np.ndarray,
    target_lufs: float | None = DEFAULT_LOUDNESS,
    sample_rate: int = SAMPLE_RATE,
    *,
    peak_ceiling: float = PEAK_CEILING,
) -> np.ndarray:
    """Scale (N,) audio to ``target_lufs`` integrated loudness, then guard the peak.

    One gain for the whole signal (no compression): if reaching the target would put the sample peak above
    ``peak_ceiling`` (default -1 dBFS), the gain is lowered so the peak equals it and the result is quieter
    than the target. Returns the input itself when ``target_lufs`` is None, the audio is empty, or it is
    silent (loudness below BS.1770's -70 LUFS gate). Never produces NaN.

    Returns:
        (N,) float32 at ``sample_rate``.

    Raises:
        AudioError: NaN/Inf samples in the input.
    """
    if target_lufs is None or wav.size == 0:
        return wav
    if not np.isfinite(wav).all():
        raise AudioError("cannot normalise loudness: the audio contains NaN or infinite samples")
    gain = loudness_gain(wav, target_lufs, sample_rate, peak_ceiling=peak_ceiling)
    if gain == 1.0:  # silent (or already there): the input itself
        return wav
    return np.multiply(wav, np.float32(gain), dtype=np.float32)
