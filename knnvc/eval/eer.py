"""Equal error rate of verification trials, and the trial list kNN-VC's kind of evaluation uses.

A trial pairs two utterances and carries a score (cosine of speaker embeddings; higher means "same speaker").
Genuine trials pair two real utterances of the target; converted trials pair a real target utterance with a
converted one claiming to be the target. The EER is the error rate at the threshold where the share of genuine
trials rejected equals the share of converted trials accepted: 0 % when the verifier always tells converted
speech from the real speaker, 50 % when it cannot tell them apart at all (higher is better for a converter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knnvc.errors import UsageError


@dataclass(frozen=True)
class Trials:
    """Scores with labels: 1 for a genuine (target, target) trial, 0 for a (target, converted) trial."""

    scores: np.ndarray  # (N,) float64
    labels: np.ndarray  # (N,) int8

    @property
    def genuine(self) -> np.ndarray:
        return self.scores[self.labels == 1]

    @property
    def converted(self) -> np.ndarray:
        return self.scores[self.labels == 0]

    @staticmethod
    def join(parts: Sequence[Trials]) -> Trials:
        """Pool the trials of several targets into one list."""
        if not parts:
            return Trials(np.zeros(0), np.zeros(0, np.int8))
        return Trials(np.concatenate([p.scores for p in parts]), np.concatenate([p.labels for p in parts]))


def target_trials(references: np.ndarray, converted: np.ndarray) -> Trials:
    """Every trial for one target speaker.

    Args:
        references: (R, D) unit speaker embeddings of the target's real utterances.
        converted: (C, D) unit embeddings of the files converted into the target's voice.

    Returns:
        R(R-1)/2 genuine trials (each unordered pair of distinct real utterances) and R*C converted trials (each
        real utterance against each converted file).
    """
    if references.ndim != 2 or converted.ndim != 2:
        raise UsageError("speaker embeddings must be (N, D) arrays")
    gram = references @ references.T
    upper = np.triu_indices(len(references), k=1)
    genuine = gram[upper].astype(np.float64)
    spoof = (references @ converted.T).reshape(-1).astype(np.float64)
    labels = np.concatenate([np.ones(len(genuine), np.int8), np.zeros(len(spoof), np.int8)])
    return Trials(np.concatenate([genuine, spoof]), labels)


def equal_error_rate(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> tuple[float, float]:
    """The EER of scored trials, and the threshold where it holds.

    A trial is accepted when its score is at least the threshold. The false-rejection rate (genuine trials
    below the threshold) and false-acceptance rate (other trials at or above it) are evaluated at every
    distinct score; the EER is where the two curves cross, linearly interpolated between the two neighbouring
    thresholds when they cross between steps.

    Args:
        scores: (N,) trial scores, higher meaning more alike.
        labels: (N,) 1 for genuine (same-speaker) trials, 0 for the others.

    Returns:
        (eer, threshold): eer as a fraction in [0, 1].

    Raises:
        UsageError: no genuine or no other trials, or scores and labels of different lengths or with NaN.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise UsageError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise UsageError("trial scores must be finite")
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0 or positives + negatives != y.size:
        raise UsageError("an EER needs both genuine (label 1) and other (label 0) trials, and no other labels")
    thresholds = np.concatenate([np.unique(s), [np.inf]])
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    frr = np.searchsorted(pos, thresholds, side="left") / positives  # genuine below the threshold
    far = 1.0 - np.searchsorted(neg, thresholds, side="left") / negatives  # others at or above it
    i = int(np.argmax(frr >= far))  # first threshold where rejection has caught up with acceptance
    if i == 0 or frr[i] == far[i]:
        return float((frr[i] + far[i]) / 2), float(thresholds[i])
    # the curves cross between thresholds i-1 and i: interpolate along the step
    d_prev, d_here = far[i - 1] - frr[i - 1], frr[i] - far[i]
    w = d_prev / (d_prev + d_here)
    rate = frr[i - 1] + w * (frr[i] - frr[i - 1])
    hi = thresholds[i] if np.isfinite(thresholds[i]) else thresholds[i - 1]
    return float(rate), float(thresholds[i - 1] + w * (hi - thresholds[i - 1]))
