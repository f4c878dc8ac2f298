"""Train a kNN-VC HiFi-GAN vocoder on prematched features (see docs/training.md).

Light to import: the heavy pieces load with :func:`train` (``from vocoder.train.trainer import train``).
The on-disk features format is defined in :mod:`vocoder.train.data`. Nothing here imports knnvc, but training
needs transformers (the mel loss's filterbank, :mod:`vocoder.train.losses`), which comes with knnvc's install;
the inference half (``vocoder.Generator``, ``vocoder.load_generator``) needs torch only.
"""

from vocoder.train.config import UPSAMPLE_PRESETS, TrainConfig, split_overrides, vocoder_config_for
from vocoder.train.data import TrainingError

__all__ = ["UPSAMPLE_PRESETS", "TrainConfig", "TrainingError", "split_overrides", "vocoder_config_for"]
