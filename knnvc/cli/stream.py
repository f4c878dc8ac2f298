"""``knnvc stream``: raw PCM on stdin -> converted PCM on stdout (``knnvc live``, in ``live.py``, shares its options).

    arecord -f S16_LE -r 16000 -c 1 | knnvc stream alice.voice | aplay -f S16_LE -r 16000
    ffmpeg -i in.mp3 -f s16le -ac 1 -ar 16000 - | knnvc stream alice.voice | ffmpeg -f s16le -ar 16000 -i - out.wav
    arecord ... | knnvc stream me2alice.pair | aplay ...                       # LinearVC: the pair's map, no search
    arecord ... | knnvc stream alice/ --method mkl --source-speaker me/ | aplay ...   # MKL-VC fitted on me/

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
from knnvc.cli.controls import (
    MatchLayerOpt,
    MklBlockOpt,
    MorphOpt,
    MorphWeightOpt,
    StrengthOpt,
    WeightingOpt,
    controls,
)
from knnvc.errors import UsageError
from knnvc.options import (
    DEFAULT_K,
    DEFAULT_VOCODER,
    DEFAULT_WAVLM,
    METHODS,
    MKL_BLOCK,
    PAIR_SUFFIX,
    SAMPLE_RATE,
    WAVLM_LAYER,
)

if TYPE_CHECKING:
    import numpy as np

    from knnvc.stream.streamer import Streamer

REFERENCE_HELP = "Target speech: a file, a folder, or a saved .voice file; or a .pair (its fixed map)."
ReferenceArg = Annotated[Path, typer.Argument(help=REFERENCE_HELP)]
StreamMethodOpt = Annotated[
    str,
    typer.Option("--method", help=f"{', '.join(METHODS)}: kNN-VC onto a voice; MKL-VC (needs --source-speaker); "
                 "LinearVC (REFERENCE is a .pair, whose map fits the source speaker it was built from). A .pair "
                 "always streams with its own map."),  # fmt: skip
]
SourceSpeakerOpt = Annotated[
    Path | None,
    typer.Option("--source-speaker", help="MKL-VC: the recordings (file or folder) of who will speak into the "
                 "stream; the map is fitted on them, as a stream has no whole utterance to fit it on."),  # fmt: skip
]
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
    method: StreamMethodOpt = "knn",
    mkl_block: MklBlockOpt = MKL_BLOCK,
    source_speaker: SourceSpeakerOpt = None,
) -> StreamLoader:
    """The options ``knnvc stream`` and ``knnvc live`` share (``common.takes``), as the function that checks them
    and loads the ``Streamer``."""

    def load(reference: Path, input_rate: int, output_rate: int) -> Streamer:
        from knnvc.cli.controls import with_morph_voice
        from knnvc.options import ConvertOptions, Models, PipelineSettings
        from knnvc.pipeline import KnnVC
        from knnvc.stream.settings import StreamSettings, target_gain
        from knnvc.stream.streamer import Streamer
        from knnvc.voice import Voice

        options = ConvertOptions(k=k, loudness=common.parse_loudness(loudness), trim=trim,
                                 output_sample_rate=output_rate,
                                 **controls(strength, match_layer, knn_weighting, morph, morph_weight,
                                            method=method, mkl_block=mkl_block))  # fmt: skip
        check_method(reference, options.method, source_speaker)
        settings = StreamSettings(chunk_ms, lookahead_ms, vocoder_lookahead_ms, context_ms, input_rate)
        models = Models(wavlm, vocoder, PipelineSettings(device, precision, batch_size=1), offline or None)
        vc = KnnVC.from_pretrained(models, match_layer=options.match_layer)
        vc.load_vocoder()  # before the first chunk: a stream cannot wait for it
        options = with_morph_voice(vc, options, morph)
        target = vc.voice_from(reference, trim=options.trim, match_layer=options.match_layer)
        if source_speaker is None:
            return Streamer(vc, target, options, settings)
        assert isinstance(target, Voice)  # check_method refused a pair
        pair = vc.build_pair(source_speaker, target, method="mkl", mkl_block=options.mkl_block, trim=options.trim)
        return Streamer(vc, pair, options, settings, gain=target_gain(vc, target, options.loudness))

    return load


def check_method(reference: Path, method: str, source_speaker: Path | None) -> None:
    """``UsageError``, before any model loads, for a method the stream's target cannot take: MKL-VC fits its map on
    the source speaker's recordings (``--source-speaker``), LinearVC streams a pair's map."""
    is_pair = str(reference).endswith(PAIR_SUFFIX)
    if source_speaker is not None and method != "mkl":
        raise UsageError("--source-speaker is what MKL-VC fits its map on: give --method mkl with it")
    if source_speaker is not None and is_pair:
        raise UsageError(f"{reference} is a pair, a map already fitted: --source-speaker fits an MKL-VC map onto a "
                         "voice or references; give one of those")  # fmt: skip
    if method == "mkl" and source_speaker is None and not is_pair:
        raise UsageError("--method mkl needs --source-speaker DIR: MKL-VC fits its map on the source's statistics, and "
                         "a stream has no whole utterance to take them from")  # fmt: skip
    if method == "linear" and not is_pair:
        raise UsageError("--method linear streams a pair's map: give a .pair as REFERENCE "
                         "(knnvc pair build SOURCE_SPEAKER TARGET -o NAME.pair)")  # fmt: skip


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
    from the voice (a pair: its target's speech) before the first chunk. A .pair REFERENCE, or --method mkl
    --source-speaker DIR, streams a fixed per-frame map: no kNN search.
    """
    with common.session(verbose, quiet):
        _check_rate("--input-rate", input_rate)
        streamer = streaming(reference, input_rate, output_rate)
        if not quiet:
            common.say("streaming:", "green", described(streamer))
        pump(streamer, sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno(), streamer.settings.chunk_ms)


def described(streamer: Streamer) -> str:
    """The ready line's text: the settings, after the map streamed with when it is not kNN matching."""
    from knnvc.voice import Pair

    target = streamer.target
    if not isinstance(target, Pair):
        return streamer.settings.describe()
    name = {"linear": "LinearVC", "mkl": f"MKL-VC (K={target.mkl_block})"}[target.method]
    return f"{name} map of pair {target.name!r}, no search; {streamer.settings.describe()}"


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
