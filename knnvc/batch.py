"""Many conversions against one voice: output planning, resume by skipping, per-file failures, progress.

``plan`` maps sources to outputs (a file to a file, a folder to a mirrored tree); ``run`` converts each job,
writes atomically, records failures instead of stopping, and reports progress through callbacks. The CLI is a
thin layer over these two functions.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knnvc import audio, files
from knnvc.errors import AudioError, DiskFullError, KnnvcError, OutputError, UsageError
from knnvc.interrupt import sigterm_as_interrupt
from knnvc.options import ConvertOptions
from knnvc.progress import Job, OnProgress, Progress

if TYPE_CHECKING:
    from knnvc.manifest import Ledger
    from knnvc.pipeline import KnnVC
    from knnvc.voice import Voice

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = ConvertOptions()

OUTPUT_EXTENSIONS = tuple(audio.OUTPUT_FORMATS)  # .wav, .flac, .ogg
GROUP_FILES = 16  # files decoded and computed together; their windows are batched by the pipeline's batch_size


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


def plan(source: Path, output: Path | None, voice_name: str, *, extension: str = ".wav") -> list[Job]:
    """Jobs for a source file or folder.

    A file goes to ``output`` (a file path, or a folder when it exists as one), else to
    ``<stem>_<voice>.<ext>`` in the current folder. A folder is searched recursively and mirrored under
    ``output`` (default ``<folder>_<voice>`` in the current folder): relative paths are kept and the extension
    becomes ``extension``. Sources that would land on the same output (``a.wav`` and ``a.flac``) keep their own
    extension in the name (``a.wav``, ``a.flac.wav``). An output that would replace a source, or an output folder
    inside the source folder (a rerun would read its outputs back), is a ``UsageError``: nothing is written.
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
        if output.resolve() == source.resolve():
            raise UsageError(f"{output}: the output would replace its own source; give another output file")
        return [Job(source, output)]
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
    inputs = {job.source.resolve() for job in jobs}
    for job in jobs:
        if job.output.resolve() in inputs:
            raise UsageError(f"{job.output}: an output would replace a source file; choose another output folder")
    return jobs


def manifest_folder(source: Path, jobs: list[Job]) -> Path:
    """The folder whose settings record (``knnvc.manifest``) covers ``plan(source, ...)``'s jobs.

    A folder of sources: the output tree's top; one file: the output's folder.
    """
    if source.is_file() or not jobs:
        return jobs[0].output.parent if jobs else Path.cwd()
    depth = len(jobs[0].source.relative_to(source).parts)
    return jobs[0].output.parents[depth - 1]


def _mirror(source: Path, root: Path, ext: str) -> list[Job]:
    top = root.resolve()
    files = audio.audio_files(source)
    if not files:
        raise AudioError(f"{source}: folder holds no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})")
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


