"""Many conversions against one voice: resume by skipping, per-file failures, progress.

``knnvc.batch.plan.plan`` maps sources to outputs (a file to a file, a folder to a mirrored tree); ``run`` converts
each job, writes atomically, records failures instead of stopping, and reports progress through callbacks. The CLI
is a thin layer over these two functions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from knnvc.batch.plan import Failure, Report, check_outputs, pending
from knnvc.batch.workers import Overlap
from knnvc.errors import DiskFullError, KnnvcError
from knnvc.options import DEFAULT_OPTIONS, ConvertOptions
from knnvc.progress import Job, OnProgress, Progress
from knnvc.runtime.interrupt import sigterm_as_interrupt

if TYPE_CHECKING:
    from knnvc.batch.manifest import Ledger
    from knnvc.pipeline import KnnVC, Target


log = logging.getLogger(__name__)


GROUP_FILES = 16  # files decoded and computed together; their windows are batched by the pipeline's batch_size


@sigterm_as_interrupt()  # SIGTERM stops the batch as Ctrl-C does (handler restored on return)
def run(
    vc: KnnVC,
    jobs: list[Job],
    voice: Target,
    options: ConvertOptions = DEFAULT_OPTIONS,
    *,
    overwrite: bool = False,
    progress: OnProgress | None = None,
    ledger: Ledger | None = None,
) -> Report:
    """Convert every job; an existing output is skipped unless ``overwrite``. Failures are recorded, not raised.

    ``options`` (k, loudness, output rate...) go to the pipeline (``KnnVC.convert_batch`` unfinished, then
    ``KnnVC.finish`` in a worker). Files are computed in groups of ``GROUP_FILES``, their windows batched together.
    ``voice`` is a ``Voice`` or a ``Pair`` (which converts with its map). What would fail every file raises before
    any file is read: a target the method cannot use (``KnnVC.check_target``: ``k`` above the voice's frame count,
    too little speech for MKL-VC, another encoder's voice or pair), an output folder that cannot be written
    (``OutputError``).
    ``progress`` gets ``knnvc.progress.Progress`` events: start,
    done, skip or fail per file (``start`` as its group begins), and encode/vocode over the windows of a group
    (with the ``job`` of a group of one file; None for several, computed together). KeyboardInterrupt stops
    after the current file has been written or abandoned (never half-written) and marks the report interrupted;
    SIGTERM does the same. A full disk (``DiskFullError``) stops the batch at once and is recorded as
    ``report.stopped``. With a ``ledger`` (``knnvc.batch.manifest``), outputs made with other settings stop the batch
    before it starts (``StaleOutputsError``) unless ``overwrite``, and every outcome is recorded in its manifest.
    """
    vc.check_target(voice, options)
    check_outputs(pending(jobs, overwrite=overwrite))
    vc.load_vocoder()  # missing vocoder weights stop the batch once, not every file
    report, todo, notify = begin(jobs, overwrite=overwrite, ledger=ledger, progress=progress)
    rate = vc.output_rate(options)
    voice, options = vc.voices_for(voice, options)  # the match layer's frames, rebuilt once if a voice lacks them
    started = time.perf_counter()
    tags = ledger.tags if ledger is not None else None  # a one-file output carries its settings record
    with Overlap(vc.load_audio, functools.partial(vc.finish, options=options), rate, tags=tags) as overlap:
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
    """The start of a batch, local or on Ray: skip existing outputs (saying why), sort out stale ones (the ledger).

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
    voice: Target,
    options: ConvertOptions = DEFAULT_OPTIONS,
    *,
    progress: OnProgress | None = None,
    finish: bool = True,
) -> list[tuple[np.ndarray | KnnvcError, float]]:
    """The unit of batch work, mapped by the local batch and by the Ray job (``knnvc.batch.cluster``).

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
    voice: Target,
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
    voice: Target,
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
