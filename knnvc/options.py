"""The constants of the method (with their units) and the typed options that carry every control.

``ConvertOptions``: every control of one conversion, carried from any front end down to the matcher; and
``PipelineSettings``: how a pipeline runs (device, precision, batching, windows, compile), never what it computes.

The CLI, the Python API, the batch runner, the stream, the web page and the cluster job all build one of these and
pass it explicitly; the pipeline reads it. Values are checked when it is made, so a bad value is a ``UsageError``
before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from knnvc.errors import UsageError

if TYPE_CHECKING:
    import torch

# Every number the method fixes, with its unit, in one place.
SAMPLE_RATE = 16_000  # Hz: WavLM's input rate and the published vocoder's output rate
HOP = 320  # samples per feature frame: 20 ms at 16 kHz
FRAME_RATE = SAMPLE_RATE // HOP  # 50 Hz
RECEPTIVE_FIELD = 400  # samples: the WavLM conv front end needs this many for its first frame (25 ms)
WAVLM_LAYER = 6  # kNN-VC matches on the output of transformer block 6 (hidden_states[6])
MAX_WAVLM_LAYERS = 24  # transformer blocks of WavLM-Large, the deepest layer a match layer can name
KNN_WEIGHTINGS = ("uniform", "inverse-distance")  # how the k neighbours are averaged
FEATURE_DIM = 1024  # WavLM-Large width
DEFAULT_K = 4  # neighbours averaged per source frame
ENCODER_WINDOW_SECONDS = 30.0  # s kept per encoder window: longer audio is encoded in windows (a 30 s file is one)
ENCODER_CONTEXT_SECONDS = 3.0  # s of context on each side of an encoder window (36 s windows)
DEFAULT_LOUDNESS = -16.0  # LUFS (ITU-R BS.1770), as the original
DEFAULT_WAVLM = "microsoft/wavlm-large"
DEFAULT_VOCODER = "prematched"
VOICE_SUFFIX = ".voice"  # a saved voice's file name ends so (``knnvc.voice.Voice.save``)
PAIR_SUFFIX = ".pair"  # a saved speaker pair's file name ends so (``knnvc.voice.Pair.save``)

# The matching step: kNN-VC's (the default) or one of its training-free successors (docs/methods.md).
METHODS = ("knn", "mkl", "linear")  # kNN regression; MKL-VC's factorised OT map; LinearVC's pair map
MKL_BLOCK = 2  # K: dimensions MKL-VC maps jointly (the authors' default; they suggest 2-16)
MKL_MIN_SECONDS = 1.0  # s of target speech MKL needs at least (50 frames; the authors report from 5 s)
LINEAR_MAX_FRAMES = 8_192  # frames of each speaker a non-parallel LinearVC fit keeps (2 min 44 s at 50 Hz)
LINEAR_LASSO = 0.3  # the lasso's alpha for a parallel LinearVC pair (the authors' default)
LINEAR_ADVISED_SECONDS = 180  # s of each speaker LinearVC's authors advise ("3 minutes per speaker is good")

# Limits of the options.
MIN_SAMPLE_RATE = 8_000  # Hz: the lowest output rate offered
MAX_SAMPLE_RATE = 192_000  # Hz: the highest output rate offered
MIN_LOUDNESS = -70.0  # LUFS: BS.1770's absolute gate; quieter targets are silence
MAX_LOUDNESS = 0.0  # LUFS
MAX_STRENGTH = 2.0  # strength above 1 exaggerates the target; beyond 2 it leaves the features the vocoder knows


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert: the same for every file of a batch.

    Attributes:
        k: neighbours averaged per source frame (the paper's 4).
        loudness: output loudness in LUFS (ITU-R BS.1770), or None to keep the vocoder's level.
        trim: trim silence from both ends of each reference when a voice is built from audio.
        output_sample_rate: rate of the result in Hz (soxr), or None for the vocoder's (16 kHz when published).
        strength: λ in ``λ·matched + (1 − λ)·source`` (layer-6 features), 0 to 2: 0 keeps the
            source voice, 1 is the target (the paper), above 1 exaggerates the target.
        match_layer: the WavLM layer searched for neighbours, 1 to the encoder's layer count; the output is
            always the mean of the chosen frames' layer-6 features. The encoder runs max(match_layer, 6) layers.
        knn_weighting: ``uniform`` (the paper's mean) or ``inverse-distance`` (weights 1/d^2).
        morph: a second voice (a ``knnvc.voice.Voice``); the matched features become
            ``(1 − w)·kNN(voice) + w·kNN(morph)``.
        morph_weight: w, 0 to 1 (0 is the first voice, 1 the second); only with ``morph``.
        method: the matching step: ``knn`` (kNN-VC, the default), ``mkl`` (MKL-VC: a factorised optimal-transport
            map fitted per source utterance, for short references) or ``linear`` (LinearVC: the map of a pair, a
            ``knnvc.voice.Pair``, which must then be the target; a pair target always converts with its map).
            ``k``, ``match_layer``, ``knn_weighting`` and ``morph`` are kNN's: with ``mkl`` or ``linear`` they must
            stay at their defaults. ``strength`` means the same for every method: λ·mapped + (1 − λ)·source.
        mkl_block: K, the feature dimensions MKL-VC maps jointly (1 or more; the authors' 2).
    """

    k: int = DEFAULT_K
    loudness: float | None = DEFAULT_LOUDNESS
    trim: bool = True
    output_sample_rate: int | None = None
    strength: float = 1.0
    match_layer: int = WAVLM_LAYER
    knn_weighting: str = "uniform"
    # A Voice, typed object: options sit below voices and never import them; the pipeline checks the type, and the
    # web page finds voice fields by this mark.
    morph: object | None = field(default=None, compare=False, metadata={"kind": "voice"})
    morph_weight: float = 0.5
    method: str = "knn"
    mkl_block: int = MKL_BLOCK

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UsageError(f"k must be at least 1 (neighbours averaged per frame, a whole number), got {self.k}")
        if self.loudness is not None and not MIN_LOUDNESS <= self.loudness <= MAX_LOUDNESS:
            limits = f"{MIN_LOUDNESS:g} to {MAX_LOUDNESS:g} LUFS"
            raise UsageError(f"loudness must be {limits}, or None; got {self.loudness}")
        rate = self.output_sample_rate
        if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise UsageError(f"output sample rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}")
        self._check_controls()

    def _check_controls(self) -> None:
        if not _number(self.strength) or not 0.0 <= self.strength <= MAX_STRENGTH:
            raise UsageError(f"strength must be 0 to {MAX_STRENGTH:g} (0 source, 1 target), got {self.strength}")
        layer = self.match_layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= MAX_WAVLM_LAYERS:
            raise UsageError(f"match layer must be a WavLM layer, 1 to {MAX_WAVLM_LAYERS}; got {layer}")
        if self.knn_weighting not in KNN_WEIGHTINGS:
            raise UsageError(f"kNN weighting must be {' or '.join(KNN_WEIGHTINGS)}, got {self.knn_weighting!r}")
        if not _number(self.morph_weight) or not 0.0 <= self.morph_weight <= 1.0:
            raise UsageError(f"morph weight must be 0 to 1 (0 the first voice, 1 the second), got {self.morph_weight}")
        self._check_method()

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"method must be {', '.join(METHODS)}; got {self.method!r}")
        block = self.mkl_block
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise UsageError(f"MKL block size must be a whole number, at least 1 (the authors' 2-16); got {block}")
        if self.method == "knn":
            return
        name = {"mkl": "MKL-VC", "linear": "LinearVC"}[self.method]
        for control in self.knn_controls():
            raise UsageError(f"{control} is a control of kNN matching, and {name} maps layer-6 frames: leave it out, "
                             "or use method knn")  # fmt: skip

    def knn_controls(self) -> list[str]:
        """The controls only kNN matching uses that are set away from their defaults: k, the match layer, the
        neighbour weighting, morph (MKL-VC and a pair's map refuse them)."""
        given = [
            (f"k={self.k}", self.k != DEFAULT_K),
            ("a match layer", self.match_layer != WAVLM_LAYER),
            ("kNN weighting", self.knn_weighting != "uniform"),
            ("morph", self.morph is not None),
        ]
        return [control for control, set_ in given if set_]

    @property
    def depth(self) -> int:
        """Transformer layers the encoder must run: max(match layer, 6)."""
        return max(self.match_layer, WAVLM_LAYER)

    @property
    def layers(self) -> tuple[int, ...]:
        """WavLM layers these options read: (6,), or (6, match layer)."""
        return (WAVLM_LAYER,) if self.match_layer == WAVLM_LAYER else (WAVLM_LAYER, self.match_layer)


