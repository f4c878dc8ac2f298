"""Many conversions against one voice: output planning, resume by skipping, per-file failures, progress.

``plan`` maps sources to outputs (a file to a file, a folder to a mirrored tree); ``run`` converts each job,
writes atomically, records failures instead of stopping, and reports progress through callbacks. The CLI is a
thin layer over these two functions.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knnvc import audio
from knnvc.errors import AudioError, DiskFullError, KnnvcError, OutputError, UsageError
from knnvc.interrupt import sigterm_as_interrupt

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC
    from knnvc.voice import Voice
    from knnvc.windows import Progress as ChunkProgress

log = logging.getLogger(__name__)

OUTPUT_EXTENSIONS = tuple(audio.OUTPUT_FORMATS)  # .wav, .flac, .ogg


@dataclass(frozen=True)
class Job:
    """One source file and where its conversion goes."""

    source: Path
    output: Path


@dataclass
class Failure:
    source: Path
    error: KnnvcError


@dataclass
class Report:
    """What a batch did. ``ok`` is true only when every job converted or was already done."""

    total: int = 0
    converted: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False
    stopped: KnnvcError | None = None  # an error that ended the batch early (a full disk)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    @property
    def realtime_factor(self) -> float:
        """Wall-clock seconds per second of audio converted (below 1 is faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    @property
    def speed(self) -> float:
        """Seconds of audio converted per wall-clock second (the inverse of the real-time factor)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "files": self.total,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 4),
            "speed": round(self.speed, 2),
            "interrupted": self.interrupted,
            "stopped": None if self.stopped is None else str(self.stopped),
            "outputs": [str(j.output) for j in self.converted],
            "skipped_outputs": [str(j.output) for j in self.skipped],
            "failures": [{"file": str(f.source), "error": str(f.error)} for f in self.failed],
        }


@dataclass(frozen=True)
class Progress:
    """A progress event: ``stage`` is start, done, skip or fail; ``index`` counts from 0 over ``total``.

    ``seconds`` is the wall time a finished file took and ``audio_seconds`` its length.
    """

    stage: str
    index: int
    total: int
    job: Job
    seconds: float = 0.0
    audio_seconds: float = 0.0
    error: KnnvcError | None = None


def safe_name(name: str) -> str:
    """A voice name usable inside a file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "voice"


def check_extension(extension: str) -> str:
    """``wav``/``.WAV`` -> ``.wav``; anything but an output format raises ``UsageError``."""
    ext = "." + extension.lower().lstrip(".")
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"output format {extension!r} is not supported; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    return ext


def plan(source: Path, output: Path | None, voice_name: str, *, extension: str = ".wav") -> list[Job]:
    """Jobs for a source file or folder.

    A file goes to ``output`` (a file path, or a folder when it exists as one), else to
    ``<stem>_<voice>.<ext>`` in the current folder. A folder is searched recursively and mirrored under
    ``output`` (default ``<folder>_<voice>`` in the current folder): relative paths are kept and the extension
    becomes ``extension``. Sources that would land on the same output (``a.wav`` and ``a.flac``) keep their own
    extension in the name (``a.wav``, ``a.flac.wav``). Files already inside ``output`` are not sources.
    """
    ext = check_extension(extension)
    name = safe_name(voice_name)
    if not source.exists():
        raise AudioError(f"{source}: no such file or folder")
    if source.is_file():
        if output is None:
            output = Path.cwd() / f"{source.stem}_{name}{ext}"
        elif output.is_dir():
            output = output / f"{source.stem}_{name}{ext}"
        elif output.suffix.lower() not in OUTPUT_EXTENSIONS:
            raise UsageError(
                f"{output}: give an output file ending in {', '.join(OUTPUT_EXTENSIONS)}, or an existing folder"
            )
        return [Job(source, output)]
    root = output if output is not None else Path.cwd() / f"{source.name or source.resolve().name}_{name}"
    if root.suffix.lower() in OUTPUT_EXTENSIONS and not root.is_dir():
        raise UsageError(f"{root}: a folder of sources needs an output folder, not a file name")
    if root.resolve() == source.resolve():
        raise UsageError(f"{root}: the output folder must differ from the source folder")
    return _mirror(source, root, ext)


def _mirror(source: Path, root: Path, ext: str) -> list[Job]:
    top = root.resolve()
    files = [p for p in audio.audio_files(source) if top not in p.resolve().parents]
    if not files:
        raise AudioError(f"{source}: folder holds no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})")
    relative = [p.relative_to(source) for p in files]
    clashes = Counter(r.with_suffix("") for r in relative)
    jobs = []
    for path, rel in zip(files, relative, strict=True):
        keep_own = clashes[rel.with_suffix("")] > 1 and rel.suffix.lower() != ext
        target = root / (rel.with_name(rel.name + ext) if keep_own else rel.with_suffix(ext))
        if top not in target.resolve().parents:
            raise OutputError(f"{path}: its output {target} would escape {root}")
        jobs.append(Job(path, target))
    return jobs


def pending(jobs: list[Job], *, overwrite: bool = False) -> list[Job]:
    """The jobs ``run`` would convert: all with ``overwrite``, else those whose output does not exist yet."""
    return list(jobs) if overwrite else [j for j in jobs if not j.output.exists()]


def accepts_progress(vc: Any) -> bool:
    """Whether ``vc.convert`` takes a ``progress`` callback (progress within one long file)."""
    return "progress" in inspect.signature(vc.convert).parameters


@sigterm_as_interrupt()  # SIGTERM stops the batch as Ctrl-C does (handler restored on return)
def run(
    vc: KnnVC,
    jobs: list[Job],
    voice: Voice,
    *,
    overwrite: bool = False,
    output_sample_rate: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_chunk: ChunkProgress | None = None,
    **options: Any,
) -> Report:
    """Convert every job; an existing output is skipped unless ``overwrite``. Failures are recorded, not raised.

    ``progress`` gets a ``Progress`` event per file; ``on_chunk(stage, done, total)`` is passed to
    ``KnnVC.convert`` as its ``progress`` (windows within one file) when the pipeline supports it. ``options``
    go to ``KnnVC.convert`` (k, loudness). KeyboardInterrupt stops after the current file has been written or
    abandoned (never half-written) and marks the report interrupted; SIGTERM does the same. A full disk
    (``DiskFullError``) stops the batch at once and is recorded as ``report.stopped``.
    """
    report = Report(total=len(jobs))
    notify = progress or (lambda event: None)
    if on_chunk is not None and accepts_progress(vc):
        options = {**options, "progress": on_chunk}
    started = time.perf_counter()
    try:
        for i, job in enumerate(jobs):
            if job.output.exists() and not overwrite:
                report.skipped.append(job)
                notify(Progress("skip", i, len(jobs), job))
                continue
            notify(Progress("start", i, len(jobs), job))
            event = _convert_one(vc, job, voice, output_sample_rate or vc.sample_rate, options, report)
            notify(Progress(event[0], i, len(jobs), job, seconds=event[1], audio_seconds=event[2], error=event[3]))
            if isinstance(event[3], DiskFullError):  # every later file would fail the same way
                report.stopped = event[3]
                break
    except KeyboardInterrupt:
        report.interrupted = True
    report.wall_seconds = time.perf_counter() - started
    return report


def _convert_one(
    vc: KnnVC, job: Job, voice: Voice, rate: int, options: dict[str, Any], report: Report
) -> tuple[str, float, float, KnnvcError | None]:
    """Convert and save one job, recording it in ``report``; returns (stage, wall s, audio s, error)."""
    t0 = time.perf_counter()
    try:
        wav = vc.convert(job.source, voice, **options)
        audio.save(job.output, wav, sample_rate=rate, source_rate=vc.sample_rate)
    except KnnvcError as exc:
        log.debug("failed: %s", job.source, exc_info=True)
        report.failed.append(Failure(job.source, exc))
        return "fail", time.perf_counter() - t0, 0.0, exc
    seconds = len(wav) / vc.sample_rate
    report.converted.append(job)
    report.audio_seconds += seconds
    return "done", time.perf_counter() - t0, seconds, None
