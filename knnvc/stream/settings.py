"""A stream's settings (chunk, lookahead, context, input rate) and what they are measured against: the
encoder's and the vocoder's reach, and the fixed gain taken from the target's speech (a voice, or a pair's target)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import overload

import numpy as np
import torch

from knnvc.audio import loudness
from knnvc.errors import UsageError
from knnvc.options import FRAME_RATE, HOP, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, RECEPTIVE_FIELD, SAMPLE_RATE
from knnvc.pipeline import KnnVC, Target
from knnvc.voice import Pair, Voice
from vocoder import HifiganConfig

log = logging.getLogger(__name__)

FRAME_MS = 1000 // FRAME_RATE  # 20 ms per frame
GAIN_PROBE_FRAMES = 10 * FRAME_RATE  # frames of the voice vocoded to measure the stream's gain (10 s)


class _InFrames:
    """A read-only attribute of ``StreamSettings``: its ``<name>_ms`` setting in whole 20 ms frames (None: 0)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.setting = f"{name}_ms"

    @overload
    def __get__(self, settings: None, owner: type) -> _InFrames: ...
    @overload
    def __get__(self, settings: StreamSettings, owner: type) -> int: ...
    def __get__(self, settings: StreamSettings | None, owner: type) -> int | _InFrames:
        if settings is None:
            return self
        return int(getattr(settings, self.setting) or 0) // FRAME_MS