@dataclass(frozen=True)
class PipelineSettings:
    """How a pipeline runs: where, in what precision, how much at once. Never what it computes.

    Attributes:
        device: auto, cpu, cuda, cuda:N or mps (checked, with the absent device named, when a pipeline is made).
        precision: auto, fp32, bf16 or fp16 for the networks; matching is always fp32.
        batch_size: waveforms (or windows of long audio), from any number of files, computed together. None: 1
            on a CPU (batching costs there, measured), 8 on a GPU.
        window_seconds: audio longer than this (plus context) is encoded in windows this long (at least 1 s).
        context_seconds: audio on each side of an encoder window, computed and dropped.
        compile: ``torch.compile`` the networks (``KnnVC.warm_up`` compiles them and reports the time).
    """

    device: str | torch.device = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    window_seconds: float = ENCODER_WINDOW_SECONDS
    context_seconds: float = ENCODER_CONTEXT_SECONDS
    compile: bool = False

    def __post_init__(self) -> None:
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise UsageError(f"batch size must be a whole number, at least 1; got {size}")
        if not _number(self.window_seconds) or not _number(self.context_seconds):
            raise UsageError("the encoder window and its context are numbers of seconds")
        if self.window_seconds < 1 or self.context_seconds < 0:
            raise UsageError("the encoder window must be at least 1 s and its context at least 0 s")

    def on(self, device: str | torch.device | None) -> PipelineSettings:
        """These settings on ``device`` (None: as they are)."""
        return self if device is None else replace(self, device=device)


