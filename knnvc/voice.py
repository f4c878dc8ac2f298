"""The ``Voice`` type: a target speaker's matching set (M, D) at 50 Hz, with where it came from.

Saved as one safetensors file: the frames as a tensor and the metadata as JSON in the header, so loading never
unpickles anything. This module does not encode audio; the pipeline builds voices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from knnvc.constants import FRAME_RATE
from knnvc.errors import VoiceError
from knnvc.files import write_atomically, write_error

FORMAT = "knnvc-voice/1"
VOICE_SUFFIX = ".voice"


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
    """

    frames: Tensor
    encoder: str
    encoder_fingerprint: str
    layer: int
    sources: tuple[SourceFile, ...] = ()
    name: str = "voice"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    origin: str = field(default="", compare=False, repr=False)  # the file it was loaded from, for messages

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seconds(self) -> float:
        """Seconds of speech in the matching set (frames / 50 Hz)."""
        return self.num_frames / FRAME_RATE

    def metadata(self) -> dict[str, Any]:
        """Everything but the frames, JSON-able."""
        return {
            "format": FORMAT,
            "name": self.name,
            "encoder": self.encoder,
            "encoder_fingerprint": self.encoder_fingerprint,
            "layer": self.layer,
            "frames": self.num_frames,
            "dim": int(self.frames.shape[1]),
            "speech_seconds": round(self.seconds, 3),
            "created": self.created,
            "sources": [asdict(s) for s in self.sources],
        }

    def check_compatible(self, encoder_fingerprint: str, layer: int, encoder_name: str = "") -> None:
        """Raise ``VoiceError`` unless this voice was built with the same encoder weights and layer."""
        if self.layer != layer:
            raise VoiceError(
                f"voice {self.origin or repr(self.name)} holds layer-{self.layer} features, this encoder gives "
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
        path = Path(path)
        meta = {"knnvc": json.dumps(self.metadata())}
        data = safetensors_bytes({"frames": self.frames.detach().to("cpu").contiguous()}, metadata=meta)
        try:
            write_atomically(path, data)
        except OSError as exc:
            raise write_error(path, exc, "write voice") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> Voice:
        """Read a voice written by ``save``; raise ``VoiceError`` (one line, naming ``path``) for anything else."""
        path = Path(path)
        if path.is_dir():
            raise VoiceError(f"{path} is a folder, not a voice file; give a NAME.voice file")
        if not path.is_file():
            raise VoiceError(f"{path}: no such voice file; check the path or build it with `knnvc voice build`")
        rebuild = "rebuild it with `knnvc voice build`"
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["knnvc"])
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise VoiceError(f"{path}: not a knnvc voice file, or a damaged one ({exc}); {rebuild}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "frames" not in tensors:
            found = meta.get("format") if isinstance(meta, dict) else None
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceError(f"{path}: damaged voice metadata ({exc!r}); {rebuild}") from exc
        _check_frames(path, voice.frames, meta.get("dim"))
        return voice


def _check_frames(path: Path, frames: Tensor, dim: object) -> None:
    """A voice's frames must be a non-empty (M, D) float matrix of finite values, D as its metadata says."""
    if frames.ndim != 2 or frames.shape[0] == 0 or not frames.is_floating_point():
        raise VoiceError(
            f"{path}: damaged voice (frames of shape {tuple(frames.shape)}, {frames.dtype}); "
            "rebuild it with `knnvc voice build`"
        )
    if dim is not None and frames.shape[1] != dim:
        raise VoiceError(f"{path}: damaged voice ({frames.shape[1]}-d frames, metadata says {dim}); rebuild it")
    if not bool(frames.isfinite().all()):
        raise VoiceError(f"{path}: damaged voice (NaN or infinite frames); rebuild it with `knnvc voice build`")
