"""``--sweep NAME=V1,V2,...``: convert over a grid of settings, then score each point.

A setting is a field of ``ConvertOptions`` (its name and type come from there, so a control added there can be
swept with no change here), or ``reference_seconds``: the target's references cut to that much speech. Two
``--sweep`` options make a two-way grid (``reference_seconds`` x ``method``: which method wins at which length
of reference). Conversion goes through the public pipeline (``knnvc.batch.runner.run`` with a ``KnnVC``); each
point is written to ``OUT/NAME=VALUE/`` (two settings: ``OUT/NAME=VALUE,NAME2=VALUE2/``) and scored like any
folder of conversions.

``method=linear`` converts with a LinearVC pair per (source speaker, target), fitted by ``KnnVC.build_pair`` on
the source speaker's recordings other than the utterance converted (``fit_files``); pairs are cached within a run.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knnvc.errors import UsageError
from knnvc.options import SAMPLE_RATE, ConvertOptions

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC, Target
    from knnvc.progress import Job
    from knnvc.voice import Pair, Voice

TRUE, FALSE, NONE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"none", "null", "off"}
REFERENCE_SECONDS = "reference_seconds"  # the one sweep setting that is not a ConvertOptions field
MAX_AXES = 2  # --sweep given at most twice: a line per value of the second, against the first


@dataclass(frozen=True)
class Grid:
    """One setting (a field of ``ConvertOptions``, or ``reference_seconds``) and the values it takes."""

    name: str
    values: tuple[Any, ...]

    def options(self, base: ConvertOptions) -> list[ConvertOptions]:
        """``base`` with the setting replaced by each value (validated by ``ConvertOptions``); ``base`` itself for
        each value of ``reference_seconds``, which is not an option of the conversion."""
        if self.name == REFERENCE_SECONDS:
            return [base for _ in self.values]
        return [dataclasses.replace(base, **{self.name: value}) for value in self.values]

    def folder(self, value: Any) -> str:
        return f"{self.name}={value}"


def settings() -> list[str]:
    """The ``ConvertOptions`` fields ``--sweep`` accepts: every one (and ``REFERENCE_SECONDS`` beside them)."""
    return [f.name for f in dataclasses.fields(ConvertOptions)]


def parse_sweep(spec: str, base: ConvertOptions | None = None) -> Grid:
    """``"k=1,4,8"`` -> ``Grid("k", (1, 4, 8))``, each value typed as its field and checked by ``ConvertOptions``;
    ``"reference_seconds=5,10"`` -> seconds of speech, each above 0.

    Raises:
        UsageError: no ``=``, an unknown setting, an empty or repeated value, or a value the field refuses.
    """
    name, sep, raw = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not raw.strip():
        raise UsageError(f"sweep takes 'NAME=V1,V2,...' (for example 'k=1,4,8'), got {spec!r}")
    if name not in (*settings(), REFERENCE_SECONDS):
        raise UsageError(f"sweep: unknown setting {name!r}; ConvertOptions has {', '.join(settings())}; and "
                         f"{REFERENCE_SECONDS} cuts the references")  # fmt: skip
    texts = [v.strip() for v in raw.split(",")]
    if any(not t for t in texts) or len(set(texts)) != len(texts):
        raise UsageError(f"sweep {spec!r}: values must be non-empty and distinct")
    if name == REFERENCE_SECONDS:
        seconds = tuple(_typed(t, float, name) for t in texts)
        if any(not s > 0 or s == float("inf") for s in seconds):
            raise UsageError(f"sweep: {REFERENCE_SECONDS} takes seconds of speech above 0, got {raw!r}")
        return Grid(name, tuple(int(s) if s == int(s) else s for s in seconds))
    from knnvc.voice import Voice  # ConvertOptions names it only for type checkers (options sits below voice)

    kind = typing.get_type_hints(ConvertOptions, localns={"Voice": Voice})[name]
    grid = Grid(name, tuple(_typed(t, kind, name) for t in texts))
    grid.options(base or ConvertOptions())  # every value checked before anything loads
    return grid


def parse_sweeps(specs: Sequence[str], base: ConvertOptions | None = None) -> list[Grid]:
    """One or two ``--sweep`` specs -> their grids (the first is the plot's x axis, the second its lines).

    Raises:
        UsageError: more than two, or one setting twice.
    """
    grids = [parse_sweep(spec, base) for spec in specs]
    if not 1 <= len(grids) <= MAX_AXES:
        raise UsageError(f"sweep: give one or two settings (a line per value of the second), got {len(grids)}")
    if len({g.name for g in grids}) != len(grids):
        raise UsageError(f"sweep: {grids[0].name} given twice; sweep two different settings")
    return grids


def _typed(text: str, kind: Any, name: str) -> Any:
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if type(None) in allowed and text.lower() in NONE:
        return None
    for t in allowed:
        if typing.get_origin(t) is typing.Literal:
            choices = {str(c): c for c in typing.get_args(t)}
            if text in choices:
                return choices[text]
            continue
        if t is bool and text.lower() in TRUE | FALSE:
            return text.lower() in TRUE
        if t in (int, float, str):
            try:
                return t(text)
            except ValueError:
                continue
    names = " or ".join(getattr(t, "__name__", None) or str(t) for t in allowed)
    raise UsageError(f"sweep: {name} takes {names} values, got {text!r}")


@dataclass
class Point:
    """One point of a sweep: its settings, where its conversions went, and what happened.

    ``skipped`` says why a point was not converted (references holding less speech than asked, a method that
    cannot convert onto them); a skipped point has no scores. ``reference_seconds`` is the speech the target's
    references held at this point (after trimming silence when ``trim``), ``pairs`` the LinearVC pairs used.
    """

    values: dict[str, Any]
    name: str
    folder: Path
    skipped: str | None = None
    reference_seconds: float | None = None
    converted: int = 0
    kept: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.values, "folder": self.name, "skipped": self.skipped,
                "reference_speech_seconds": self.reference_seconds, "pairs": self.pairs,
                "notes": self.notes}  # fmt: skip


def run_sweep(
    vc: KnnVC,
    source: Path,
    references: Path,
    grids: Grid | Sequence[Grid],
    out: Path,
    *,
    base: ConvertOptions | None = None,
    overwrite: bool = False,
    source_speakers: Path | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Convert ``source`` (file or folder) into the voice of ``references`` (a file or folder of the target's
    speech) at each point of the grid(s); return the points, in grid order (the last grid varying fastest).

    Outputs already there are kept (rerun to resume) unless ``overwrite``. A point that cannot be converted is
    skipped with its reason (``Point.skipped``): references with less speech than ``reference_seconds`` asks, or
    a method that refuses them (MKL-VC below 1 s). A point whose files all fail raises the first failure; every
    point skipped raises the first reason.

    Args:
        source_speakers: the source speakers' own recordings for LinearVC's pairs (``fit_files``).
    """
    from knnvc.batch import plan, runner

    grids = [grids] if isinstance(grids, Grid) else list(grids)
    base = base or ConvertOptions()
    target = _References(vc, references)
    pairs = _Pairs(vc, source, source_speakers)
    points: list[Point] = []
    for combo in itertools.product(*[list(zip(g.values, g.options(base), strict=True)) for g in grids]):
        values = {g.name: value for g, (value, _) in zip(grids, combo, strict=True)}
        name = ",".join(g.folder(v) for g, (v, _) in zip(grids, combo, strict=True))
        point = Point(values, name, out / name)
        points.append(point)
        try:
            options = _combined(base, grids, combo)
            voice = target.voice(values.get(REFERENCE_SECONDS), options.trim)
        except UsageError as exc:
            point.skipped = str(exc)
            continue
        point.reference_seconds = round(sum(s.seconds for s in voice.sources), 2)
        folder = point.folder
        outputs = folder if source.is_dir() else folder / f"{source.stem}.wav"
        folder.mkdir(parents=True, exist_ok=True)
        jobs = plan.plan(source, outputs, voice.name)
        groups: list[tuple[Target, list[Job]]] = [(voice, jobs)]
        try:
            if options.method == "linear":
                groups = pairs.groups(jobs, voice, target.key(values.get(REFERENCE_SECONDS), options.trim),
                                      options.trim, point)  # fmt: skip
            for goal, some in groups:
                report = runner.run(vc, some, goal, options, overwrite=overwrite)
                if report.interrupted:
                    raise KeyboardInterrupt
                if report.failed and not report.converted and not report.skipped:
                    raise report.failed[0].error
                point.converted += len(report.converted)
                point.kept += len(report.skipped)
        except UsageError as exc:
            point.skipped = str(exc)
            continue
        if on_point is not None:
            on_point(point)
    if all(p.skipped for p in points):
        raise UsageError(f"sweep: every point skipped; {points[0].name}: {points[0].skipped}")
    return points


def _combined(
    base: ConvertOptions, grids: Sequence[Grid], combo: Sequence[tuple[Any, ConvertOptions]]
) -> ConvertOptions:
    """``base`` with every swept ``ConvertOptions`` setting of this point (checked together)."""
    changes = {g.name: value for g, (value, _) in zip(grids, combo, strict=True) if g.name != REFERENCE_SECONDS}
    return dataclasses.replace(base, **changes)


def cut_speech(wavs: Sequence[np.ndarray], seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first ``seconds`` of ``wavs`` (each (N_i,) float32 at ``sample_rate``, silence already trimmed from
    its ends), joined in order -> (round(seconds * sample_rate),) float32.

    Raises:
        UsageError: ``wavs`` hold less than ``seconds`` in all (the message says how much they hold).
    """
    need = round(seconds * sample_rate)
    held = sum(len(w) for w in wavs)
    if held < need:
        raise UsageError(f"the references hold {held / sample_rate:.2f} s of speech, less than the {seconds:g} s "
                         "asked: point skipped")  # fmt: skip
    return np.concatenate(list(wavs))[:need].astype(np.float32, copy=False)


class _References:
    """The target's voice at each point: from all its references, or from its first ``seconds`` of speech."""

    def __init__(self, vc: KnnVC, references: Path) -> None:
        self.vc, self.references = vc, references
        self.name = references.stem if references.is_file() else references.resolve().name
        self.voices: dict[tuple[float | None, bool], Voice] = {}
        self.speech: dict[bool, list[np.ndarray]] = {}

    def key(self, seconds: float | None, trim: bool) -> tuple[float | None, bool]:
        return seconds, trim

    def voice(self, seconds: float | None, trim: bool) -> Voice:
        key = self.key(seconds, trim)
        if key not in self.voices:
            if seconds is None:
                self.voices[key] = self.vc.build_voice(self.references, trim=trim, name=self.name)
            else:
                cut = cut_speech(self._speech(trim), seconds)
                self.voices[key] = self.vc.build_voice([cut], trim=False, sample_rate=SAMPLE_RATE,
                                                       name=f"{self.name}_{seconds:g}s")  # fmt: skip
        return self.voices[key]

    def _speech(self, trim: bool) -> list[np.ndarray]:
        """Each reference file (sorted, as a voice reads a folder) at 16 kHz, its ends' silence trimmed."""
        if trim not in self.speech:
            from knnvc.audio import vad
            from knnvc.eval.inputs import files_in

            wavs = [self.vc.load_audio(f) for f in files_in(self.references)]
            self.speech[trim] = [vad.trim_silence(w) for w in wavs] if trim else wavs
        return self.speech[trim]


def fit_files(file: Path, source: Path, source_speakers: Path | None = None) -> tuple[str, list[Path]]:
    """The source speaker of ``file`` (one of ``source``'s files) and the recordings to fit its LinearVC pair on.

    The speaker: with ``source_speakers`` holding audio files directly, that one speaker; holding folders, the
    folder named as ``file``'s first folder under ``source``, else the folder whose name starts ``file``'s stem
    before a ``-`` or ``_`` (LibriSpeech's ``SPEAKER-CHAPTER-UTTERANCE``). Without ``source_speakers``, the first
    folder under ``source`` holding ``file``, else all of ``source``. The recordings: that speaker's files
    (``source_speakers``' folder, else the speaker's files under ``source``) other than ``file`` itself; an empty
    list when there are none (the caller says so).

    Raises:
        UsageError: ``source_speakers`` has no folder for ``file``'s speaker.
    """
    from knnvc.eval.inputs import files_in

    rel = file.relative_to(source).parts if source.is_dir() else (file.name,)
    first = rel[0] if len(rel) > 1 else None
    if source_speakers is None:
        speaker_dir = source / first if first is not None else source
        speaker = first or (source.resolve().name if source.is_dir() else source.stem)
        found = files_in(speaker_dir)
    elif source_speakers.is_file() or any(p.parent == source_speakers for p in files_in(source_speakers)):
        speaker = source_speakers.stem if source_speakers.is_file() else source_speakers.resolve().name
        found = files_in(source_speakers)
    else:
        folders = {p.name: p for p in sorted(source_speakers.iterdir()) if p.is_dir()}
        named = [n for n in folders if file.stem.startswith((f"{n}-", f"{n}_"))]
        speaker = first if first in folders else max(named, key=len) if named else ""
        if not speaker:
            raise UsageError(
                f"{file}: no folder of the source speakers' recordings ({source_speakers}) is its speaker (named as "
                "its first folder under the sources, or as the start of its name before - or _)"
            )
        found = files_in(folders[speaker])
    mine = file.resolve()
    return speaker, [p for p in found if p.resolve() != mine]


class _Pairs:
    """LinearVC pairs (source speaker -> the point's target voice), fitted once per speaker pair and fit files."""

    def __init__(self, vc: KnnVC, source: Path, source_speakers: Path | None) -> None:
        self.vc, self.source, self.source_speakers = vc, source, source_speakers
        self.cache: dict[tuple[Any, ...], Pair] = {}

    def groups(self, jobs: list[Job], voice: Voice, voice_key: object, trim: bool,
               point: Point) -> list[tuple[Target, list[Job]]]:  # fmt: skip
        """The jobs grouped by the pair that converts them (noted in ``point.pairs`` and ``point.notes``)."""
        grouped: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            speaker, fit = fit_files(job.source, self.source, self.source_speakers)
            if not fit:
                fit = [job.source]
                point.notes.append(
                    f"linear: {job.source.name}: speaker {speaker} has no other recordings, so its W "
                    "was fitted on this utterance itself (give source speakers' recordings for held-out ones)"
                )
            key = (speaker, voice_key, trim, tuple(str(p) for p in fit))
            grouped.setdefault(key, []).append(job)
        out: list[tuple[Target, list[Job]]] = []
        for key, some in grouped.items():
            speaker, fit = key[0], [Path(p) for p in key[3]]
            if key not in self.cache:
                self.cache[key] = self.vc.build_pair(fit, voice, method="linear", trim=trim,
                                                     name=f"{speaker}2{voice.name}")  # fmt: skip
            pair = self.cache[key]
            point.pairs.append({"speaker": speaker, "fitted_on": [p.name for p in fit],
                                "converted": [j.source.name for j in some], "source_frames": pair.source_frames,
                                "target_frames": pair.target_frames})  # fmt: skip
            out.append((pair, some))
        return out
