"""Writing audio out: any output format (WAV, FLAC, Ogg), at any rate, atomically.

Samples are resampled (soxr, ``knnvc.audio.decode.resample``) when the rates differ and clipped to [-1, 1]; the
file is encoded in memory and written through the one atomic writer, so a reader never sees a partial file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

from knnvc.audio.decode import resample
from knnvc.errors import OutputError
from knnvc.files import write_error
from knnvc.options import SAMPLE_RATE
from vocoder.atomic import write_atomically

logger = logging.getLogger(__name__)

OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
}
"""Output extension -> (libsndfile format, subtype) used by ``save``."""


def save(
    path: str | os.PathLike[str],
    wav: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    source_rate: int = SAMPLE_RATE,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write (N,) float32 audio at ``source_rate`` to ``path`` at ``sample_rate``, atomically.

    The format follows the extension (see ``OUTPUT_FORMATS``: .wav 16-bit PCM, .flac 24-bit, .ogg Vorbis).
    Samples are resampled (soxr) if the rates differ and clipped to [-1, 1]. The file is encoded in memory,
    written to a hidden ``.<name>.<random>.tmp`` in the same folder, fsynced and renamed over ``path``, so
    ``path`` is never a partial file. Parent folders are created. ``tags`` (libsndfile's strings: ``comment``,
    ``title``...) go into the file's own metadata (WAV, FLAC and Ogg all carry them).

    Returns:
        The path written.

    Raises:
        OutputError: unsupported extension, bad audio, or any failure to write (permission, full disk...);
            no temporary file is left behind.
    """
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot write {path}: unsupported extension; use one of {', '.join(OUTPUT_FORMATS)}")
    if sample_rate <= 0 or source_rate <= 0:
        raise OutputError(f"cannot write {path}: sample rates must be positive ({source_rate} -> {sample_rate})")
    data = np.asarray(wav, dtype=np.float32)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise OutputError(f"cannot write {path}: the audio must be 1-D with finite samples")
    data = np.clip(resample(data, source_rate, sample_rate), -1.0, 1.0)
    buffer = io.BytesIO()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails before encoding
        if tags:
            with sf.SoundFile(buffer, "w", sample_rate, 1, format=fmt[0], subtype=fmt[1]) as out:
                for name, text in tags.items():
                    setattr(out, name, text)
                out.write(data)
        else:
            sf.write(buffer, data, sample_rate, format=fmt[0], subtype=fmt[1])
        write_atomically(path, buffer.getbuffer())
    except sf.LibsndfileError as exc:
        why = exc.error_string
        raise OutputError(f"cannot encode {path}: {why}; try another output format or sample rate") from exc
    except OSError as exc:
        raise write_error(path, exc) from exc
    logger.debug("wrote %s (%d samples at %d Hz)", path, data.shape[0], sample_rate)
    return path
