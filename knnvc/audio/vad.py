"""Voice activity detection with silero-vad, used to trim silence from the ends of references.

Why silero and not the original's sox VAD: kNN-VC trimmed references with sox's ``vad`` effect (trigger
level 7), an energy/spectral detector whose trigger depends on the recording's level and noise floor, so the
same sentence recorded quieter or with hiss trims differently, and sox is an extra binary to install. Silero
VAD is a small neural detector that is robust to level and to stationary noise, ships its weights inside its
wheel (it works offline, with no download), runs in milliseconds per second of audio on CPU, and is widely
used and tested. Only the first and last speech timestamps are used: silence in the middle is never cut.

The model is loaded lazily, once per process, and every call runs under a lock: the model carries
recurrent state between chunks, which ``get_speech_timestamps`` resets at the start of each call, so calls
must not interleave. Inference on CPU is deterministic.

Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` as a side effect; we restore the caller's
thread count so that the encoder is not silently slowed down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr

from knnvc.options import SAMPLE_RATE

logger = logging.getLogger(__name__)

VAD_RATE = SAMPLE_RATE  # Hz: silero's native rate (it also takes 8 kHz; anything else is resampled to this)
VAD_THRESHOLD = 0.5  # speech probability above which a 32 ms window counts as speech (silero's default)
MIN_SPEECH_MS = 250  # ms: shorter bursts (clicks, breaths) are not speech (silero's default)

_lock = threading.Lock()
_model: Any = None
_detect: Callable[..., list[dict[str, int]]] | None = None


def _load() -> tuple[Any, Callable[..., list[dict[str, int]]]]:
    """Import silero-vad and load its TorchScript model, once per process (caller holds ``_lock``)."""
    global _model, _detect
    if _model is None or _detect is None:
        import torch

        threads = torch.get_num_threads()
        try:
            from silero_vad import get_speech_timestamps, load_silero_vad

            _model, _detect = load_silero_vad(), get_speech_timestamps
        finally:
            torch.set_num_threads(threads)  # undo silero_vad's import-time torch.set_num_threads(1)
        logger.debug("loaded silero-vad")
    return _model, _detect


def speech_bounds(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[int, int] | None:
    """Find where speech starts and ends.

    Args:
        wav: (N,) float32 mono waveform at ``sample_rate``.
        sample_rate: its rate in Hz.

    Returns:
        ``(start, end)`` sample indices at ``sample_rate`` (``end`` exclusive) spanning the first to the last
        speech segment, with no margin added; ``None`` when no speech is found.
    """
    if wav.size == 0:
        return None
    detect_rate = sample_rate if sample_rate in (8_000, VAD_RATE) else VAD_RATE
    audio = np.ascontiguousarray(wav, dtype=np.float32)
    if detect_rate != sample_rate:
        audio = soxr.resample(audio, sample_rate, detect_rate, quality="HQ").astype(np.float32, copy=False)

    import torch

    with _lock:
        model, detect = _load()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # thousands of tiny steps: extra threads only wait on each other (20x slower)
        try:
            segments = detect(
                torch.from_numpy(audio),
                model,
                threshold=VAD_THRESHOLD,
                sampling_rate=detect_rate,
                min_speech_duration_ms=MIN_SPEECH_MS,
                speech_pad_ms=0,
            )
        finally:
            torch.set_num_threads(threads)
        model.reset_states()
    if not segments:
        return None
    scale = sample_rate / detect_rate
    start = int(np.floor(segments[0]["start"] * scale))
    end = int(np.ceil(segments[-1]["end"] * scale))
    return max(0, start), min(wav.shape[0], end)


TRIM_MARGIN_S = 0.1  # s of audio kept before the first and after the last detected speech


def trim_silence(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading and trailing silence, keeping ``TRIM_MARGIN_S`` around the speech; never the middle.

    Args:
        wav: (N,) float32 mono at ``sample_rate`` Hz.

    Returns:
        (M,) float32 copy at ``sample_rate``, M <= N. EMPTY (M == 0) when silero-vad finds no speech at all:
        the caller decides whether that is an error (a reference with no speech is one).
    """
    bounds = speech_bounds(wav, sample_rate)
    if bounds is None:
        logger.debug("no speech found in %.2f s of audio", wav.shape[0] / sample_rate)
        return np.zeros(0, dtype=np.float32)
    margin = round(TRIM_MARGIN_S * sample_rate)
    start, end = max(0, bounds[0] - margin), min(wav.shape[0], bounds[1] + margin)
    return np.array(wav[start:end], dtype=np.float32, copy=True)
