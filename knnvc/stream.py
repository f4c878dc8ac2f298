"""Streaming conversion: audio in chunks of any size, converted audio out as it goes, with a stated delay.

    >>> from knnvc.stream import Streamer
    >>> s = Streamer(vc, voice)                        # vc: a KnnVC; voice: a Voice
    >>> for chunk in microphone():                     # (n,) float32 at 16 kHz, any n
    ...     play(s.push(chunk))                        # converted samples ready so far (maybe none)
    >>> play(s.flush())                                # the tail: output length == input length

Output sample n is the conversion of input sample n; the delay is in time, never inserted as silence. The stream
is a state machine over the pipeline's own stages (``vc.encoder``, ``vc.match``, ``vc.vocoder``), run on frames of
20 ms:

- **Encoder.** Each step encodes one window: ``context`` frames already final on the left (bounded left context),
  the ``chunk`` new frames, and ``lookahead`` frames on the right. The new frames are kept (final); the lookahead
  frames are provisional and are encoded again, with more right context, next step. WavLM's conv stack is
  frame-local, so its output is cached per frame and only the transformer re-runs over the window. The lookahead
  defaults to the reach of WavLM's positional convolution (``encoder_reach``): a frame then sees all the future
  it sees offline.
- **Matcher.** kNN regression of each final frame onto the voice, exactly as offline (frame by frame).
- **Vocoder.** HiFi-GAN runs over its whole receptive field (``vocoder_reach``, 12 frames) of final matched frames
  on the left, so the left seam is exact, then the frames to emit, ``vocoder_lookahead`` further final frames, and
  provisional lookahead frames up to its reach on the right; the emitted frames are cropped out, and faded over
  20 ms from the previous window's provisional continuation, so a late change of a lookahead frame cannot click.
- **Loudness.** One fixed gain, measured once from the voice itself (its frames vocoded, then BS.1770 loudness
  to the target under a -1 dBTP true-peak guard): a stream has no whole file to normalise.

The delay is ``chunk + lookahead + vocoder_lookahead`` (plus 5 ms: WavLM's first frame needs 25 ms of audio)
plus the compute time of one step. ``bench/stream.py`` measures it, and the agreement of the kNN choices with
offline conversion, per setting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import overload

import numpy as np
import soxr
import torch
from torch import Tensor

from knnvc import loudness
from knnvc.constants import FRAME_RATE, HOP, RECEPTIVE_FIELD, SAMPLE_RATE
from knnvc.encoder import num_frames, split_layers
from knnvc.errors import AudioError, UsageError
from knnvc.options import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, ConvertOptions
from knnvc.pipeline import DEFAULT_OPTIONS, KnnVC
from knnvc.voice import Voice
from knnvc.windows import Window
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


def future_fill(hidden: Tensor, frames: int) -> Tensor:
    """(T, D) frontend frames followed by ``frames`` copies of their mean: a stand-in for audio not heard yet.

    On the tiny test model at 120 ms lookahead this lifts the share of frames with offline's 4 neighbours from
    5 % (zeros) to 29 % (repeating the last frame: 21 %, reflecting: 19 %); see docs/streaming.md.
    """
    if frames <= 0:
        return hidden
    return torch.cat([hidden, hidden.mean(0, keepdim=True).expand(frames, -1)])


DEFAULT_STREAM = StreamSettings()


class Streamer:
    """Converts a live stream chunk by chunk, keeping the encoder's left context and the vocoder's context.

    Args:
        vc: the pipeline (its encoder, matcher and vocoder are used as they are).
        voice: the target voice (checked against the encoder).
        options: every control (k, match layer, weighting, morph, strength) as offline; loudness as a fixed gain
            from the voice (``voice_gain``); the output rate.
        settings: chunk, lookahead and context; see ``StreamSettings``.
        gain: a linear output gain instead of the one measured from the voice.
        record: keep every final encoder frame in ``features`` (for measuring agreement with offline).
        cache_frontend: compute WavLM's per-frame conv stack once per frame and re-run only its transformer over
            the context (default: whenever the conv stack is frame-local, as in WavLM-Large); False re-encodes
            the whole window each step. Both give the same frames; ``bench/stream.py`` measures the speed.

    ``push(chunk)`` takes (n,) float32 audio at ``input_rate`` and returns the converted samples ready so far at
    ``output_rate``; ``flush()`` returns the rest. Together they are as long as the input (in time).
    """

    def __init__(
        self,
        vc: KnnVC,
        voice: Voice,
        options: ConvertOptions = DEFAULT_OPTIONS,
        settings: StreamSettings = DEFAULT_STREAM,
        *,
        gain: float | None = None,
        record: bool = False,
        cache_frontend: bool | None = None,
    ) -> None:
        voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
        if voice.num_frames < options.k:
            raise UsageError(f"voice {voice.name!r} has {voice.num_frames} frames, fewer than k={options.k}")
        self.vc, self.voice, self.options = vc, voice, options
        self.reach = encoder_reach(vc)
        self.settings = settings.resolved(self.reach)
        self.input_rate = input_rate = settings.input_rate
        self.output_rate = vc.output_rate(options)
        self.hop_out = int(vc.vocoder.config.hop)
        self.vocoder_reach = vocoder_reach(vc.vocoder.config)
        self.gain = voice_gain(vc, voice, options.loudness) if gain is None else gain
        self.features: list[Tensor] | None = [] if record else None
        self.layers = tuple(sorted({vc.encoder.layer, options.match_layer}))  # layer 6, and the one searched
        vc.check_depth(self.layers)
        self._resample_in = soxr.ResampleStream(input_rate, SAMPLE_RATE, 1) if input_rate != SAMPLE_RATE else None
        self._resample_out = (
            soxr.ResampleStream(vc.sample_rate, self.output_rate, 1) if self.output_rate != vc.sample_rate else None
        )
        self._audio = np.zeros(0, np.float32)  # input at 16 kHz from sample ``_audio_start`` on
        self._audio_start = 0
        self._received = 0  # samples pushed, at ``input_rate``
        self._emitted = 0  # samples returned, at ``output_rate``
        self._matched = torch.zeros(0, vc.encoder.dim)  # final matched frames from frame ``_matched_start``
        self._matched_start = 0
        self._final = 0  # frames final (encoded with their lookahead) and matched
        self._done = 0  # frames vocoded and returned
        self._closed = False
        self._tail = np.zeros(0, np.float32)  # the last vocoder window's output just past its seam
        local = vc.encoder.frame_local_frontend
        if cache_frontend and not local:
            raise UsageError("this encoder's conv stack normalises over time: its frames cannot be cached")
        self.cache_frontend = local if cache_frontend is None else cache_frontend
        self._hidden = torch.zeros(0, vc.encoder.dim, device=vc.device, dtype=vc.encoder.dtype)  # frontend frames
        self._hidden_start = 0

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay of the stream before compute (see ``StreamSettings.delay_ms``)."""
        return self.settings.delay_ms

    # -- input -----------------------------------------------------------------------------------------
    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add (n,) audio at ``input_rate``; return the converted samples now ready, (m,) float32, m >= 0."""
        if self._closed:
            raise UsageError("this stream was flushed; start a new Streamer")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if not np.isfinite(chunk).all():
            raise AudioError("the stream got NaN or infinite samples")
        self._received += len(chunk)
        if self._resample_in is not None:
            chunk = self._resample_in.resample_chunk(chunk).astype(np.float32, copy=False)
        self._audio = np.concatenate([self._audio, chunk])
        s = self.settings
        pieces = []
        # A step needs its chunk's frames plus both lookaheads in full frames.
        # Windows depend on frame counts only, never on how the input was cut into pushes.
        while self._available() >= (end := self._done + s.chunk + s.vocoder_lookahead + s.lookahead):
            pieces.append(self._step(self._done + s.chunk, end=end))
        return self._output(pieces, last=False)

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Convert an iterable of (n,) float32 chunks at ``input_rate``: the converted (m,) chunks as they are
        ready, then the tail; together exactly as long as the input, at ``output_rate``."""
        for chunk in chunks:
            out = self.push(chunk)
            if len(out):
                yield out
        yield self.flush()

    def flush(self) -> np.ndarray:
        """End of input: convert what is left and pad the < 25 ms remainder, so output length == input length."""
        if self._closed:
            raise UsageError("this stream was flushed already")
        if self._resample_in is not None:
            tail = self._resample_in.resample_chunk(np.zeros(0, np.float32), last=True)
            self._audio = np.concatenate([self._audio, tail.astype(np.float32, copy=False)])
        self._closed = True
        pieces = []
        total = self._available()
        if total > self._done:
            pieces.append(self._step(total, end=total))
        return self._output(pieces, last=True)

    def _available(self) -> int:
        """Frames whose samples have all arrived."""
        return num_frames(self._audio_start + len(self._audio))

    # -- one step --------------------------------------------------------------------------------------
    def _step(self, emit_stop: int, end: int) -> np.ndarray:
        """Finalise frames up to ``emit_stop + vocoder_lookahead``, encode to ``end``, vocode ``[done, emit_stop)``.

        Returns the vocoder's (samples,) float32 for frames ``[done, emit_stop)`` at the vocoder's rate, gained.
        """
        s = self.settings
        final_stop = min(end, emit_stop + s.vocoder_lookahead)
        window = Window(max(0, self._final - s.context), end, self._final, final_stop)
        feats = self._encode(window)
        keep = feats[window.keep_start - window.start : window.keep_stop - window.start]
        if self.features is not None:  # the frames the search runs on
            self.features.append(split_layers(keep, self.layers)[self.options.match_layer].cpu())
        query = split_layers(feats[window.keep_start - window.start :], self.layers)
        matched = self.vc.match(query, self.voice, self.options).cpu()
        final, provisional = matched[: len(keep)], matched[len(keep) :]
        self._matched = torch.cat([self._matched, final])
        self._final = final_stop
        left = max(0, self._done - self.vocoder_reach)
        right = self.vocoder_reach - (final_stop - emit_stop)
        frames = torch.cat([self._matched[left - self._matched_start :], provisional[: max(0, right)]])
        wav = self._vocode(frames)
        lo = (self._done - left) * self.hop_out
        hi = lo + (emit_stop - self._done) * self.hop_out
        out = self._crossfade(wav[lo:hi].copy())
        self._tail = wav[hi : hi + self.hop_out]  # how this window continued past the seam (provisional frames)
        self._done = emit_stop
        self._forget()
        return out * np.float32(self.gain)

    def _crossfade(self, out: np.ndarray) -> np.ndarray:
        """Fade over one frame (20 ms) from the last step's provisional continuation into ``out``.

        The last step vocoded the frames past its seam from provisional (lookahead) features; this step has their
        final ones. Where they differ the two waveforms differ at the seam, and a cut would click: the fade removes
        the jump at no cost in delay. Where they agree (most frames) it changes nothing.
        """
        n = min(len(self._tail), len(out))
        if n:
            ramp = (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).astype(np.float32)
            out[:n] = self._tail[:n] * (1 - ramp) + out[:n] * ramp
        return out

    def _encode(self, window: Window) -> Tensor:
        """(T, D) fp32 features of ``window``'s frames, from its samples (on the pipeline's device).

        When the lookahead is shorter than the encoder's reach and more input is still to come, the frames the
        window cannot see yet are stood in for by the window's mean frontend frame (``future_fill``): WavLM's
        positional convolution then sees typical speech there instead of zeros. Offline the end of the input is
        zeros, and so it is at ``flush``.
        """
        encoder = self.vc.encoder
        if self.cache_frontend:
            have = self._hidden_start + len(self._hidden)
            if window.stop > have:  # the conv stack runs once per frame: only on frames not seen yet
                fresh = encoder.frontend(self._samples(Window(have, window.stop, have, window.stop)))
                self._hidden = torch.cat([self._hidden, fresh])
            first = window.start - self._hidden_start
            hidden = self._hidden[first : first + window.stop - window.start]
        else:
            hidden = encoder.frontend(self._samples(window))
        unseen = 0 if self._closed else self.reach - (window.stop - window.keep_stop)
        return encoder.contextualise(future_fill(hidden, unseen), self.layers)[: len(hidden)].float()

    def _samples(self, window: Window) -> Tensor:
        """The (N,) samples whose WavLM frames are exactly ``window``'s, on the pipeline's device."""
        lo, hi = window.sample_span()
        wav = np.ascontiguousarray(self._audio[lo - self._audio_start : hi - self._audio_start])
        return torch.from_numpy(wav).to(self.vc.device)

    @torch.inference_mode()
    def _vocode(self, frames: Tensor) -> np.ndarray:
        """(T, D) matched frames -> (T * hop,) float32 at the vocoder's rate."""
        wav = self.vc.vocoder(frames[None].to(self.vc.device, self.vc.dtype))
        return wav.reshape(-1).float().cpu().numpy()

    def _forget(self) -> None:
        """Drop audio and frames no later step needs: memory stays flat however long the stream runs."""
        first_frame = max(0, self._final - self.settings.context)
        drop = first_frame * HOP - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start += drop
        if first_frame > self._hidden_start:
            self._hidden = self._hidden[first_frame - self._hidden_start :]
            self._hidden_start = first_frame
        keep_from = max(0, self._done - self.vocoder_reach)
        if keep_from > self._matched_start:
            self._matched = self._matched[keep_from - self._matched_start :]
            self._matched_start = keep_from

    # -- output ----------------------------------------------------------------------------------------
    def _output(self, pieces: list[np.ndarray], *, last: bool) -> np.ndarray:
        """Join the steps' audio, pad the tail at the end, resample to ``output_rate``; exact total length."""
        wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if last:  # the < 25 ms tail whole frames do not cover is silence, as offline
            covered = self._done * self.hop_out
            want = round((self._audio_start + len(self._audio)) * self.vc.sample_rate / SAMPLE_RATE)
            wav = np.concatenate([wav, np.zeros(max(0, want - covered), np.float32)])
        if self._resample_out is not None:
            wav = self._resample_out.resample_chunk(wav, last=last).astype(np.float32, copy=False)
        if last:  # the input's length in time, at the output rate
            expected = round(self._received * self.output_rate / self.input_rate)
            wav = np.pad(wav, (0, max(0, expected - self._emitted - len(wav))))[: max(0, expected - self._emitted)]
        self._emitted += len(wav)
        return wav
