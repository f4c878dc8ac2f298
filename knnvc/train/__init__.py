"""Vocoder training data: prematched features (``prematch``) from speaker pools (``speakers``), resumable (``store``).

The training loop itself is :mod:`vocoder.train` (which never imports knnvc); ``knnvc train`` drives both.
"""
