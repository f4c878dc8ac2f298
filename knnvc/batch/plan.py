"""A batch's plan and its report: where each source's output goes, which outputs exist, what happened.

Pure path work (no audio is read or written here): ``plan`` maps a source file or folder to output paths,
``pending`` keeps those still to make, ``check_outputs`` proves their folders writable, and ``Report`` is what
``knnvc.batch.runner.run`` (or the Ray job) did with them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knnvc import files
from knnvc.audio import decode, write
from knnvc.errors import AudioError, KnnvcError, OutputError, UsageError
from knnvc.progress import Job

OUTPUT_EXTENSIONS = tuple(write.OUTPUT_FORMATS)  # .wav, .flac, .ogg


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
    skip_reasons: Counter[str] = field(default_factory=Counter)  # done / unrecorded / exists (no settings record)

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
            "skip_reasons": dict(self.skip_reasons),
            "failures": [{"file": str(f.source), "error": str(f.error)} for f in self.failed],
        }


def safe_name(name: str) -> str:
    """A voice name usable inside a file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "voice"


def check_extension(extension: str) -> str:
    """``wav``/``.WAV`` -> ``.wav``; anything but an output format raises ``UsageError``."""
    ext = "." + extension.lower().lstrip(".")
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"output format {extension!r} is not supported; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    return ext


def plan(
    source: Path,
    output: Path | None,
    voice_name: str,
    *,
    extension: str = ".wav",
    inputs: Mapping[str, Iterable[Path | None]] | None = None,
) -> list[Job]:
    """Jobs for a source file or folder.

    A file goes to ``output`` (a file path, or a folder when it exists as one), else to
    ``<stem>_<voice>.<ext>`` in the current folder. A folder is searched recursively and mirrored under
    ``output`` (default ``<folder>_<voice>`` in the current folder): relative paths are kept and the extension
    becomes ``extension``. Sources that would land on the same output (``a.wav`` and ``a.flac``) keep their own
    extension in the name (``a.wav``, ``a.flac.wav``). Nothing is written; these are ``UsageError``s:

    - an output that would replace an input, by any name (``knnvc.files.check_not_inputs``): a source, or one of
      ``inputs``, the other files the conversion reads (``{"reference": [...], "voice": [...]}``; a reference
      folder as its audio files);
    - an output folder inside the source folder (a rerun would read its outputs back).
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
        jobs = [Job(source, output)]
    else:
        root = output if output is not None else Path.cwd() / f"{source.name or source.resolve().name}_{name}"
        if root.suffix.lower() in OUTPUT_EXTENSIONS and not root.is_dir():
            raise UsageError(f"{root}: a folder of sources needs an output folder, not a file name")
        if root.resolve() == source.resolve():
            raise UsageError(f"{root}: the output folder must differ from the source folder")
        if source.resolve() in root.resolve().parents:
            raise UsageError(
                f"{root}: the output folder is inside the source folder {source}, whose outputs a rerun would read "
                "back as sources; choose an output folder outside it"
            )
        jobs = _mirror(source, root, ext)
    files.check_not_inputs([job.output for job in jobs], {"source": [job.source for job in jobs], **(inputs or {})})
    return jobs


def manifest_folder(source: Path, jobs: list[Job]) -> Path:
    """The folder whose settings record (``knnvc.batch.manifest``) covers ``plan(source, ...)``'s jobs.

    A folder of sources: the output tree's top; one file: the output's folder.
    """
    if source.is_file() or not jobs:
        return jobs[0].output.parent if jobs else Path.cwd()
    depth = len(jobs[0].source.relative_to(source).parts)
    return jobs[0].output.parents[depth - 1]


def _mirror(source: Path, root: Path, ext: str) -> list[Job]:
    top = root.resolve()
    files = decode.audio_files(source)
    if not files:
        raise AudioError(f"{source}: folder holds no audio files ({', '.join(sorted(decode.AUDIO_EXTENSIONS))})")
    relative = [p.relative_to(source) for p in files]
    clashes = Counter(r.with_suffix("") for r in relative)
    jobs = []
    for path, rel in zip(files, relative, strict=True):
        keep_own = clashes[rel.with_suffix("")] > 1 and rel.suffix.lower() != ext
        target = root / (rel.with_name(rel.name + ext) if keep_own else rel.with_suffix(ext))
        if top not in target.resolve().parents:
            raise OutputError(f"{path}: its output {target} would escape {root} (a link?); choose another -o folder")
        jobs.append(Job(path, target))
    return jobs


def pending(jobs: list[Job], *, overwrite: bool = False) -> list[Job]:
    """The jobs ``run`` would convert: all with ``overwrite``, else those whose output does not exist yet."""
    return list(jobs) if overwrite else [j for j in jobs if not j.output.exists()]


def check_outputs(jobs: list[Job]) -> None:
    """Make the folders the jobs write into and prove them writable (``files.writable_folder``), once per folder:
    else ``OutputError`` naming a file that would have gone there."""
    for output in {job.output.parent: job.output for job in jobs}.values():
        try:
            files.writable_folder(output.parent)
        except OutputError as exc:
            raise type(exc)(f"{output}: {exc}") from exc