@dataclass(frozen=True)
class Models:
    """Which weights a pipeline loads and how it runs them: what a process, or each cluster actor, needs to get one
    (``KnnVC.from_pretrained(models)``).

    Attributes:
        wavlm: WavLM by registry name, hub id or local path.
        vocoder: ``prematched``, ``regular`` or a generator checkpoint's path.
        settings: device, precision, batch size, windows, compile.
        offline: never touch the network (None: the ``KNNVC_OFFLINE`` / ``HF_HUB_OFFLINE`` environment decides).
    """

    wavlm: str | Path = DEFAULT_WAVLM
    vocoder: str | Path = DEFAULT_VOCODER
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    offline: bool | None = None


def _number(value: object) -> bool:
    """A real, finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value == value and abs(value) != float("inf")


DEFAULT_OPTIONS = ConvertOptions()  # the paper's conversion: k=4, -16 LUFS, trimmed references
DEFAULT_SETTINGS = PipelineSettings()  # device, precision and batch size auto
DEFAULT_MODELS = Models()  # the published checkpoints, run with DEFAULT_SETTINGS


def package_version() -> str:
    """knnvc's version, as installed (written once, in pyproject.toml); ``0+unknown`` when run from a checkout that
    was never installed (``PYTHONPATH=. python -m knnvc``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("knnvc")
    except PackageNotFoundError:
        return "0+unknown"
