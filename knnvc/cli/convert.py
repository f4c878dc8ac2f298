"""``knnvc convert``: one file or a folder, with rich progress and a summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.controls import (
    MatchLayerOpt,
    MorphOpt,
    MorphWeightOpt,
    StrengthOpt,
    WeightingOpt,
    controls,
    with_morph_voice,
)
from knnvc.constants import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM, WAVLM_LAYER
from knnvc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, KnnvcError
from knnvc.progress import WINDOW_STAGES, Job, Progress

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    from rich.progress import Progress as RichProgress
    from rich.progress import ProgressColumn, Task

    from knnvc.batch import Report


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source audio file, or a folder searched recursively.")],
    reference: Annotated[Path, typer.Argument(help="Target speech: a file, a folder, or a saved .voice file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (for one source) or folder (mirrored tree).")
    ] = None,
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    vocoder: common.VocoderOpt = DEFAULT_VOCODER,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    trim: common.TrimOpt = True,
    loudness: Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")] = "-16",
    sample_rate: Annotated[
        int | None, typer.Option("--sample-rate", help="Output rate in Hz (soxr) [default: the vocoder's, 16000].")
    ] = None,
    strength: StrengthOpt = 1.0,
    match_layer: MatchLayerOpt = WAVLM_LAYER,
    knn_weighting: WeightingOpt = "uniform",
    morph: MorphOpt = None,
    morph_weight: MorphWeightOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="wav, flac or ogg: for folder outputs and default file names.")
    ] = "wav",
    batch_size: common.BatchOpt = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the networks first (pays off on long folders).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")] = False,
    offline: common.OfflineOpt = False,
    json_out: common.JsonOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", help="Run on Ray: 'local', or a cluster address (extra [cluster])."),
    ] = None,
) -> None:
    """Convert SOURCE (file or folder) into the voice of REFERENCE. Existing outputs are skipped: rerun to resume."""
    with common.session(verbose, quiet):
        from knnvc.options import ConvertOptions, Models, PipelineSettings

        # What would fail every file fails here, once, before any model loads: bad values, missing or unreadable
        # inputs, the device, k against a saved voice, output folders that cannot be written.
        options = ConvertOptions(k=k, loudness=common.parse_loudness(loudness), trim=trim,
                                 output_sample_rate=sample_rate,
                                 **controls(strength, match_layer, knn_weighting, morph, morph_weight))  # fmt: skip
        running = PipelineSettings(device, precision, batch_size, compile=compile_)
        common.preflight(source, reference, device=device, precision=precision)
        from knnvc import batch, manifest
        from knnvc.voice import VOICE_SUFFIX, Voice

        saved = Voice.load(reference) if reference.suffix == VOICE_SUFFIX else None
        if saved is not None:
            saved.check_neighbours(k)
        else:
            common.check_references(reference)
        name = saved.name if saved else reference.stem if reference.is_file() else reference.resolve().name
        jobs = batch.plan(source, output, name, extension=fmt)
        batch.check_outputs(batch.pending(jobs, overwrite=overwrite))
        models = None
        if ray is not None:  # the driver builds the voice on its CPU; Ray's actors convert
            models = Models(wavlm, vocoder, replace(running, compile=False), offline or None)
            _cluster().connect(ray)
            running = PipelineSettings("cpu", "fp32", batch_size)  # with --ray the driver only builds voices
        with common.err.status("loading models", spinner="dots") if not (quiet or json_out) else common.nothing():
            from knnvc.pipeline import KnnVC

            vc = KnnVC.from_pretrained(Models(wavlm, vocoder, running, offline or None), match_layer=match_layer)
            compile_ = running.compile
            if compile_:
                vc.warm_up()
                if not (quiet or json_out):
                    common.say("compiled", "green", f"torch.compile took {vc.compile_seconds:.1f} s")
            options = with_morph_voice(vc, options, morph)  # before the settings record, which names it
            ext, compute = jobs[0].output.suffix.lower(), _cluster().compute(models) if models else None
            settings = manifest.batch_settings(
                vc, saved or reference, options, vocoder=vocoder, extension=ext, compute=compute
            )
            ledger = manifest.Ledger(batch.manifest_folder(source, jobs), settings)
            resume = ledger.check(jobs, overwrite=overwrite)  # outputs made with other settings stop here
            voice = (
                (saved or vc.build_voice(reference, trim=trim, name=name, match_layer=match_layer))
                if resume.todo
                else None
            )
        if voice is None:  # nothing to convert
            reasons = Counter(resume.reason(job) for job in jobs)
            report = batch.Report(total=len(jobs), skipped=list(jobs), skip_reasons=reasons)
        else:
            voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
            voice.check_neighbours(k)  # references: now that their frames are counted, before any file
            with BatchView(resume.todo, show=not (quiet or json_out), verbose=verbose) as view:
                if models is not None:
                    report = _cluster().run(jobs, voice, options, models, address=str(ray), overwrite=overwrite,
                                         ledger=ledger, progress=view.on_event)  # fmt: skip
                else:
                    report = batch.run(vc, jobs, voice, options, overwrite=overwrite, progress=view.on_event,
                                       ledger=ledger)  # fmt: skip
        finish(report, single=source.is_file(), json_out=json_out, quiet=quiet, verbose=verbose)


def _cluster() -> ModuleType:
    """``knnvc.cluster``, imported when ``--ray`` is used (it needs the cluster extra)."""
    from knnvc import cluster

    return cluster


def eta_column() -> ProgressColumn:
    """A rich column: time left at the average speed so far (audio seconds per wall second since converting began).

    rich's own column uses the last 30 s of updates, which a batch's bursts of finished files throw far off.
    (Built on first use: rich.progress stays out of ``knnvc --help``.)
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed, done, total = task.elapsed, task.completed, task.total
            if not elapsed or done <= 0 or total is None:
                return Text("-:--:--", style="progress.remaining")
            left = max(0.0, (total - done) * elapsed / done)
            hours, minutes, seconds = int(left // 3600), int(left % 3600 // 60), int(left % 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return Eta()


class BatchView:
    """Rich progress on stderr: one bar over the files (ETA by audio seconds), one over the current file's windows.

    The bar names the files the pipeline is converting (their ``start`` events; a group's files are computed
    together), not ones being decoded ahead. A file's audio seconds count as done when it is written, and within a
    file converted alone by its windows.
    """

    def __init__(
        self, todo: list[Job], *, show: bool, verbose: bool, clock: Callable[[], float] | None = None
    ) -> None:
        from knnvc.audio import duration_seconds

        self.show, self.verbose, self.clock = show, verbose, clock
        self.lengths = {job.source: _safe_duration(duration_seconds, job.source) for job in todo}
        self.credited: dict[Path, float] = {}  # audio seconds of each file counted as converted so far
        self.running: list[Job] = []  # started, not yet done or failed
        self.files, self.done, self.failed = len(todo), 0, 0
        self.bar: RichProgress | None = None

    def __enter__(self) -> BatchView:
        from rich.progress import BarColumn, TextColumn

        if not self.show:
            return self
        info = TextColumn("{task.fields[info]}")
        columns = (TextColumn("{task.description}"), BarColumn(), info, eta_column())
        self.bar = common.progress_bar(*columns, get_time=self.clock)
        self.bar.start()
        self.files_task = self.bar.add_task("converting", total=sum(self.lengths.values()) or None, info=self._info())
        self.chunk_task = self.bar.add_task("", total=None, visible=False, info="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _info(self) -> str:
        return f"{self.done}/{self.files} files" + (f", {self.failed} failed" if self.failed else "")

    def _credit(self, job: Job | None, fraction: float) -> None:
        """Count ``fraction`` of ``job``'s audio as converted (never less than before)."""
        if job is None or self.bar is None:
            return
        seconds = self.lengths.get(job.source, 0.0) * min(1.0, fraction)
        gain = seconds - self.credited.get(job.source, 0.0)
        if gain > 0:
            self.credited[job.source] = seconds
            self.bar.update(self.files_task, advance=gain)

    def on_event(self, event: Progress) -> None:
        if self.bar is None or event.job is None:
            return
        job, stage = event.job, event.stage
        if stage == "start":
            self.running.append(job)
            self._describe()
        elif stage in WINDOW_STAGES:
            self._window(event)
        elif stage == "skip":
            if self.verbose:
                skipped = f"skipped {common.shown(job.output)} (exists; --overwrite replaces it)"
                self.bar.console.print(skipped, markup=False)
        else:
            self._finished(event)

    def _describe(self) -> None:
        """Name the files being converted: the first of the group, and how many more."""
        assert self.bar is not None
        if self.running:
            more = f" (+{len(self.running) - 1})" if len(self.running) > 1 else ""
            self.bar.update(self.files_task, description=f"converting {self.running[0].source.name}{more}")

    def _window(self, event: Progress) -> None:
        """Windows of a long file: their own bar, and half of the file's audio per stage (encode, vocode)."""
        assert self.bar is not None
        done, total = event.index, event.total or 1
        self._credit(event.job, 0.5 * (done / total + (event.stage == "vocode")))
        if total > 1:
            self.bar.update(self.chunk_task, description=f"  {event.stage} windows", completed=done, total=total,
                            visible=True, info=f"{done}/{total}")  # fmt: skip

    def _finished(self, event: Progress) -> None:
        assert self.bar is not None and event.job is not None
        job = event.job
        self.done += 1
        if job in self.running:
            self.running.remove(job)
            self._describe()
        if event.stage == "fail" and not self.credited.get(job.source):  # never computed: no longer to come
            self.failed += 1
            total = self.bar.tasks[self.files_task].total
            self.bar.update(self.files_task, total=max(0.0, (total or 0.0) - self.lengths.get(job.source, 0.0)))
        else:
            self.failed += event.stage == "fail"
            self._credit(job, 1.0)
        self.bar.update(self.files_task, info=self._info())
        self.bar.update(self.chunk_task, visible=False)
        if event.stage == "done":
            self.bar.console.print(
                f"{common.shown(job.output)}: {event.audio_seconds:.1f} s of audio in {event.seconds:.2f} s",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


def _safe_duration(measure: Callable[[Path], float], path: Path) -> float:
    """The header's duration, or 0 for a file whose header cannot be read (it will fail to convert anyway)."""
    try:
        return float(measure(path))
    except KnnvcError:
        return 0.0


def finish(report: Report, *, single: bool, json_out: bool, quiet: bool, verbose: bool) -> None:
    """Summary (a table on stderr for a folder, or JSON on stdout), one line per failure, then the exit status.

    One source file needs no table: its line (written, skipped, or the error) says it all.
    """
    from rich.table import Table

    s = report.summary()
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    elif not quiet and not single:
        table = Table(title="knnvc convert")
        for col in ("files", "converted", "skipped", "failed", "audio s", "wall s", "real-time factor"):
            table.add_column(col, justify="right")
        keys = ("files", "converted", "skipped", "failed", "audio_seconds", "wall_seconds")
        table.add_row(*(str(s[c]) for c in keys), f"{report.realtime_factor:.3f}")
        common.err.print(table)
    if report.skipped and not (quiet or json_out):
        common.say("skipped:", "yellow", skip_line(report))
    for failure in report.failed:
        if verbose:
            from rich.traceback import Traceback

            exc = failure.error
            common.err.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        common.say("error:" if single else "failed:", "bold red", _failure_line(failure.source, failure.error))
    if report.interrupted:
        common.say("interrupted:", "yellow", "finished files are kept; rerun the same command to convert the rest")
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.stopped is not None:  # a full disk: the batch stopped at once
        kept = "finished files are kept; fix the error above, then rerun to convert the rest"
        common.say("stopped:", "bold red", kept)
        raise typer.Exit(report.stopped.exit_code)
    if report.failed:
        raise typer.Exit(report.failed[0].error.exit_code if single else EXIT_PARTIAL)


def skip_line(report: Report) -> str:
    """How many existing outputs were kept, and why (from the output folder's settings record)."""
    why = report.skip_reasons
    parts = [f"{why['done']} already converted with these settings"] if why["done"] else []
    if why["unrecorded"] or why["exists"]:
        parts.append(f"{why['unrecorded'] + why['exists']} with no settings record (kept as they are)")
    return f"{len(report.skipped)} existing output(s): {', '.join(parts)}; --overwrite re-converts them"


def _failure_line(source: Path, error: KnnvcError) -> str:
    """``FILE: why``, naming the file once (most messages already name it)."""
    message = common.cli_words(str(error))
    name = common.shown(source)
    return message if str(source) in message or name in message else f"{name}: {message}"
