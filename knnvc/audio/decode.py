"""Decoding any audio file to mono float32 at a chosen rate, in bounded memory.

libsndfile (soundfile) reads WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF...; what it does not recognise (m4a, aac, mp4,
webm...) goes to FFmpeg through PyAV, whose wheel carries FFmpeg. Both paths decode block by block, average the
channels and resample with soxr as they go. A file neither recognises is an "unsupported format"; one that a
decoder recognises but cannot decode is damaged. In-memory arrays and tensors come to 16 kHz mono
through ``to_mono_16k``; ``audio_files`` lists the audio files of a folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import soxr

from knnvc.errors import AudioError
from knnvc.options import SAMPLE_RATE

if TYPE_CHECKING:
    import av.container
    import torch

logger = logging.getLogger(__name__)

AV_EXTENSIONS = frozenset({".m4a", ".m4b", ".aac", ".mp4", ".webm", ".mka", ".opus", ".wma", ".ac3", ".amr", ".mp3"})
"""Extensions decoded by FFmpeg (those libsndfile also reads go to libsndfile first)."""
RESAMPLE_QUALITY = "HQ"  # soxr: 20-bit precision, linear phase
READ_BLOCK = 1 << 17  # frames decoded at a time by ``load`` (bounds its memory for long files)
MIN_INPUT_RATE = 1_000  # Hz: lower rates in a header are taken as corruption (and would blow up on resampling)
MAX_INPUT_RATE = 1_000_000  # Hz


_FORMATS = sf.available_formats()
_SF_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".oga"}
    | ({".mp3"} if "MP3" in _FORMATS else set())
    | ({".aif", ".aiff"} if "AIFF" in _FORMATS else set())
    | ({".opus"} if "OPUS" in sf.available_subtypes("OGG") else set())
)
_SF_UNRECOGNISED_FORMAT = 1  # libsndfile's SF_ERR_UNRECOGNISED_FORMAT: not a format it knows (try FFmpeg)
AUDIO_EXTENSIONS: frozenset[str] = _SF_EXTENSIONS | AV_EXTENSIONS
"""File extensions (lower case, with the dot) that ``load`` and ``audio_files`` accept."""


def load(path: str | os.PathLike[str], *, sample_rate: int = SAMPLE_RATE, min_samples: int = 1) -> np.ndarray:
    """Decode an audio file to mono at ``sample_rate``, in bounded memory.

    Any libsndfile format and subtype (integer or float), and through PyAV's FFmpeg m4a, aac, mp4, webm,
    opus and the like (``AUDIO_EXTENSIONS``); any channel count (averaged), any rate from
    ``MIN_INPUT_RATE`` to ``MAX_INPUT_RATE`` (soxr). The file is decoded, downmixed and resampled in blocks of
    ``READ_BLOCK`` frames, so the peak memory is about the output array plus a few blocks, however long or
    wide the file (a 1-hour 44.1 kHz stereo file never exists in memory at its own rate).

    Args:
        min_samples: fewest samples (at ``sample_rate``) the caller can use; fewer raises ``AudioError``.

    Returns:
        (N,) float32, C-contiguous, at ``sample_rate`` Hz; bit-identical to a one-shot decode and resample.

    Raises:
        AudioError: missing path, a folder, an unsupported format (neither libsndfile nor FFmpeg reads it),
            unreadable or damaged data, no samples, too few samples, NaN/Inf samples, a sample rate outside
            the accepted range.
    """
    wav, _ = _read(Path(path), sample_rate, min_samples, head=None)
    return wav


def probe(path: str | os.PathLike[str], *, sample_rate: int = SAMPLE_RATE, min_samples: int = 1) -> None:
    """Check, in a moment, that ``load(path, ...)`` would decode the file: its header, then its first block.

    The first ``READ_BLOCK`` frames are decoded as ``load`` decodes them (a file that short is decoded whole, so its
    length is checked against ``min_samples`` too). A command probes its inputs before it loads any model, so that
    a file that is not audio fails in a fraction of a second rather than after the models load; damage further in
    is still found by ``load``.

    Raises:
        AudioError: the same error, word for word, that ``load`` raises for what the probe reads.
    """
    _read(Path(path), sample_rate, min_samples, head=READ_BLOCK)


def _read(path: Path, sample_rate: int, min_samples: int, *, head: int | None) -> tuple[np.ndarray, bool]:
    """``load``'s work on the first ``head`` frames (all with None): (the samples, whether the file ended there)."""
    if not path.exists():
        raise AudioError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file; give a file inside it")
    try:
        rate, frames, blocks = _open(path)
        read = _Head(blocks, head)
        try:
            frames_read, wav = _decode((rate, frames, iter(read)), path, sample_rate)
        finally:
            read.close()
    except (OSError, RuntimeError, ValueError) as exc:
        raise AudioError(f"cannot read {path} ({exc}); check it is an audio file you can read") from exc
    except MemoryError as exc:
        raise AudioError(f"{path} is too long to decode in this machine's memory; split it into parts") from exc
    if frames_read == 0:
        raise AudioError(f"{path} contains no audio samples; record or export it again")
    if read.ended and wav.shape[0] < min_samples:
        raise AudioError(
            f"{path} is too short ({1000 * wav.shape[0] / sample_rate:.1f} ms); "
            f"give at least {1000 * min_samples / sample_rate:g} ms of audio"
        )
    return wav, read.ended


