"""The prematched training data on disk, and the dataset and sampler that read it.

Layout of a features folder (written by ``knnvc train prematch``, read here; the vocoder never imports knnvc):

``FEATURES_DIR/index.json``
    ``{"format": "knnvc-prematched", "version": 1, "sample_rate": SR, "hop": SR // 50, "feature_dim": D,
    "settings": {...}, "utterances": [{"id", "speaker", "file", "frames"}, ...]}``. ``settings`` records how
    the features were made (k, encoder, ...); ``file`` is relative to the folder.
``FEATURES_DIR/<id>.safetensors``, one per utterance, holding two tensors:
    ``features``: (T, D) float16, prematched WavLM layer-6 frames at 50 Hz;
    ``audio``: (T * hop,) int16 PCM at ``sample_rate`` Hz: the utterance itself, resampled from the
    original file, cut or zero-padded to exactly ``T * hop`` samples so frame ``t`` is samples
    ``[t * hop, (t + 1) * hop)``.
    Its string metadata repeats ``format``, ``version``, ``id``, ``speaker``, ``source``, ``sample_rate``,
    ``hop`` and ``frames``, so the index can be rebuilt from the files alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from vocoder.atomic import write_atomically

FORMAT = "knnvc-prematched"
VERSION = 1
FRAME_RATE = 50  # Hz: WavLM emits one frame per 20 ms whatever the target rate
INDEX_NAME = "index.json"
SUFFIX = ".safetensors"
PCM_SCALE = 32768.0  # int16 full scale


class TrainingError(ValueError):
    """Training input that cannot work: a missing or malformed features folder or file, a config that does
    not fit the data, an unreadable or mismatched training state, an absent device."""


@dataclass(frozen=True)
class Entry:
    """One utterance in the index: ``frames`` feature frames and ``frames * hop`` audio samples."""

    id: str
    speaker: str
    file: str
    frames: int


@dataclass(frozen=True)
class FeatureIndex:
    """The parsed ``index.json`` of a features folder."""

    root: Path
    sample_rate: int
    hop: int
    feature_dim: int
    settings: dict[str, Any]
    entries: tuple[Entry, ...]


def hop_for(sample_rate: int) -> int:
    """Audio samples per 50 Hz feature frame at ``sample_rate`` (320 at 16 kHz, 441 at 22.05 kHz)."""
    if sample_rate <= 0 or sample_rate % FRAME_RATE:
        raise TrainingError(
            f"sample rate {sample_rate} Hz is not a positive multiple of the {FRAME_RATE} Hz frame rate"
        )
    return sample_rate // FRAME_RATE


def write_utterance(
    path: str | os.PathLike[str],
    features: Tensor,
    audio: np.ndarray | Tensor,
    *,
    sample_rate: int,
    metadata: Mapping[str, str],
) -> None:
    """Write one utterance atomically (temporary file, then rename).

    Args:
        features: (T, D) frames at 50 Hz (stored as float16).
        audio: (T * hop,) float samples in [-1, 1] at ``sample_rate`` Hz (stored as int16, clipped).
        metadata: strings stored in the header (id, speaker, source, ...).
    """
    hop = hop_for(sample_rate)
    feats = features.detach().to("cpu", torch.float16).contiguous()
    wav = torch.as_tensor(np.asarray(audio.cpu() if isinstance(audio, Tensor) else audio, dtype=np.float32))
    if feats.ndim != 2 or wav.ndim != 1 or wav.shape[0] != feats.shape[0] * hop:
        raise TrainingError(
            f"{path}: need features (T, D) and audio (T * {hop},), got {tuple(feats.shape)} and {tuple(wav.shape)}"
        )
    pcm = (wav.clamp(-1.0, 1.0) * (PCM_SCALE - 1)).round().to(torch.int16)
    meta = {**metadata, "format": FORMAT, "version": str(VERSION), "sample_rate": str(sample_rate),
            "hop": str(hop), "frames": str(feats.shape[0])}
    write_atomically(path, safetensors_bytes({"features": feats, "audio": pcm.contiguous()}, metadata=meta))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of an utterance file (cheap: the tensors are not read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"{path}: not a readable prematched utterance file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
    return meta


def read_utterance(path: str | os.PathLike[str], start: int = 0, frames: int | None = None) -> tuple[Tensor, Tensor]:
    """Frames ``[start, start + frames)`` of one utterance, read lazily.

    Returns:
        features (F, D) float32 at 50 Hz, and audio (F * hop,) float32 in [-1, 1] at the file's rate.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            hop = int((f.metadata() or {})["hop"])
            feat_slice = f.get_slice("features")
            stop = feat_slice.get_shape()[0] if frames is None else start + frames
            feats = feat_slice[start:stop].float()
            audio = f.get_slice("audio")[start * hop : stop * hop].float() / PCM_SCALE
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise TrainingError(f"{path}: cannot read prematched utterance ({exc})") from exc
    return feats, audio


