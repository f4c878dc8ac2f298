"""The ``Voice`` type: a target speaker's matching set (M, D) at 50 Hz, with where it came from.

Saved as one safetensors file: the frames as a tensor and the metadata as JSON in the header, so loading never
unpickles anything. This module does not encode audio; the pipeline builds voices.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from knnvc.constants import FRAME_RATE
from knnvc.errors import OutputError, VoiceError

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
            raise VoiceError(f"voice {self.name!r} holds layer-{self.layer} features; this encoder gives layer {layer}")
        if self.encoder_fingerprint != encoder_fingerprint:
            raise VoiceError(
                f"voice {self.name!r} was built with encoder {self.encoder} (weights {self.encoder_fingerprint}), "
                f"not the loaded {encoder_name or 'encoder'} (weights {encoder_fingerprint}); rebuild it with "
                "`knnvc voice build` or load the same WavLM weights"
            )

    def save(self, path: str | Path) -> Path:
        """Write the voice atomically as safetensors; returns the path."""
        path = Path(path)
        meta = {"knnvc": json.dumps(self.metadata())}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                save_file({"frames": self.frames.detach().to("cpu").contiguous()}, tmp, metadata=meta)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write voice: {exc.strerror or exc}") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> Voice:
        """Read a voice written by ``save``; raise ``VoiceError`` for anything else."""
        path = Path(path)
        if not path.is_file():
            raise VoiceError(f"{path}: no such voice file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["knnvc"])
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise VoiceError(f"{path}: not a knnvc voice file ({exc})") from exc
        if meta.get("format") != FORMAT or "frames" not in tensors:
            raise VoiceError(f"{path}: not a knnvc voice file (format {meta.get('format')!r})")
        return cls(
            frames=tensors["frames"],
            encoder=meta["encoder"],
            encoder_fingerprint=meta["encoder_fingerprint"],
            layer=int(meta["layer"]),
            sources=tuple(SourceFile(**s) for s in meta["sources"]),
            name=meta["name"],
            created=meta["created"],
        )
