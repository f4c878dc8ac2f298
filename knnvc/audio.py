"""The audio front end: decode, downmix, resample, trim silence, loudness, atomic save.

The currency is a (N,) float32 numpy array at 16 kHz (``SAMPLE_RATE``), never layer-normalised or rescaled:
a 16 kHz mono file comes out of ``load`` bit-identical to ``soundfile.read(path, dtype="float32")``.
Resampling is soxr ("HQ", 20-bit precision); downmixing is the mean of the channels. Silence trimming is
silero-vad (see ``knnvc.vad`` for why it replaces the original's sox VAD). Nothing here touches the models.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import soxr

from knnvc.constants import SAMPLE_RATE
from knnvc.decode import AUDIO_EXTENSIONS as AUDIO_EXTENSIONS  # re-exported: decoding is part of the front end
from knnvc.decode import RESAMPLE_QUALITY, downmix
from knnvc.decode import duration_seconds as duration_seconds
from knnvc.decode import header as header
from knnvc.decode import load as load
from knnvc.decode import native_rate as native_rate
from knnvc.errors import AudioError, OutputError
from knnvc.files import write_atomically, write_error
from knnvc.loudness import PEAK_CEILING as PEAK_CEILING  # re-exported: loudness is part of the front end
from knnvc.loudness import loudness_lufs as loudness_lufs
from knnvc.loudness import normalise_loudness as normalise_loudness
from knnvc.vad import speech_bounds

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
}
"""Output extension -> (libsndfile format, subtype) used by ``save``."""

MAX_CHANNELS = 8  # in-memory arrays: the channel axis is the smaller one and holds at most this many
TRIM_MARGIN_S = 0.1  # s of audio kept before the first and after the last detected speech


def to_mono_16k(audio: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """Convert in-memory audio to (N,) float32 mono at 16 kHz.

    Args:
        audio: numpy array or torch tensor, shape (N,), (C, N) or (N, C). For 2-D input the channel axis is
            the smaller one (the first on a tie) and must hold at most ``MAX_CHANNELS``; leading size-1 axes
            beyond two are dropped. Float samples are taken as they are; integer PCM is scaled to [-1, 1)
            by its type's range (int16 / 32768, uint8 centred on 128).
        sample_rate: the input's rate in Hz (required: arrays carry none).

    Returns:
        (N',) float32, C-contiguous, at 16 kHz; bit-identical to the input when it is already float32 mono
        16 kHz.

    Raises:
        AudioError: empty input, NaN/Inf samples, a shape with no clear channel axis, a non-numeric type.
    """
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive integer in Hz, got {sample_rate!r}")
    array = _pcm_to_float(_to_numpy(audio))
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 1:
        frames = array[:, None]
    elif array.ndim == 2:
        channels_first = array.shape[0] <= array.shape[1]
        if min(array.shape) > MAX_CHANNELS:
            raise AudioError(
                f"cannot tell channels from samples in audio of shape {tuple(array.shape)}; "
                f"pass (N,), (C, N) or (N, C) with at most {MAX_CHANNELS} channels"
            )
        frames = array.T if channels_first else array
    else:
        raise AudioError(f"audio must be (N,), (C, N) or (N, C), got shape {tuple(array.shape)}")
    if frames.size == 0:
        raise AudioError("the audio contains no samples")
    if not np.isfinite(frames).all():
        raise AudioError("the audio contains NaN or infinite samples")
    return resample(downmix(frames), int(sample_rate), SAMPLE_RATE)


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


def save(
    path: str | os.PathLike[str],
    wav: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    source_rate: int = SAMPLE_RATE,
) -> Path:
    """Write (N,) float32 audio at ``source_rate`` to ``path`` at ``sample_rate``, atomically.

    The format follows the extension (see ``OUTPUT_FORMATS``: .wav 16-bit PCM, .flac 24-bit, .ogg Vorbis).
    Samples are resampled (soxr) if the rates differ and clipped to [-1, 1]. The file is encoded in memory,
    written to a hidden ``.<name>.<random>.tmp`` in the same folder, fsynced and renamed over ``path``, so
    ``path`` is never a partial file. Parent folders are created.

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
        sf.write(buffer, data, sample_rate, format=fmt[0], subtype=fmt[1])
        write_atomically(path, buffer.getbuffer())
    except sf.LibsndfileError as exc:
        why = exc.error_string
        raise OutputError(f"cannot encode {path}: {why}; try another output format or sample rate") from exc
    except OSError as exc:
        raise write_error(path, exc) from exc
    logger.debug("wrote %s (%d samples at %d Hz)", path, data.shape[0], sample_rate)
    return path


def audio_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every audio file under ``folder``, recursively, sorted by path.

    Only ``AUDIO_EXTENSIONS`` (case-insensitive) count; hidden files and folders (names starting with '.',
    which includes ``save``'s temporary files) are skipped.

    Raises:
        AudioError: ``folder`` is missing or not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise AudioError(f"{root}: no such folder; check the path")
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found)


def resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """(N,) float32 at ``source_rate`` -> (round(N * target / source),) float32 at ``target_rate``."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    if source_rate == target_rate:
        return np.ascontiguousarray(wav, dtype=np.float32)
    out = soxr.resample(wav, source_rate, target_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def _to_numpy(audio: Any) -> np.ndarray:
    """A numpy array or torch tensor (any device, any float type) as a numpy array."""
    if hasattr(audio, "detach") and hasattr(audio, "cpu"):
        tensor = audio.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return np.asarray(tensor.numpy())
    if isinstance(audio, np.ndarray):
        return audio
    raise AudioError(f"audio must be a numpy array or a torch tensor, got {type(audio).__name__}")


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """Float arrays as they are; integer PCM scaled to [-1, 1) by the range of its type."""
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 4:
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        offset = half if array.dtype.kind == "u" else 0.0
        return ((array.astype(np.float64) - offset) / half).astype(np.float32)
    raise AudioError(f"audio samples must be float or integer PCM, got {array.dtype}")