@dataclass(frozen=True)
class StreamSettings:
    """How a stream trades delay for agreement with offline conversion. Times in ms, whole 20 ms frames.

    Attributes:
        chunk_ms: audio converted per step; a step runs once this much new audio (and the lookahead) has arrived.
        lookahead_ms: future audio the encoder sees beyond the frames it finalises. None: the encoder's
            positional-convolution reach (``encoder_reach``; 1280 ms for WavLM-Large), the least with which a
            frame sees all the future it sees offline. Less is faster and agrees less (``docs/streaming.md``).
        vocoder_lookahead_ms: final frames the vocoder sees beyond those it emits (beyond them it sees the
            provisional lookahead frames).
        context_ms: past audio the encoder sees before the frames it finalises. None: the reach, at least 2 s.
        input_rate: rate of the pushed audio in Hz (resampled to 16 kHz as it streams when not 16 kHz).
    """

    chunk_ms: int = 100
    lookahead_ms: int | None = None
    vocoder_lookahead_ms: int = 0
    context_ms: int | None = None
    input_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        rate = self.input_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise UsageError(f"input rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}")
        for name in ("chunk_ms", "lookahead_ms", "vocoder_lookahead_ms", "context_ms"):
            value = getattr(self, name)
            if value is None and name in ("lookahead_ms", "context_ms"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % FRAME_MS:
                raise UsageError(f"{name.replace('_', '-')} must be a whole multiple of {FRAME_MS} ms, got {value}")
        if self.chunk_ms < FRAME_MS:
            raise UsageError(f"chunk-ms must be at least {FRAME_MS} ms (one frame), got {self.chunk_ms}")

    def resolved(self, reach: int) -> StreamSettings:
        """These settings with ``None`` replaced for an encoder whose positional reach is ``reach`` frames."""
        lookahead = reach * FRAME_MS if self.lookahead_ms is None else self.lookahead_ms
        context = max(2000, reach * FRAME_MS) if self.context_ms is None else self.context_ms
        return replace(self, lookahead_ms=lookahead, context_ms=context)

    chunk = _InFrames()
    lookahead = _InFrames()
    vocoder_lookahead = _InFrames()
    context = _InFrames()

    def describe(self) -> str:
        """One line for people: every setting and the delay they add up to."""
        return (
            f"chunk {self.chunk_ms} ms, lookahead {self.lookahead_ms} ms (vocoder {self.vocoder_lookahead_ms} ms), "
            f"context {self.context_ms} ms: delay {self.delay_ms:.0f} ms + compute"
        )

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay of a chunk's first sample, before compute: chunk + lookaheads + 5 ms."""
        extra = (RECEPTIVE_FIELD - HOP) * 1000 / SAMPLE_RATE
        return self.chunk_ms + (self.lookahead_ms or 0) + self.vocoder_lookahead_ms + extra


def encoder_reach(vc: KnnVC) -> int:
    """Frames of future (and past) audio one WavLM frame depends on through the positional convolution.

    WavLM adds a convolution over ``num_conv_pos_embeddings`` frames (128 for WavLM-Large) to its input
    frames: each frame sees half that many frames on each side, so a frame is only as offline once that
    much future audio has arrived.
    """
    return int(vc.encoder.model.config.num_conv_pos_embeddings) // 2


def voice_gain(vc: KnnVC, voice: Voice, target_lufs: float | None) -> float:
    """The fixed linear gain that brings the voice's own vocoded frames to ``target_lufs`` (1.0 for None).

    Converted speech is made of the voice's frames, so its loudness is the voice's vocoded loudness: the first
    ``GAIN_PROBE_FRAMES`` frames (10 s) are vocoded and measured once, when the stream starts (BS.1770, DC
    removed as ``normalise_loudness`` does), and the gain is lowered if it would put their true peak over the
    -1 dBTP ceiling. A stream has no whole file to normalise, and nothing here depends on audio not yet heard.
    """
    if target_lufs is None:
        return 1.0
    probe = vc.vocode(voice.frames[:GAIN_PROBE_FRAMES].to(vc.device, torch.float32))
    probe = probe - np.float32(probe.mean(dtype=np.float64))
    measured = loudness.loudness_lufs(probe, vc.sample_rate)
    if not np.isfinite(measured):
        return 1.0
    gain = 10.0 ** ((target_lufs - measured) / 20.0)
    peak = float(loudness.true_peak_envelope(probe).max()) * gain
    return float(gain * min(1.0, loudness.PEAK_CEILING / peak)) if peak > 0 else float(gain)


def target_gain(vc: KnnVC, target: Target, target_lufs: float | None) -> float:
    """The stream's fixed gain for ``target``: ``voice_gain`` of the voice, or of a pair's target speech.

    A pair's map puts the source speaker's frames in the target's statistics, so the target's own frames vocoded
    stand for the converted speech: its ``.voice`` file when it was fitted from one and that file is still there,
    else its target recordings (the first 10 s of them that are still there, trimmed as the pair was), encoded
    once. ``UsageError`` when none is left: loudness None needs no probe.
    """
    if target_lufs is None:
        return 1.0
    if isinstance(target, Voice):
        return voice_gain(vc, target, target_lufs)
    return voice_gain(vc, pair_target_speech(vc, target), target_lufs)


def pair_target_speech(vc: KnnVC, pair: Pair) -> Voice:
    """Frames of ``pair``'s target speech for measuring loudness: its ``.voice`` file, else up to 10 s of its target
    recordings that are still on disk, encoded (``UsageError`` when neither is left)."""
    if pair.target_voice and Path(pair.target_voice).is_file():
        return Voice.load(pair.target_voice)
    found: list[str] = []
    seconds = 0.0
    for src in pair.targets:
        if not Path(src.path).is_file():
            log.debug("pair %s: target recording %s is gone; not used for the stream's loudness", pair.label, src.path)
            continue
        found.append(src.path)
        seconds += src.seconds
        if seconds >= GAIN_PROBE_FRAMES / FRAME_RATE:
            break
    if not found:
        raise UsageError(f"pair {pair.label}: none of its target recordings is here to measure the stream's loudness "
                         "from; give loudness None (`--loudness none`) or a fixed gain")  # fmt: skip
    return vc.build_voice(found, trim=pair.trim, name=pair.name)


def vocoder_reach(config: HifiganConfig) -> int:
    """Frames on each side that one HiFi-GAN output sample depends on (its receptive field, rounded up).

    conv_pre (kernel 7) reaches 3 frames; each upsampling stage adds its transposed convolution's reach and its
    residual blocks' (per dilation d: (k - 1) / 2 * (d + 1) samples at that stage's rate); conv_post 3 samples.
    For the published vocoder this is 12 frames (about 11.4): with that much context on both sides a cropped
    window equals the whole-signal output up to float rounding, whatever the weights.
    """
    reach, rate = 3.0, 1
    for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
        reach += math.ceil(k / (2 * u)) / rate
        rate *= u
        blocks = [sum((kk - 1) // 2 * (d + (config.resblock == "1")) for d in dils)
                  for kk, dils in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)]
        reach += max(blocks) / rate
    return math.ceil(reach + 3 / rate)


DEFAULT_STREAM = StreamSettings()
