"""Overlapping windows for long audio, so memory stays flat however long the input is.

A long input is cut into windows of ``core`` frames with ``context`` extra frames on each side. Each window
is computed alone, its context is dropped, and the cores are stitched, so every frame is computed with at
least ``context`` frames of real neighbours around it. Window edges sit on the 20 ms frame grid, so windowed
frames line up exactly with whole-file frames.

- Encoder: WavLM's attention sees the whole window, so frames differ slightly from whole-file encoding; with a
  few seconds of context the difference is small (measured by the benchmark and tested).
- Vocoder: HiFi-GAN is convolutional with a receptive field of about +/-11 frames, so with 25 frames of
  context the windowed waveform equals the whole-file one up to float rounding.

An input no longer than ``core + 2 * context`` frames is a single window: exactly the whole-file result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from knnvc.options import ENCODER_CONTEXT_SECONDS, ENCODER_WINDOW_SECONDS, FRAME_RATE, HOP, RECEPTIVE_FIELD

ENCODER_CORE = round(ENCODER_WINDOW_SECONDS * FRAME_RATE)  # frames kept per encoder window (1500)
ENCODER_CONTEXT = round(ENCODER_CONTEXT_SECONDS * FRAME_RATE)  # frames of context on each side (150)
VOCODER_CORE = 10 * FRAME_RATE  # frames: 10 s of output per vocoder window
VOCODER_CONTEXT = 25  # frames: 0.5 s on each side, over twice HiFi-GAN's receptive field

BUCKET_SLACK = {"cpu": 0.02, "default": 0.25}
"""Padding allowed in a batch, as a share of its longest item: on a CPU padding is paid for in full, so only
(nearly) equal lengths share a batch; a GPU trades some padding for full batches."""


@dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` are computed; frames ``[keep_start, keep_stop)`` are kept (global indices)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    def sample_span(self) -> tuple[int, int]:
        """Samples at 16 kHz whose WavLM frames are exactly ``[start, stop)``."""
        return self.start * HOP, (self.stop - 1) * HOP + RECEPTIVE_FIELD


def split(total: int, core: int, context: int) -> list[Window]:
    """Windows covering frames ``[0, total)``; a single whole window when it fits in ``core + 2 * context``."""
    if core < 1 or context < 0:
        raise ValueError(f"window core must be >= 1 and context >= 0 frames, got {core} and {context}")
    if total <= core + 2 * context:
        return [Window(0, total, 0, total)]
    windows = []
    for keep_start in range(0, total, core):
        keep_stop = min(total, keep_start + core)
        windows.append(Window(max(0, keep_start - context), min(total, keep_stop + context), keep_start, keep_stop))
    return windows


@dataclass(frozen=True)
class Piece:
    """One window of one input of a group: ``item`` indexes the inputs."""

    item: int
    window: Window

    @property
    def frames(self) -> int:
        return self.window.stop - self.window.start


def pieces(totals: Sequence[int], core: int, context: int) -> list[Piece]:
    """Every window of every input (``totals``: frames per input), the unit of cross-file batching."""
    return [Piece(i, w) for i, total in enumerate(totals) for w in split(total, core, context)]


def buckets(lengths: Sequence[int], batch_size: int, slack: float) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of at most ``batch_size``, longest first.

    Within a batch the shortest item is at least ``1 - slack`` of the longest, so padding wastes at most
    ``slack`` of the batch's work (``slack=0``: equal lengths only). Input order is kept among equal lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group and len(group) < batch_size and lengths[i] >= (1 - slack) * lengths[group[0]]:
            group.append(i)
        else:
            groups.append([i])
    return groups