class Overlap:
    """Decode sources ahead of the compute and write outputs behind it, in worker threads.

    libsndfile, soxr and file writes release the GIL, so a GPU (or the CPU's math threads) keeps working
    while the next group is decoded and the last one is encoded to disk. Writes stay atomic (``audio.save``);
    leaving the ``with`` block waits for every write already handed over, so Ctrl-C never loses one.
    """

    def __init__(self, vc: KnnVC, rate: int, workers: int = 2, options: ConvertOptions = DEFAULT_OPTIONS) -> None:
        self.vc, self.rate, self.options = vc, rate, options
        self._readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="knnvc-read")
        # Loudness and resampling of finished outputs (numpy and soxr release the GIL), off the compute thread.
        self._chores = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="knnvc-finish")
        # One writer keeps outputs in order, so a full disk stops the batch at the first file it hits.
        self._writers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knnvc-write")
        self._writes: list[tuple[int, Job, Future[float | None]]] = []
        self._disk_full = threading.Event()
        self.interrupted = False
        self.seconds: dict[int, float] = {}  # job index -> its share of the compute, until recorded

    def __enter__(self) -> Overlap:
        return self

    def __exit__(self, *exc: object) -> None:
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._writers.shutdown(wait=True)
        self._chores.shutdown(wait=True)

    def _load(self, job: Job) -> np.ndarray | KnnvcError:
        try:
            return self.vc.load_audio(job.source)
        except KnnvcError as exc:
            return exc

    def groups(
        self, todo: list[tuple[int, Job]], size: int
    ) -> Iterator[list[tuple[int, Job, np.ndarray | KnnvcError]]]:
        """Decoded groups of up to ``size`` jobs, in order; the next group is decoded while one is used."""
        chunks = [todo[start : start + size] for start in range(0, len(todo), size)]
        futures = [[(i, job, self._readers.submit(self._load, job)) for i, job in chunk] for chunk in chunks[:1]]
        for n in range(len(chunks)):
            if n + 1 < len(chunks):
                futures.append([(i, job, self._readers.submit(self._load, job)) for i, job in chunks[n + 1]])
            yield [(i, job, future.result()) for i, job, future in futures[n]]
            futures[n] = []

    def _save(self, job: Job, finished: Future[np.ndarray]) -> float | None:
        """Write one output; None when a full disk already stopped the batch (the job is left for a rerun)."""
        if self._disk_full.is_set():
            return None
        wav = finished.result()
        try:
            audio.save(job.output, wav, sample_rate=self.rate, source_rate=self.rate)
        except DiskFullError:
            self._disk_full.set()
            raise
        return len(wav) / self.rate

    def write(self, i: int, job: Job, wav: np.ndarray) -> None:
        """Finish (``KnnVC.finish``) and write a synthesised output in the workers; the caller never waits."""
        finished = self._chores.submit(self.vc.finish, wav, self.options)
        self._writes.append((i, job, self._writers.submit(self._save, job, finished)))

    def _outcomes(self, wait: bool) -> list[tuple[int, Job, float | KnnvcError]]:
        done: list[tuple[int, Job, float | KnnvcError]] = []
        kept: list[tuple[int, Job, Future[float | None]]] = []
        for i, job, future in self._writes:
            if not (wait or future.done()):
                kept.append((i, job, future))
                continue
            try:
                seconds = future.result()
                if seconds is not None:  # None: never attempted, the disk was full
                    done.append((i, job, seconds))
            except KnnvcError as exc:
                done.append((i, job, exc))
            except KeyboardInterrupt:  # raised inside a write: that file is abandoned (atomically), stop
                self.interrupted = True
        self._writes = kept
        return done

    def finished(self) -> list[tuple[int, Job, float | KnnvcError]]:
        """Writes completed so far: (index, job, audio seconds or the error)."""
        return self._outcomes(wait=False)

    def finish(self) -> list[tuple[int, Job, float | KnnvcError]]:
        """Wait for every write handed over and return their outcomes."""
        return self._outcomes(wait=True)


def check_outputs(jobs: list[Job]) -> None:
    """Make the folders the jobs write into and prove them writable (``files.writable_folder``), once per folder:
    else ``OutputError`` naming a file that would have gone there."""
    for output in {job.output.parent: job.output for job in jobs}.values():
        try:
            files.writable_folder(output.parent)
        except OutputError as exc:
            raise type(exc)(f"{output}: {exc}") from exc


