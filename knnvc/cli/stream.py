"""``knnvc stream``: raw PCM on stdin -> converted PCM on stdout (``knnvc live``, in ``live.py``, shares its options).

    arecord -f S16_LE -r 16000 -c 1 | knnvc stream alice.voice | aplay -f S16_LE -r 16000
    ffmpeg -i in.mp3 -f s16le -ac 1 -ar 16000 - | knnvc stream alice.voice | ffmpeg -f s16le -ar 16000 -i - out.wav

stdout carries only audio: logs, the ready line and errors go to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.controls import MatchLayerOpt, MorphOpt, MorphWeightOpt, StrengthOpt, WeightingOpt, controls
from knnvc.errors import UsageError
from knnvc.options import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM, SAMPLE_RATE, WAVLM_LAYER

if TYPE_CHECKING:
    import numpy as np

    from knnvc.stream.streamer import Streamer

ReferenceArg = Annotated[Path, typer.Argument(help="Target speech: a file, a folder, or a saved .voice file.")]
KOpt = Annotated[int, typer.Option("--k", help="Nearest neighbours averaged per frame.")]
LoudnessOpt = Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")]
ChunkOpt = Annotated[int, typer.Option("--chunk-ms", help="Audio converted per step (multiple of 20 ms).")]
LookaheadOpt = Annotated[
    int | None,
    typer.Option(
        "--lookahead-ms",
        help="Future audio the encoder waits for: less is faster, and agrees less with offline conversion.",
        show_default="its positional reach, 1280 ms for WavLM-Large",
    ),
]
ContextOpt = Annotated[
    int | None,
    typer.Option("--context-ms", help="Past audio the encoder re-reads.",
                 show_default="2000, or the encoder's reach if longer"),  # fmt: skip
]
VocoderLookaheadOpt = Annotated[
    int, typer.Option("--vocoder-lookahead-ms", help="Final frames the vocoder waits for past each chunk.")
]


StreamLoader = Callable[[Path, int, int], "Streamer"]
"""``load(reference, input_rate, output_rate)``: the models (cached), the voice and any morph voice."""


def streaming(
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    vocoder: common.VocoderOpt = DEFAULT_VOCODER,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    offline: common.OfflineOpt = False,
    k: KOpt = DEFAULT_K,
    trim: common.TrimOpt = True,
    loudness: LoudnessOpt = "-16",
    strength: StrengthOpt = 1.0,
    match_layer: MatchLayerOpt = WAVLM_LAYER,
    knn_weighting: WeightingOpt = "uniform",
    morph: MorphOpt = None,
    morph_weight: MorphWeightOpt = None,
    chunk_ms: ChunkOpt = 100,
    lookahead_ms: LookaheadOpt = None,
    vocoder_lookahead_ms: VocoderLookaheadOpt = 0,
    context_ms: ContextOpt = None,
) -> StreamLoader:
    """The options ``knnvc stream`` and ``knnvc live`` share (``common.takes``), as the function that checks them
    and loads the ``Streamer``."""

    def load(reference: Path, input_rate: int, output_rate: int) -> Streamer:
        from knnvc.cli.controls import with_morph_voice
        from knnvc.options import ConvertOptions, Models, PipelineSettings
        from knnvc.pipeline import KnnVC
        from knnvc.stream.settings import StreamSettings
        from knnvc.stream.streamer import Streamer
        from knnvc.voice import Voice

        options = ConvertOptions(k=k, loudness=common.parse_loudness(loudness), trim=trim,
                                 output_sample_rate=output_rate,
                                 **controls(strength, match_layer, knn_weighting, morph, morph_weight))  # fmt: skip
        settings = StreamSettings(chunk_ms, lookahead_ms, vocoder_lookahead_ms, context_ms, input_rate)
        models = Models(wavlm, vocoder, PipelineSettings(device, precision, batch_size=1), offline or None)
        vc = KnnVC.from_pretrained(models, match_layer=options.match_layer)
        vc.load_vocoder()  # before the first chunk: a stream cannot wait for it
        options = with_morph_voice(vc, options, morph)
        voice = vc.voice_from(reference, trim=options.trim, match_layer=options.match_layer)
        if not isinstance(voice, Voice):
            raise UsageError(f"{reference}: a stream converts onto a voice or references")
        return Streamer(vc, voice, options, settings)

    return load


def _check_rate(name: str, rate: int) -> None:
    from knnvc.options import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UsageError(f"{name} must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}")


def to_pcm16(wav: np.ndarray) -> bytes:
    """(n,) float32 in [-1, 1] -> n little-endian signed 16-bit samples (clipped)."""
    import numpy as np

    return bytes((np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())


@app.command()
@common.takes(streaming)
def stream(
    reference: ReferenceArg,
    streaming: StreamLoader,
    input_rate: Annotated[int, typer.Option("--input-rate", help="Rate of the PCM on stdin, Hz.")] = SAMPLE_RATE,
    output_rate: Annotated[int, typer.Option("--output-rate", help="Rate of the PCM on stdout, Hz.")] = SAMPLE_RATE,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Convert raw s16le mono PCM from stdin into REFERENCE's voice on stdout, chunk by chunk, as it arrives.

    Output sample n is input sample n converted (the delay is in time, not inserted silence); at the end of the
    input the tail is flushed, so the output is exactly as long as the input. --loudness is a fixed gain, measured
    from the voice before the first chunk.
    """
    with common.session(verbose, quiet):
        _check_rate("--input-rate", input_rate)
        streamer = streaming(reference, input_rate, output_rate)
        if not quiet:
            common.say("streaming:", "green", streamer.settings.describe())
        pump(streamer, sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno(), streamer.settings.chunk_ms)


def pump(streamer: Streamer, fd_in: int, fd_out: int, chunk_ms: int) -> None:
    """Read s16le from ``fd_in`` as it comes, push whole samples, write converted s16le to ``fd_out`` at once.

    Stops at end of input (flushing the tail) or when the reader of ``fd_out`` goes away.
    """
    import numpy as np

    block = 2 * max(1, streamer.input_rate * chunk_ms // 1000)  # bytes of one chunk
    pending = b""
    try:
        while data := os.read(fd_in, block):
            pending += data
            whole = len(pending) // 2 * 2
            samples = np.frombuffer(pending[:whole], dtype="<i2").astype(np.float32) / 32768.0
            pending = pending[whole:]
            _write(fd_out, to_pcm16(streamer.push(samples)))
        _write(fd_out, to_pcm16(streamer.flush()))
    except BrokenPipeError:
        common.say("stopped:", "yellow", "the reader of stdout went away")


def _write(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` unbuffered (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