def write_index(
    root: str | os.PathLike[str],
    entries: Sequence[Entry],
    *,
    sample_rate: int,
    feature_dim: int,
    settings: Mapping[str, Any],
) -> Path:
    """Write ``root/index.json`` atomically, entries sorted by id; returns its path."""
    path = Path(root) / INDEX_NAME
    body = {
        "format": FORMAT, "version": VERSION, "sample_rate": sample_rate, "hop": hop_for(sample_rate),
        "feature_dim": feature_dim, "settings": dict(settings),
        "utterances": [asdict(e) for e in sorted(entries, key=lambda e: e.id)],
    }
    return write_atomically(path, json.dumps(body, indent=1).encode("utf-8"))


def read_index(root: str | os.PathLike[str]) -> FeatureIndex:
    """Parse ``root/index.json``; raises TrainingError naming the problem."""
    root = Path(root)
    path = root / INDEX_NAME
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != FORMAT or int(body.get("version", 0)) > VERSION:
            raise TrainingError(f"{path}: not a {FORMAT} v{VERSION} index")
        entries = tuple(Entry(**{k: u[k] for k in ("id", "speaker", "file", "frames")}) for u in body["utterances"])
        index = FeatureIndex(root, int(body["sample_rate"]), int(body["hop"]), int(body["feature_dim"]),
                             dict(body.get("settings", {})), entries)
    except FileNotFoundError as exc:
        raise TrainingError(f"{root} has no {INDEX_NAME}: run `knnvc train prematch` into it first") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: malformed index ({exc})") from exc
    if index.hop != hop_for(index.sample_rate):
        raise TrainingError(f"{path}: hop {index.hop} does not match {index.sample_rate} Hz at 50 Hz frames")
    return index


class PrematchedDataset(Dataset[tuple[Tensor, Tensor]]):
    """Random aligned segments of prematched utterances.

    Item ``(i, epoch)`` is utterance ``i``'s frames ``[s, s + segment_frames)`` and the matching
    ``segment_frames * hop`` audio samples, with ``s`` drawn from a generator seeded by (seed, epoch, i), so a
    run is reproducible and resumable. Utterances shorter than a segment are zero-padded at the end.
    Returns features (segment_frames, D) float32 and audio (segment_frames * hop,) float32.
    """

    def __init__(self, index: FeatureIndex, entries: Sequence[Entry], segment_frames: int, seed: int = 0) -> None:
        if segment_frames < 1:
            raise TrainingError(f"segment must hold at least one frame, got {segment_frames}")
        self.index = index
        self.entries = list(entries)
        self.segment_frames = segment_frames
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        i, epoch = key
        entry = self.entries[i]
        span = entry.frames - self.segment_frames
        rng = np.random.default_rng([self.seed, epoch, i])
        start = int(rng.integers(0, span + 1)) if span > 0 else 0
        feats, audio = read_utterance(self.index.root / entry.file, start, self.segment_frames)
        missing = self.segment_frames - feats.shape[0]
        if missing > 0:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, missing))
            audio = torch.nn.functional.pad(audio, (0, missing * self.index.hop))
        return feats, audio


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` keys: a (seed, epoch)-seeded permutation, sharded over DDP ranks.

    As ``DistributedSampler``, the permutation is padded by wrapping so every rank gets the same count.
    ``set_epoch(epoch, skip)`` starts the epoch after ``skip`` of this rank's items (to resume mid-epoch).
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.per_rank = -(-size // world_size)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        total = self.per_rank * self.world_size
        order = order.repeat(-(-total // self.size))[:total]
        mine = order[self.rank :: self.world_size].tolist()
        return iter([(int(i), self.epoch) for i in mine[self.skip :]])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)
