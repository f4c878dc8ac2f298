"""Rebuilding a saved voice's missing match layer from its reference files.

A voice saved before ``--match-layer L`` was asked for holds layer-6 frames only. When its references are still
where they were and unchanged (sha256), the pipeline re-encodes them to layer L once, checks that they give the
same layer-6 frames, and adds the layer-L frames; otherwise ``Voice.keys`` says how to rebuild the voice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from knnvc.errors import VoiceError
from knnvc.files import sha256
from knnvc.voice import Voice

if TYPE_CHECKING:
    from knnvc.builder import VoiceBuilder

log = logging.getLogger(__name__)


def same_frames(a: Tensor, b: Tensor) -> bool:
    """Whether two (M, D) frame sets are the same up to precision: every pair of rows at cosine 0.99 or more."""
    return bool((F.cosine_similarity(a.float(), b.float().to(a.device), dim=-1) >= 0.99).all())


def rebuild_layer(builder: VoiceBuilder, voice: Voice, layer: int) -> Voice:
    """``voice`` with ``layer``'s frames re-encoded from its reference files, or a ``VoiceError`` saying how to
    rebuild it (a compact voice, references made in memory, moved or changed files)."""
    paths = [Path(src.path) for src in voice.sources]
    unchanged = all(p.is_file() for p in paths) and all(
        src.sha256 and sha256(p) == src.sha256 for p, src in zip(paths, voice.sources, strict=True)
    )
    if voice.counts is not None or not paths or not unchanged:
        voice.keys(layer)  # raises the VoiceError that says how to rebuild
    for trim in [voice.trim] if voice.trim is not None else [True, False]:
        rebuilt = builder.build_voice(paths, trim=trim, name=voice.name, match_layer=layer)
        if rebuilt.num_frames == voice.num_frames and same_frames(rebuilt.frames, voice.frames):
            log.warning("voice %s holds no layer-%d frames: rebuilt them from its %d references; save a voice "
                        "with `knnvc voice build --match-layer %d` to skip this", voice.label, layer,
                        len(paths), layer)  # fmt: skip
            return voice.with_layers({layer: rebuilt.match_frames[layer]})
    raise VoiceError(f"voice {voice.label}: its references no longer give the frames it holds; "
                     f"rebuild it with `knnvc voice build REFERENCES --match-layer {layer}`")  # fmt: skip
