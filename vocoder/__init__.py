"""A standalone HiFi-GAN vocoder for kNN-VC features. It never imports knnvc."""

from vocoder.checkpoint import VocoderLoadError, load_generator, save_generator
from vocoder.config import HifiganConfig
from vocoder.model import Generator

__all__ = ["Generator", "HifiganConfig", "VocoderLoadError", "load_generator", "save_generator"]