@sigterm_as_interrupt()  # SIGTERM stops the batch as Ctrl-C does (handler restored on return)
def run(
    vc: KnnVC,
    jobs: list[Job],
    voice: Voice,
    options: ConvertOptions = DEFAULT_OPTIONS,
    *,
    overwrite: bool = False,
    progress: OnProgress | None = None,
    ledger: Ledger | None = None,
) -> Report:
    """Convert every job; an existing output is skipped unless ``overwrite``. Failures are recorded, not raised.

    ``options`` (k, loudness, output rate...) go to the pipeline (``KnnVC.convert_batch`` unfinished, then
    ``KnnVC.finish`` in a worker). Files are computed in groups of ``GROUP_FILES``, their windows batched together.
    What would fail every file raises before any file is read: ``k`` above the voice's frame count
    (``UsageError``), an output folder that cannot be written (``OutputError``).
    ``progress`` gets ``knnvc.progress.Progress`` events: start,
    done, skip or fail per file (``start`` as its group begins), and encode/vocode over the windows of a group
    (with the ``job`` of a group of one file; None for several, computed together). KeyboardInterrupt stops
    after the current file has been written or abandoned (never half-written) and marks the report interrupted;
    SIGTERM does the same. A full disk (``DiskFullError``) stops the batch at once and is recorded as
    ``report.stopped``. With a ``ledger`` (``knnvc.manifest``), outputs made with other settings stop the batch
    before it starts (``StaleOutputsError``) unless ``overwrite``, and every outcome is recorded in its manifest.
    """
    voice.check_neighbours(options.k)
    check_outputs(pending(jobs, overwrite=overwrite))
    report, todo, notify = begin(jobs, overwrite=overwrite, ledger=ledger, progress=progress)
    rate = vc.output_rate(options)
    voice, options = vc.voices_for(voice, options)  # the match layer's frames, rebuilt once if a voice lacks them
    started = time.perf_counter()
    with Overlap(vc, rate, options=options) as overlap:
        try:
            for group in overlap.groups(todo, max(GROUP_FILES, vc.batch_size)):
                if report.stopped is not None:
                    break
                _convert_group(vc, group, voice, overlap, options, report, notify)
                if ledger is not None:
                    ledger.flush()  # every few seconds
        except KeyboardInterrupt:
            report.interrupted = True
        for i, job, outcome in overlap.finish():  # outputs already handed to the writer complete atomically
            _record(report, notify, i, job, outcome, overlap.seconds.pop(i, 0.0))
        report.interrupted = report.interrupted or overlap.interrupted
    if ledger is not None:
        try:
            ledger.flush(force=True)
        except KeyboardInterrupt:
            report.interrupted = True
    report.wall_seconds = time.perf_counter() - started
    return report


def begin(
    jobs: list[Job],
    *,
    overwrite: bool = False,
    ledger: Ledger | None = None,
    progress: OnProgress | None = None,
) -> tuple[Report, list[tuple[int, Job]], OnProgress]:
    """The start of a batch, local or on Ray: skip existing outputs (saying why), queue the rest in the ledger.

    Returns the report so far, the (index, job) pairs to convert, and the callback that records each outcome in
    the ledger and passes it on to ``progress``. Raises ``StaleOutputsError`` as ``Ledger.check`` does.
    """
    report = Report(total=len(jobs))
    resume = ledger.check(jobs, overwrite=overwrite) if ledger is not None else None
    notify = _recording(progress, ledger)
    todo: list[tuple[int, Job]] = []
    for i, job in enumerate(jobs):
        if job.output.exists() and not overwrite:
            report.skipped.append(job)
            report.skip_reasons[resume.reason(job) if resume is not None else "exists"] += 1
            notify(Progress("skip", i, len(jobs), job))
        else:
            todo.append((i, job))
    if ledger is not None:
        ledger.queue([job for _, job in todo])
    return report, todo, notify


def _recording(progress: OnProgress | None, ledger: Ledger | None) -> OnProgress:
    """``progress``, and the ledger's record of each finished file, as one callback."""

    def notify(event: Progress) -> None:
        if ledger is not None:
            ledger.record(event)
        if progress is not None:
            progress(event)

    return notify


def convert_group(
    vc: KnnVC,
    wavs: Sequence[np.ndarray | KnnvcError],
    voice: Voice,
    options: ConvertOptions = DEFAULT_OPTIONS,
    *,
    progress: OnProgress | None = None,
    finish: bool = True,
) -> list[tuple[np.ndarray | KnnvcError, float]]:
    """The unit of batch work, mapped by the local batch and by the Ray job (``knnvc.cluster``).

    ``finish=False`` returns the raw synthesis for the caller to finish (``KnnVC.finish``:
    loudness, output rate) elsewhere, as the local batch does in its worker threads.

    Takes decoded sources ((N_i,) float32 at 16 kHz) or the errors that decoding them raised, and returns, in
    order, each output ((M_i,) float32 at ``vc.output_rate(options)``) or its error, with the compute seconds it
    took (the group's time split by audio length). The sources are converted together; if that fails, one by
    one, so only the bad file fails. No I/O. ``progress`` gets the pipeline's events, its ``convert`` events
    indexed by position in ``wavs``.
    """
    arrays = [(n, wav) for n, wav in enumerate(wavs) if isinstance(wav, np.ndarray)]
    on_chunk = _indexed(progress, [n for n, _ in arrays], len(wavs))
    results: list[tuple[np.ndarray | KnnvcError, float]] = [(wav, 0.0) for wav in wavs]  # errors pass through
    started = time.perf_counter()
    outs: Sequence[np.ndarray | KnnvcError]
    try:
        todo = [wav for _, wav in arrays]
        outs = vc.convert_batch(todo, voice, options, progress=on_chunk, finish=finish) if arrays else []
    except KnnvcError as exc:
        if len(arrays) > 1:  # find which file failed
            return [_convert_one(vc, wav, voice, options, _indexed(progress, [n], len(wavs)), finish)
                    for n, wav in enumerate(wavs)]  # fmt: skip
        outs = [exc]
    total, samples = time.perf_counter() - started, sum(len(wav) for _, wav in arrays) or 1
    for (n, wav), out in zip(arrays, outs, strict=True):
        results[n] = (out, total * len(wav) / samples)
    return results