class _Head:
    """The blocks of an opened file up to ``limit`` frames (all of them with None); ``ended`` once the file ran out
    within them. ``close`` closes the file (its generator) when it was not read to the end."""

    def __init__(self, blocks: Iterator[np.ndarray], limit: int | None) -> None:
        self.blocks, self.limit, self.frames, self.ended = blocks, limit, 0, False

    def __iter__(self) -> Iterator[np.ndarray]:
        while self.limit is None or self.frames < self.limit:
            block = next(self.blocks, None)
            if block is None:
                self.ended = True
                return
            self.frames += block.shape[0]
            yield block

    def close(self) -> None:
        close = getattr(self.blocks, "close", None)
        if close is not None:
            close()


def _open(path: Path) -> tuple[int, int, Iterator[np.ndarray]]:
    """(rate Hz, estimated frames, (n, C) float32 blocks): libsndfile first, FFmpeg (PyAV) for the rest.

    A format libsndfile does not recognise goes to FFmpeg; one that neither recognises is "unsupported
    format"; one libsndfile recognises but cannot decode is damaged.
    """
    if path.suffix.lower() in AV_EXTENSIONS - _SF_EXTENSIONS:
        return _av_open(path)
    try:
        file = sf.SoundFile(_native(path))
    except sf.LibsndfileError as exc:
        if exc.code == _SF_UNRECOGNISED_FORMAT:
            return _av_open(_not_sf_format(path))
        raise AudioError(
            f"cannot decode {path} ({exc.error_string.rstrip('.')}); if it is audio, it is damaged: "
            "re-export it as WAV or FLAC"
        ) from exc
    return int(file.samplerate), int(file.frames), _sf_blocks(file, path)


def _sf_blocks(file: sf.SoundFile, path: Path) -> Iterator[np.ndarray]:
    with file:
        try:
            yield from file.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            raise AudioError(f"cannot decode {path} ({exc.error_string.rstrip('.')}); it is damaged: "
                             "re-export it as WAV or FLAC") from exc


def _decode(opened: tuple[int, int, Iterator[np.ndarray]], path: Path, sample_rate: int) -> tuple[int, np.ndarray]:
    """Read the blocks of an opened file: check, downmix, resample. Returns (frames read, (N,) float32)."""
    rate, frames, blocks = opened
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioError(
            f"{path} says its sample rate is {rate} Hz, outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz; "
            "its header is probably corrupt: re-export it"
        )
    logger.debug("decoding %s: about %d frames at %d Hz", path, frames, rate)
    stream = None
    if rate != sample_rate:
        stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    out = _Growable(round(max(frames, 0) * sample_rate / rate) + 1)
    frames_read = 0
    for block in blocks:
        if not np.isfinite(block).all():
            raise AudioError(f"{path} contains NaN or infinite samples; re-export it as PCM WAV or FLAC")
        frames_read += block.shape[0]
        mono = downmix(block)
        out.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        out.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return frames_read, out.array()


