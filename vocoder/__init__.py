"""A standalone HiFi-GAN vocoder for kNN-VC features. It never imports knnvc."""

from vocoder.checkpoint import UnsafeCheckpointError, VocoderLoadError, load_generator, read_checkpoint, save_generator
from vocoder.config import HifiganConfig
from vocoder.model import Generator

__all__ = [
    "Generator",
    "HifiganConfig",
    "UnsafeCheckpointError",
    "VocoderLoadError",
    "load_generator",
    "read_checkpoint",
    "save_generator",
]
