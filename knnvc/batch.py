"""Many conversions against one voice: output planning, resume by skipping, per-file failures, progress.

``plan`` maps sources to outputs (a file to a file, a folder to a mirrored tree); ``run`` converts each job,
writes atomically, records failures instead of stopping, and reports progress through a callback. The CLI is a
thin layer over these two functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knnvc import audio
from knnvc.constants import SAMPLE_RATE
from knnvc.errors import AudioError, KnnvcError, OutputError, UsageError
from knnvc.pipeline import KnnVC
from knnvc.voice import Voice

log = logging.getLogger(__name__)

OUTPUT_EXTENSIONS = (".wav", ".flac", ".ogg")


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

    converted: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    @property
    def realtime_factor(self) -> float:
        """Audio seconds converted per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 2),
            "interrupted": self.interrupted,
            "outputs": [str(j.output) for j in self.converted],
            "failures": [{"file": str(f.source), "error": str(f.error)} for f in self.failed],
        }


@dataclass(frozen=True)
class Progress:
    """A progress event: ``stage`` is start, done, skip or fail; ``index`` counts from 0 over ``total``."""

    stage: str
    index: int
    total: int
    job: Job
    seconds: float = 0.0
    error: KnnvcError | None = None


def _check_extension(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise UsageError(f"{path}: output format must be one of {', '.join(OUTPUT_EXTENSIONS)}")


def plan(source: Path, output: Path | None, voice_name: str, *, extension: str = ".wav") -> list[Job]:
    """Jobs for a source file or folder.

    A file goes to ``output`` (a file path, or a folder when it exists as one), else to
    ``<stem>_<voice>.wav`` in the current folder. A folder is searched recursively and mirrored under
    ``output`` (default ``<folder>_<voice>`` in the current folder), keeping relative paths and replacing the extension.
    """
    if not source.exists():
        raise AudioError(f"{source}: no such file or folder")
    if source.is_file():
        if output is None:
            output = Path.cwd() / f"{source.stem}_{voice_name}{extension}"
        elif output.is_dir():
            output = output / f"{source.stem}_{voice_name}{extension}"
        _check_extension(output)
        return [Job(source, output)]
    files = audio.audio_files(source)
    if not files:
        raise AudioError(f"{source}: folder holds no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})")
    root = output if output is not None else Path.cwd() / f"{source.name}_{voice_name}"
    if root.suffix.lower() in OUTPUT_EXTENSIONS and not root.is_dir():
        raise UsageError(f"{root}: a folder of sources needs an output folder, not a file name")
    jobs = []
    for path in files:
        target = (root / path.relative_to(source)).with_suffix(extension)
        if root.resolve() not in target.resolve().parents:
            raise OutputError(f"{path}: its output {target} would escape {root}")
        jobs.append(Job(path, target))
    return jobs


def run(
    vc: KnnVC,
    jobs: list[Job],
    voice: Voice,
    *,
    overwrite: bool = False,
    output_sample_rate: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> Report:
    """Convert every job; an existing output is skipped unless ``overwrite``. Failures are recorded, not raised.

    ``options`` go to ``KnnVC.convert`` (k, loudness). KeyboardInterrupt stops after the current file has been
    written or abandoned (never half-written) and marks the report interrupted.
    """
    report = Report()
    notify = progress or (lambda event: None)
    started = time.perf_counter()
    try:
        for i, job in enumerate(jobs):
            if job.output.exists() and not overwrite:
                report.skipped.append(job)
                notify(Progress("skip", i, len(jobs), job))
                continue
            notify(Progress("start", i, len(jobs), job))
            try:
                t0 = time.perf_counter()
                wav = vc.convert(job.source, voice, **options)
                audio.save(job.output, wav, sample_rate=output_sample_rate or SAMPLE_RATE)
            except KnnvcError as exc:
                log.debug("failed: %s", job.source, exc_info=True)
                report.failed.append(Failure(job.source, exc))
                notify(Progress("fail", i, len(jobs), job, error=exc))
                continue
            seconds = len(wav) / SAMPLE_RATE
            report.converted.append(job)
            report.audio_seconds += seconds
            notify(Progress("done", i, len(jobs), job, seconds=time.perf_counter() - t0))
    except KeyboardInterrupt:
        report.interrupted = True
    report.wall_seconds = time.perf_counter() - started
    return report
