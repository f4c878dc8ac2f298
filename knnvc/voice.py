"""What a source converts onto, saved with where it came from: a ``Voice`` (a target speaker's matching set (M, D) at
50 Hz, for kNN-VC and MKL-VC) or a ``Pair`` (a fixed map from one source speaker to one target, for LinearVC).

Saved as one safetensors file: the frames as a tensor and the metadata as JSON in the header, so loading never
unpickles anything. This module does not encode audio; the pipeline builds voices.

A voice always holds layer-6 frames (``frames``: what is averaged and vocoded). For a deeper or shallower match
layer it also holds that layer's frames of the same moments (``match_frames``, tensors ``frames_layer<L>``). A
compact voice (``compact``) holds k-means cluster means in place of frames, with each cluster's size.

A pair is LinearVC's W (``method`` ``linear``: ``x @ W``), or an MKL-VC map fitted on a source speaker's recordings
(``mkl``: ``x @ T + b``, what a stream uses, since a stream has no whole utterance to take statistics from). A pair
fits the source speaker it was built from: other speakers' speech converts, but less well. It is saved as a voice
is: the matrix (and bias) as tensors, the metadata (method, frames used, the files with their sha256, the encoder
and layer) as JSON. The pipeline builds pairs (``KnnVC.build_pair``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from knnvc.errors import UsageError, VoiceError
from knnvc.files import read_tensors, save_tensors
from knnvc.nn import kmeans
from knnvc.nn.linear import AffineMap
from knnvc.options import FRAME_RATE

FORMAT = "knnvc-voice/1"


@dataclass(frozen=True)
class SourceFile:
    """One reference that went into a voice."""

    path: str
    sha256: str
    seconds: float  # speech kept after trimming


@dataclass(frozen=True)
class Voice:
    """A matching set and its provenance.

    Attributes:
        frames: (M, D) layer-``layer`` WavLM frames at 50 Hz, on any device.
        encoder: where the encoder weights came from (hub id or path), for people.
        encoder_fingerprint: hash of the encoder weights, checked before use.
        layer: the WavLM layer the frames come from.
        sources: the reference files, in the order their frames were concatenated.
        name: a short label, used in output file names.
        created: ISO 8601 creation time (UTC).
        match_frames: {layer: (M, D)} frames of other WavLM layers, row i the same moment as ``frames`` row i.
        counts: (M,) frames behind each row of a compact voice (its cluster sizes); None for a full voice.
        trim: whether the references were trimmed (None when unknown), to rebuild the voice from its sources.
    """

    frames: Tensor
    encoder: str
    encoder_fingerprint: str
    layer: int
    sources: tuple[SourceFile, ...] = ()
    name: str = "voice"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    origin: str = field(default="", compare=False, repr=False)  # the file it was loaded from, for messages
    match_frames: Mapping[int, Tensor] = field(default_factory=dict, compare=False, repr=False)
    counts: Tensor | None = field(default=None, compare=False, repr=False)
    trim: bool | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def layers(self) -> tuple[int, ...]:
        """The WavLM layers this voice holds frames of, in order."""
        return tuple(sorted({self.layer, *self.match_frames}))

    @property
    def label(self) -> str:
        """The voice's file, else its name, for messages."""
        return self.origin or repr(self.name)

    def keys(self, layer: int) -> Tensor:
        """(M, D) frames of ``layer`` to search; a ``VoiceError`` saying how to rebuild if this voice lacks it."""
        if layer == self.layer:
            return self.frames
        if layer in self.match_frames:
            return self.match_frames[layer]
        held = ", ".join(str(n) for n in self.layers)
        compact = f" --max-frames {self.num_frames}" if self.counts is not None else ""
        raise VoiceError(
            f"voice {self.label} holds layer {held} frames, not layer {layer}; rebuild it from its references with "
            f"`knnvc voice build REFERENCES --match-layer {layer}{compact} -o {self.origin or 'NAME.voice'}`"
        )

    def with_layers(self, extra: Mapping[int, Tensor]) -> Voice:
        """This voice with more layers' frames (each (M, D), the same moments as ``frames``)."""
        for layer, frames in extra.items():
            if frames.shape[0] != self.num_frames:
                raise ValueError(f"layer {layer} has {frames.shape[0]} frames, the voice {self.num_frames}")
        return replace(self, match_frames={**self.match_frames, **extra})

    def compact(
        self, max_frames: int, *, seed: int = 0, method: kmeans.Method = "auto"
    ) -> tuple[Voice, kmeans.Clustering]:
        """A compact voice of at most ``max_frames`` rows: spherical k-means cluster means, with cluster sizes.

        The frames are clustered on all the layers the voice holds (their unit vectors side by side), so each
        cluster is one set of moments; each layer's rows become its members' mean. A voice already that small
        comes back unchanged (with a clustering of one frame per cluster).
        """
        if max_frames < 1:
            raise UsageError(f"max_frames must be at least 1, got {max_frames}")
        if self.counts is not None:
            raise UsageError(f"voice {self.label} is already compact; build a compact voice from the full voice")
        if self.num_frames <= max_frames:
            every = torch.arange(self.num_frames)
            return self, kmeans.Clustering(every, self.num_frames, "none", 0.0)
        stacked = torch.cat([F.normalize(self.keys(n).float(), dim=-1) for n in self.layers], dim=-1)
        clustering = kmeans.spherical_kmeans(stacked, max_frames, seed=seed, method=method)
        frames = kmeans.cluster_means(self.frames, clustering)
        extra = {n: kmeans.cluster_means(f, clustering) for n, f in self.match_frames.items()}
        voice = replace(self, frames=frames, match_frames=extra, counts=kmeans.cluster_sizes(clustering))
        return voice, clustering

    @property
    def seconds(self) -> float:
        """Seconds of speech behind the matching set (frames, or a compact voice's cluster sizes, / 50 Hz)."""
        frames = self.num_frames if self.counts is None else int(self.counts.sum())
        return frames / FRAME_RATE

    def metadata(self) -> dict[str, Any]:
        """Everything but the frames, JSON-able."""
        meta = {
            "format": FORMAT,
            "name": self.name,
            "encoder": self.encoder,
            "encoder_fingerprint": self.encoder_fingerprint,
            "layer": self.layer,
            "match_layers": [n for n in self.layers if n != self.layer],
            "frames": self.num_frames,
            "dim": int(self.frames.shape[1]),
            "speech_seconds": round(self.seconds, 3),
            "compact": self.counts is not None,
            "created": self.created,
            "sources": [asdict(s) for s in self.sources],
        }
        if self.trim is not None:
            meta["trim"] = self.trim
        return meta

    def tensors(self) -> dict[str, Tensor]:
        """What ``save`` writes: ``frames``, ``frames_layer<L>`` per extra layer, ``counts`` when compact."""
        out = {"frames": self.frames}
        out.update({f"frames_layer{n}": f for n, f in self.match_frames.items()})
        if self.counts is not None:
            out["counts"] = self.counts
        return {name: t.detach().to("cpu").contiguous() for name, t in out.items()}

    def check_neighbours(self, k: int) -> None:
        """Raise ``UsageError`` when the matching set has fewer than ``k`` frames to average."""
        if self.num_frames < k:
            raise UsageError(
                f"voice {self.origin or repr(self.name)} has {self.num_frames} frames ({self.seconds:.2f} s of "
                f"speech), too few for k={k}; lower k or give more reference speech"
            )

    def check_compatible(self, encoder_fingerprint: str, layer: int, encoder_name: str = "") -> None:
        """Raise ``VoiceError`` unless this voice was built with the same encoder weights and layer."""
        if self.layer != layer:
            raise VoiceError(
                f"voice {self.label} holds layer-{self.layer} features, this encoder gives "
                f"layer {layer}; rebuild it with `knnvc voice build`"
            )
        if self.encoder_fingerprint != encoder_fingerprint:
            raise VoiceError(
                f"voice {self.origin or repr(self.name)} was built with encoder {self.encoder} "
                f"(weights {self.encoder_fingerprint}), "
                f"not the loaded {encoder_name or 'encoder'} (weights {encoder_fingerprint}); rebuild it with "
                "`knnvc voice build` or load the same WavLM weights"
            )

    def save(self, path: str | Path) -> Path:
        """Write the voice atomically as safetensors (a temporary file renamed into place); returns the path.

        Raises:
            OutputError: the file cannot be written (``DiskFullError`` when the disk is full); no partial or
                temporary file is left behind.
        """
        return save_tensors(Path(path), self.tensors(), "knnvc", self.metadata(), "voice")

    @classmethod
    def load(cls, path: str | Path) -> Voice:
        """Read a voice written by ``save``; raise ``VoiceError`` (one line, naming ``path``) for anything else."""
        path = Path(path)
        if path.is_dir():
            raise VoiceError(f"{path} is a folder, not a voice file; give a NAME.voice file")
        if not path.is_file():
            raise VoiceError(f"{path}: no such voice file; check the path or build it with `knnvc voice build`")
        rebuild = "rebuild it with `knnvc voice build`"
        meta, tensors = read_tensors(path, "knnvc", "voice", VoiceError, rebuild)
        if meta.get("format") != FORMAT or "frames" not in tensors:
            found = meta.get("format")
            raise VoiceError(f"{path}: not a knnvc voice file (format {found!r}, expected {FORMAT!r}); {rebuild}")
        try:
            voice = cls(
                frames=tensors["frames"],
                encoder=str(meta["encoder"]),
                encoder_fingerprint=str(meta["encoder_fingerprint"]),
                layer=int(meta["layer"]),
                sources=tuple(SourceFile(**s) for s in meta["sources"]),
                name=str(meta["name"]),
                created=str(meta["created"]),
                origin=str(path),
                match_frames={int(n): tensors[f"frames_layer{n}"] for n in meta.get("match_layers", [])},
                counts=tensors.get("counts"),
                trim=meta.get("trim"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceError(f"{path}: damaged voice metadata ({exc!r}); {rebuild}") from exc
        for frames in (voice.frames, *voice.match_frames.values()):
            _check_frames(path, frames, meta.get("dim"), voice.num_frames)
        if voice.counts is not None and tuple(voice.counts.shape) != (voice.num_frames,):
            raise VoiceError(f"{path}: damaged compact voice (cluster sizes do not match its frames); {rebuild}")
        return voice


def _check_frames(path: Path, frames: Tensor, dim: object, rows: int) -> None:
    """A voice's frames must be a non-empty (M, D) float matrix of finite values, D as its metadata says."""
    if frames.ndim != 2 or frames.shape[0] == 0 or frames.shape[0] != rows or not frames.is_floating_point():
        raise VoiceError(
            f"{path}: damaged voice (frames of shape {tuple(frames.shape)}, {frames.dtype}); "
            "rebuild it with `knnvc voice build`"
        )
    if dim is not None and frames.shape[1] != dim:
        raise VoiceError(f"{path}: damaged voice ({frames.shape[1]}-d frames, metadata says {dim}); rebuild it")
    if not bool(frames.isfinite().all()):
        raise VoiceError(f"{path}: damaged voice (NaN or infinite frames); rebuild it with `knnvc voice build`")


PAIR_FORMAT = "knnvc-pair/1"
PAIR_METHODS = ("linear", "mkl")
PAIR_REBUILD = "rebuild it with `knnvc pair build`"


@dataclass(frozen=True)
class Pair:
    """A source-speaker-to-target-speaker map and its provenance.

    Attributes:
        matrix: (D, D) the map, applied to row vectors: ``x @ matrix`` (float32 for LinearVC, float64 for MKL).
        bias: (D,) added after the matrix, or None (LinearVC has none).
        method: ``linear`` (LinearVC) or ``mkl`` (MKL-VC fitted on the source speaker's recordings).
        encoder: where the encoder weights came from (hub id or path), for people.
        encoder_fingerprint: hash of the encoder weights, checked before use.
        layer: the WavLM layer the map works on (6).
        sources: the source speaker's files, in the order their frames were stacked.
        targets: the target's files (a voice's references when built from a voice).
        source_frames: source frames the fit used (LinearVC keeps at most 8,192 when not parallel).
        target_frames: target frames the fit used.
        parallel: fitted on parallel utterances (paired by file name).
        lasso: the lasso's alpha, or None for least squares (LinearVC only).
        mkl_block: K, for an MKL pair.
        target_voice: the ``.voice`` file the target came from, or "".
        trim: whether the recordings were trimmed of silence.
        name: a short label, used in output file names.
        created: ISO 8601 creation time (UTC).
    """

    matrix: Tensor
    bias: Tensor | None
    method: str
    encoder: str
    encoder_fingerprint: str
    layer: int
    sources: tuple[SourceFile, ...] = ()
    targets: tuple[SourceFile, ...] = ()
    source_frames: int = 0
    target_frames: int = 0
    parallel: bool = False
    lasso: float | None = None
    mkl_block: int | None = None
    target_voice: str = ""
    trim: bool = True
    name: str = "pair"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    origin: str = field(default="", compare=False, repr=False)  # the file it was loaded from, for messages

    def __post_init__(self) -> None:
        if self.method not in PAIR_METHODS:
            raise ValueError(f"a pair's method is {' or '.join(PAIR_METHODS)}, got {self.method!r}")
        width = self.matrix.shape[-1]
        if self.matrix.ndim != 2 or self.matrix.shape[0] != width:
            raise ValueError(f"a pair's matrix is (D, D), got {tuple(self.matrix.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (width,):
            raise ValueError(f"a pair's bias is ({width},), got {tuple(self.bias.shape)}")

    @property
    def dim(self) -> int:
        """D, the feature width the map works on."""
        return int(self.matrix.shape[0])

    @property
    def label(self) -> str:
        """The pair's file, else its name, for messages."""
        return self.origin or repr(self.name)

    @property
    def map(self) -> AffineMap:
        """The map as an ``AffineMap`` (a zero bias for LinearVC)."""
        bias = self.bias if self.bias is not None else torch.zeros(self.dim, dtype=self.matrix.dtype)
        return AffineMap(self.matrix, bias)  # LinearVC: x @ W + 0, the same float32 sum as x @ W

    def apply(self, frames: Tensor) -> Tensor:
        """(T, D) layer-``layer`` frames at 50 Hz -> (T, D) in the target's voice, in the frames' dtype and device."""
        if frames.shape[-1] != self.dim:
            raise ValueError(f"pair {self.label} maps {self.dim}-d frames, got {frames.shape[-1]}-d")
        return self.map(frames)

    def check_compatible(self, encoder_fingerprint: str, layer: int, encoder_name: str = "") -> None:
        """Raise ``VoiceError`` unless this pair was fitted on the same encoder weights and layer."""
        if self.layer != layer:
            raise VoiceError(f"pair {self.label} maps layer-{self.layer} features, this encoder gives layer {layer}; "
                             f"{PAIR_REBUILD}")  # fmt: skip
        if self.encoder_fingerprint != encoder_fingerprint:
            raise VoiceError(
                f"pair {self.label} was fitted with encoder {self.encoder} (weights {self.encoder_fingerprint}), "
                f"not the loaded {encoder_name or 'encoder'} (weights {encoder_fingerprint}); {PAIR_REBUILD} or load "
                "the same WavLM weights"
            )

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-able."""
        return {
            "format": PAIR_FORMAT,
            "name": self.name,
            "method": self.method,
            "encoder": self.encoder,
            "encoder_fingerprint": self.encoder_fingerprint,
            "layer": self.layer,
            "dim": self.dim,
            "parallel": self.parallel,
            "lasso": self.lasso,
            "mkl_block": self.mkl_block,
            "source_frames": self.source_frames,
            "target_frames": self.target_frames,
            "target_voice": self.target_voice,
            "trim": self.trim,
            "created": self.created,
            "sources": [asdict(s) for s in self.sources],
            "targets": [asdict(s) for s in self.targets],
        }

    def save(self, path: str | Path) -> Path:
        """Write the pair atomically as safetensors; returns the path.

        Raises:
            OutputError: the file cannot be written (``DiskFullError`` when the disk is full); nothing is left.
        """
        tensors = {"matrix": self.matrix} if self.bias is None else {"matrix": self.matrix, "bias": self.bias}
        return save_tensors(Path(path), tensors, "knnvc", self.metadata(), "pair")

    @classmethod
    def load(cls, path: str | Path) -> Pair:
        """Read a pair written by ``save``; raise ``VoiceError`` (one line, naming ``path``) for anything else."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a pair file" if path.is_dir() else "no such pair file"
            raise VoiceError(f"{path}: {what}; give a NAME.pair file made by `knnvc pair build`")
        meta, tensors = read_tensors(path, "knnvc", "pair", VoiceError, PAIR_REBUILD)
        if meta.get("format") != PAIR_FORMAT or "matrix" not in tensors:
            found = meta.get("format")
            raise VoiceError(f"{path}: not a knnvc pair file (format {found!r}, expected {PAIR_FORMAT!r}); "
                             f"{PAIR_REBUILD}")  # fmt: skip
        try:
            pair = cls(
                matrix=tensors["matrix"],
                bias=tensors.get("bias"),
                method=str(meta["method"]),
                encoder=str(meta["encoder"]),
                encoder_fingerprint=str(meta["encoder_fingerprint"]),
                layer=int(meta["layer"]),
                sources=tuple(SourceFile(**s) for s in meta["sources"]),
                targets=tuple(SourceFile(**s) for s in meta["targets"]),
                source_frames=int(meta["source_frames"]),
                target_frames=int(meta["target_frames"]),
                parallel=bool(meta["parallel"]),
                lasso=None if meta.get("lasso") is None else float(meta["lasso"]),
                mkl_block=None if meta.get("mkl_block") is None else int(meta["mkl_block"]),
                target_voice=str(meta.get("target_voice", "")),
                trim=bool(meta.get("trim", True)),
                name=str(meta["name"]),
                created=str(meta["created"]),
                origin=str(path),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceError(f"{path}: damaged pair ({exc}); {PAIR_REBUILD}") from exc
        tensors_ok = all(t.is_floating_point() and bool(t.isfinite().all()) for t in (pair.matrix, pair.map.bias))
        if not tensors_ok or pair.dim != meta.get("dim", pair.dim):
            raise VoiceError(f"{path}: damaged pair (a {pair.matrix.dtype} {tuple(pair.matrix.shape)} matrix, metadata "
                             f"dim {meta.get('dim')}, or values not finite); {PAIR_REBUILD}")  # fmt: skip
        return pair