class _Growable:
    """A float32 buffer filled by appending blocks: preallocated from an estimate, doubled when it is short."""

    def __init__(self, capacity: int) -> None:
        self.data = np.empty(max(capacity, 1), dtype=np.float32)
        self.size = 0

    def append(self, block: np.ndarray) -> None:
        end = self.size + block.shape[0]
        if end > self.data.shape[0]:
            grown = np.empty(max(end, 2 * self.data.shape[0]), dtype=np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = block
        self.size = end

    def array(self) -> np.ndarray:
        """The samples appended, without the unused tail (copied only when that tail is large)."""
        if self.data.shape[0] - self.size > max(1024, self.size // 64):
            return self.data[: self.size].copy()
        return self.data[: self.size]


def duration_seconds(path: str | os.PathLike[str]) -> float:
    """Duration of an audio file in seconds, read from its header (no decoding). Raises AudioError."""
    return header(path)[1]


def native_rate(path: str | os.PathLike[str]) -> int:
    """The file's own sample rate in Hz, from its header (no decoding); 0 when it cannot be read."""
    try:
        return header(path)[0]
    except AudioError:
        return 0


def header(path: str | os.PathLike[str]) -> tuple[int, float]:
    """(sample rate Hz, duration s) of an audio file from its header, libsndfile or FFmpeg. Raises AudioError."""
    path = Path(path)
    try:
        info = sf.info(_native(path))
    except sf.LibsndfileError as exc:
        if exc.code == _SF_UNRECOGNISED_FORMAT:
            return _av_header(_not_sf_format(path))
        raise AudioError(f"cannot read {path} as audio; check the path and the file") from exc
    except (OSError, RuntimeError) as exc:
        raise AudioError(f"cannot read {path} as audio; check the path and the file") from exc
    return int(info.samplerate), float(info.frames) / float(info.samplerate)


def _native(path: Path) -> str | bytes:
    """The path as libsndfile takes it: bytes on POSIX, so that names which are not valid UTF-8 open too."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def downmix(frames: np.ndarray) -> np.ndarray:
    """(N, C) float -> (N,) float32 by the mean over channels (mono passes through untouched)."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    total = frames[:, 0].astype(np.float64)  # a loop over channels: 10x faster than mean(axis=1) on (N, C)
    for channel in range(1, frames.shape[1]):
        total += frames[:, channel]
    total /= frames.shape[1]
    return total.astype(np.float32)


def unsupported(path: Path, why: str) -> AudioError:
    """The error for a file neither libsndfile nor FFmpeg can read as audio."""
    return AudioError(
        f"cannot decode {path}: unsupported format ({why}); if it is audio, convert it to WAV or FLAC"
    )


def _not_sf_format(path: Path) -> Path:
    """``path``, for FFmpeg to try: libsndfile did not recognise it. A name with one of libsndfile's own
    extensions that it does not recognise is refused here (FFmpeg would guess a format from arbitrary bytes)."""
    if path.suffix.lower() in _SF_EXTENSIONS:
        raise unsupported(path, f"libsndfile does not recognise it as {path.suffix.lower()}")
    return path


def _av_open(path: Path) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open ``path`` with FFmpeg: (sample rate Hz, estimated frames, iterator of (n, C) float32 blocks).

    Raises:
        AudioError: "unsupported format" when FFmpeg finds no decodable audio stream.
    """
    import av

    try:
        container = av.open(str(path), mode="r")
    except (PermissionError, FileNotFoundError, IsADirectoryError, UnicodeError) as exc:
        raise AudioError(f"cannot read {path} ({exc}); check it is an audio file you can read") from exc
    except av.FFmpegError as exc:
        raise unsupported(path, f"FFmpeg cannot open it: {exc.strerror or exc}") from exc
    try:
        rate, seconds = _av_stream_header(container, path)
    except AudioError:
        container.close()
        raise
    return rate, round(seconds * rate), _av_blocks(container, path)


def _av_stream_header(container: av.container.InputContainer, path: Path) -> tuple[int, float]:
    """(rate Hz, duration s) of the container's first audio stream; "unsupported format" when it has none."""
    import av

    streams = container.streams.audio
    if not streams or not streams[0].rate or streams[0].codec_context is None:
        raise unsupported(path, "no audio stream FFmpeg can decode")
    stream = streams[0]
    if stream.duration and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = float(container.duration or 0) / av.time_base
    return int(stream.rate), seconds


def _av_blocks(container: av.container.InputContainer, path: Path) -> Iterator[np.ndarray]:
    """Decoded audio as (n, C) float32 blocks, at the stream's rate; the container is closed at the end."""
    import av

    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield np.ascontiguousarray(out.to_ndarray().T, dtype=np.float32)
        for out in resampler.resample(None):
            yield np.ascontiguousarray(out.to_ndarray().T, dtype=np.float32)
    except av.FFmpegError as exc:
        raise AudioError(f"cannot decode {path} ({exc}); it is damaged: re-export it as WAV or FLAC") from exc
    finally:
        container.close()


def _av_header(path: Path) -> tuple[int, float]:
    """(sample rate Hz, duration s) from an FFmpeg container's header, without decoding. Raises AudioError."""
    import av

    try:
        with av.open(str(path), mode="r") as container:
            return _av_stream_header(container, path)
    except (PermissionError, FileNotFoundError, IsADirectoryError, UnicodeError) as exc:
        raise AudioError(f"cannot read {path} as audio ({exc}); check the path and the file") from exc
    except av.FFmpegError as exc:
        raise unsupported(path, f"FFmpeg cannot open it: {exc.strerror or exc}") from exc


MAX_CHANNELS = 8  # in-memory arrays: the channel axis is the smaller one and holds at most this many


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
