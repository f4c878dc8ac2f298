"""A standalone HiFi-GAN vocoder for kNN-VC features. It never imports knnvc.

The names below load on first use, so ``import vocoder.atomic`` (the one atomic writer) imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vocoder.checkpoint import (
        UnsafeCheckpointError,
        VocoderLoadError,
        load_generator,
        read_checkpoint,
        save_generator,
    )
    from vocoder.config import HifiganConfig
    from vocoder.model import Generator

_WHERE = {
    "Generator": "vocoder.model",
    "HifiganConfig": "vocoder.config",
    "UnsafeCheckpointError": "vocoder.checkpoint",
    "VocoderLoadError": "vocoder.checkpoint",
    "load_generator": "vocoder.checkpoint",
    "read_checkpoint": "vocoder.checkpoint",
    "save_generator": "vocoder.checkpoint",
}

__all__ = [
    "Generator",
    "HifiganConfig",
    "UnsafeCheckpointError",
    "VocoderLoadError",
    "load_generator",
    "read_checkpoint",
    "save_generator",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vocoder' has no attribute {name!r}")
