"""Vocoder training data: prematched features (``prematch``) from speaker pools (``speakers``), resumable (``store``).

The training loop itself is :mod:`vocoder.train` (which never imports knnvc); ``knnvc train`` drives both.
"""

from knnvc.train.prematch import MAX_POOL_MINUTES, MIN_FRAMES, prematch, prematch_features
from knnvc.train.speakers import Skipped, Utterance, discover, pool_groups
from knnvc.train.store import PrematchReport

__all__ = [
    "MAX_POOL_MINUTES",
    "MIN_FRAMES",
    "PrematchReport",
    "Skipped",
    "Utterance",
    "discover",
    "pool_groups",
    "prematch",
    "prematch_features",
]
