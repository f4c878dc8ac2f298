"""Loudness: ITU-R BS.1770-4 integrated loudness of mono audio in bounded memory, and normalisation to a target.

The same measurement as ``pyloudnorm.Meter(rate).integrated_loudness`` (K-weighting from RBJ biquads, 400 ms
blocks with 75 % overlap, -70 LUFS absolute and -10 LU relative gates), but the K-weighting filters run over
chunks with carried filter state and only one energy per 100 ms step is kept. pyloudnorm copies and filters
the whole signal in float64 several times over, about 2 GB for an hour at 16 kHz; this stays at a few MB.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from knnvc.errors import AudioError
from knnvc.options import DEFAULT_LOUDNESS, SAMPLE_RATE

logger = logging.getLogger(__name__)

BLOCK_S = 0.4  # s: gating block
STEP_S = 0.1  # s: block hop (75 % overlap)
ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness
CHUNK = 1 << 18  # samples filtered at a time (about 16 s at 16 kHz)
PEAK_CEILING = 10 ** (-1 / 20)  # -1 dBTP (0.891): true-peak ceiling of the limiter (EBU R128 headroom)
TRUE_PEAK_OVERSAMPLE = 4  # BS.1770-4 Annex 2: true peak measured on the signal oversampled 4x
LIMITER_HOLD_S = 0.005  # s: look-ahead and hold of the limiter on each side of a peak
MAX_LIMITING_DB = 12.0  # dB: deepest gain reduction the limiter may apply to reach the loudness target
LOUDNESS_TOLERANCE = 0.2  # LU: the gain is refined until the output is this close to the target
LIMITER_ROUNDS = 5  # gain corrections at most (each reruns the limiter)

HALF_ROUND_UP = np.float32(1 + 2**-10)  # float16 keeps 11 bits: scaling by this first never rounds a peak down


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
    from scipy.signal import lfilter  # scipy.signal and .ndimage load in ~1 s: when audio is measured, not at start-up

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


@functools.cache
def _interpolator(oversample: int) -> np.ndarray:
    """A Nyquist low-pass FIR at ``oversample`` times the rate: 12 taps a phase, phase 0 the samples themselves."""
    from scipy.signal import firwin

    taps = 12 * oversample + 1  # odd: centred on a sample, so the other phases are the in-between points
    return (firwin(taps, 1.0 / oversample) * oversample).astype(np.float32)


def true_peak_envelope(
    wav: np.ndarray, oversample: int = TRUE_PEAK_OVERSAMPLE, *, offset: float = 0.0
) -> np.ndarray:
    """(N,) float16: for each sample, the largest magnitude of ``wav - offset`` ``oversample`` times oversampled
    between it and the next (BS.1770-4 Annex 2's true peak, per sample); never below the sample's own
    magnitude. Computed chunk by chunk (``offset`` is subtracted per chunk: no copy of the signal). Stored in half
    precision, rounded up (never below the true value, at most 0.01 dB above it): half the memory of the audio."""
    from scipy.signal import upfirdn

    h = _interpolator(oversample)
    half = len(h) // 2
    margin = half // oversample + 1
    data = np.asarray(wav, dtype=np.float32)
    shift = np.float32(offset)
    env = np.empty(len(data), dtype=np.float16)
    for start in range(0, len(data), CHUNK):
        stop = min(len(data), start + CHUNK)
        chunk = np.abs(data[start:stop] - shift)
        lo, hi = max(0, start - margin), min(len(data), stop + margin)
        up = upfirdn(h, data[lo:hi] - shift, oversample)
        for phase in range(1, oversample):
            between = up[half + phase :: oversample][start - lo : stop - lo]
            np.maximum(chunk, np.abs(between), out=chunk)
        env[start:stop] = chunk * HALF_ROUND_UP
    return env


def limit_true_peak(wav: np.ndarray, ceiling: float = PEAK_CEILING, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A look-ahead true-peak limiter: (N,) float32 gains <= 1 that keep ``gains * wav`` under ``ceiling``."""
    return _limiter_gains(true_peak_envelope(wav), 1.0, ceiling, sample_rate)


def _limiter_gains(envelope: np.ndarray, gain: float, ceiling: float, sample_rate: int) -> np.ndarray:
    """Limiter gains for a signal whose true-peak envelope is ``gain * envelope``.

    Where the envelope passes the ceiling, the gain needed there is held over ``LIMITER_HOLD_S`` on each side
    (a sliding minimum) and smoothed by a moving average half as wide, so the gain is at or below the need at
    every sample (the average only spans samples whose minimum covers it) and changes over milliseconds, not
    from one sample to the next. Chunks that stay under the ceiling are skipped.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    hold = max(1, round(LIMITER_HOLD_S * sample_rate))
    margin = 2 * hold + 2  # the two filters' reach
    gains = np.ones(len(envelope), dtype=np.float32)
    for start in range(0, len(envelope), CHUNK):
        stop = min(len(envelope), start + CHUNK)
        lo, hi = max(0, start - margin), min(len(envelope), stop + margin)
        peaks = envelope[lo:hi].astype(np.float64) * gain
        if peaks.max() <= ceiling:
            continue
        need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
        held = minimum_filter1d(need, size=2 * hold + 1, mode="nearest")
        smooth = uniform_filter1d(held, size=hold + 1 - hold % 2, mode="nearest")
        gains[start:stop] = np.minimum(smooth, need)[start - lo : stop - lo]
    return gains


def normalise_loudness(
    wav: np.ndarray,
    target_lufs: float | None = DEFAULT_LOUDNESS,
    sample_rate: int = SAMPLE_RATE,
    *,
    peak_ceiling: float = PEAK_CEILING,
) -> np.ndarray:
    """Scale (N,) audio to ``target_lufs`` integrated loudness, with a true-peak limiter at ``peak_ceiling``.

    Any DC offset is removed first. Then one gain brings the loudness to the target; where that would put the
    true peak (4x oversampled) above ``peak_ceiling`` (default -1 dBTP), the look-ahead limiter
    (``limit_true_peak``) lowers the gain around those peaks only. Limiting lowers the loudness a little, so
    the gain is corrected and the limiter rerun (a few rounds) until the result is within
    ``LOUDNESS_TOLERANCE`` of the target. If the target would need more than ``MAX_LIMITING_DB`` of limiting
    (a signal made of peaks), the limiting stops there, and a warning says which loudness was reached and
    why. Returns the input itself when ``target_lufs`` is None, the audio is empty, or it is silent (loudness
    below BS.1770's -70 LUFS gate). Never produces NaN.

    Returns:
        (N,) float32 at ``sample_rate``; its sample peak never exceeds ``peak_ceiling``.

    Raises:
        AudioError: NaN/Inf samples in the input.
    """
    if target_lufs is None or wav.size == 0:
        return wav
    if not np.isfinite(wav).all():
        raise AudioError("cannot normalise loudness: the audio contains NaN or infinite samples")
    # A DC offset is inaudible and K-weighting ignores it (its high-pass), but it eats the peak headroom (the tiny
    # test vocoder's output is mostly DC): it is removed, chunk by chunk, as the output is made. Memory: the input,
    # its envelope and the output, nothing else of its length (an hour at 16 kHz is 230 MB a copy).
    dc = np.float32(np.mean(wav, dtype=np.float64))
    loudness = loudness_lufs(wav, sample_rate)
    if not np.isfinite(loudness):
        return wav
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    envelope = true_peak_envelope(wav, offset=float(dc))  # once: the envelope of (wav - dc) * gain is gain * it
    peak = max(float(envelope.max()), 1e-12)
    out = np.empty(0, dtype=np.float32)
    for _ in range(LIMITER_ROUNDS):
        capped = 20 * math.log10(gain * peak / peak_ceiling) > MAX_LIMITING_DB
        if capped:  # lower the gain so that the deepest limiting is MAX_LIMITING_DB
            gain = peak_ceiling * 10 ** (MAX_LIMITING_DB / 20) / peak
        del out  # the last round's output, before this round's is made
        out = _limiter_gains(envelope, gain, peak_ceiling, sample_rate)
        for start in range(0, len(out), CHUNK):  # out = gains * (wav - dc) * gain, in place
            part = out[start : start + CHUNK]
            part *= wav[start : start + CHUNK] - dc
            part *= np.float32(gain)
        reached = loudness_lufs(out, sample_rate)
        if abs(reached - target_lufs) <= LOUDNESS_TOLERANCE or (capped and reached < target_lufs):
            break
        gain *= 10.0 ** ((target_lufs - reached) / 20.0)
    if reached < target_lufs - LOUDNESS_TOLERANCE:
        logger.warning(
            "loudness %.1f LUFS, not the %.1f LUFS asked: more would need over %g dB of peak limiting; "
            "ask for a lower loudness target", reached, target_lufs, MAX_LIMITING_DB,
        )
    return np.clip(out, -peak_ceiling, peak_ceiling, out=out)