def _indexed(progress: OnProgress | None, positions: list[int], total: int) -> OnProgress | None:
    """``progress`` with the pipeline's ``convert`` events renumbered from its inputs to ``positions``."""
    if progress is None:
        return None

    def relay(event: Progress) -> None:
        if event.stage == "convert":
            event = replace(event, index=positions[event.index], total=total)
        progress(event)

    return relay


def _convert_one(
    vc: KnnVC,
    wav: np.ndarray | KnnvcError,
    voice: Voice,
    options: ConvertOptions,
    on_chunk: OnProgress | None,
    finish: bool,
) -> tuple[np.ndarray | KnnvcError, float]:
    if isinstance(wav, KnnvcError):
        return wav, 0.0
    started = time.perf_counter()
    try:
        out = vc.convert_batch([wav], voice, options, progress=on_chunk, finish=finish)[0]
        return out, time.perf_counter() - started
    except KnnvcError as exc:
        return exc, time.perf_counter() - started


def _convert_group(
    vc: KnnVC,
    group: list[tuple[int, Job, np.ndarray | KnnvcError]],
    voice: Voice,
    overlap: Overlap,
    options: ConvertOptions,
    report: Report,
    notify: OnProgress,
) -> None:
    """Convert one group of decoded sources together (``convert_group``) and hand the outputs to the writer.

    Every file of the group ``start``s at once (their windows are batched together); window events carry the
    file's job when the group computes one file, else none.
    """
    for i, job, wav in group:
        if isinstance(wav, np.ndarray):
            notify(Progress("start", i, report.total, job))

    computed = [job for _, job, wav in group if isinstance(wav, np.ndarray)]
    alone = computed[0] if len(computed) == 1 else None  # a file computed alone owns its window events

    def relay(event: Progress) -> None:
        if event.stage != "convert":
            notify(replace(event, job=alone))

    wavs = [wav for _, _, wav in group]  # synthesised only: Overlap.write finishes each output in a worker
    outcomes = convert_group(vc, wavs, voice, options, progress=relay, finish=False)
    for (i, job, _), (out, seconds) in zip(group, outcomes, strict=True):
        if isinstance(out, KnnvcError):
            _record(report, notify, i, job, out, seconds)
        else:
            overlap.seconds[i] = seconds
            overlap.write(i, job, out)
    for i, job, outcome in overlap.finished():
        _record(report, notify, i, job, outcome, overlap.seconds.pop(i, 0.0))


def _record(
    report: Report,
    notify: OnProgress,
    i: int,
    job: Job,
    outcome: float | KnnvcError,
    seconds: float = 0.0,
) -> None:
    """Record a finished job: its audio seconds, or its error; ``seconds`` is its share of the compute."""
    if isinstance(outcome, KnnvcError):
        log.debug("failed: %s", job.source, exc_info=outcome)
        report.failed.append(Failure(job.source, outcome))
        notify(Progress("fail", i, report.total, job, seconds=seconds, error=outcome))
        if isinstance(outcome, DiskFullError) and report.stopped is None:  # every later file would fail too
            report.stopped = outcome
        return
    report.converted.append(job)
    report.audio_seconds += outcome
    notify(Progress("done", i, report.total, job, seconds=seconds, audio_seconds=outcome))
