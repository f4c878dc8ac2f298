"""``ConvertOptions``: every control of one conversion, carried from any front end down to the matcher.

The CLI, the Python API, the batch runner, the stream, the web page and the cluster job all build one of these and
pass it explicitly; the pipeline reads it. Values are checked when it is made, so a bad value is a ``UsageError``
before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from knnvc.constants import DEFAULT_K, DEFAULT_LOUDNESS
from knnvc.errors import UsageError

MIN_SAMPLE_RATE = 8_000  # Hz: the lowest output rate offered
MAX_SAMPLE_RATE = 192_000  # Hz: the highest output rate offered
MIN_LOUDNESS = -70.0  # LUFS: BS.1770's absolute gate; quieter targets are silence
MAX_LOUDNESS = 0.0  # LUFS


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert: the same for every file of a batch.

    Attributes:
        k: neighbours averaged per source frame (the paper's 4).
        loudness: output loudness in LUFS (ITU-R BS.1770), or None to keep the vocoder's level.
        trim: trim silence from both ends of each reference when a voice is built from audio.
        output_sample_rate: rate of the result in Hz (soxr), or None for the vocoder's (16 kHz when published).
    """

    k: int = DEFAULT_K
    loudness: float | None = DEFAULT_LOUDNESS
    trim: bool = True
    output_sample_rate: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UsageError(f"k must be at least 1 (neighbours averaged per frame, a whole number), got {self.k}")
        if self.loudness is not None and not MIN_LOUDNESS <= self.loudness <= MAX_LOUDNESS:
            limits = f"{MIN_LOUDNESS:g} to {MAX_LOUDNESS:g} LUFS"
            raise UsageError(f"loudness must be {limits}, or None; got {self.loudness}")
        rate = self.output_sample_rate
        if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise UsageError(f"output sample rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}")
