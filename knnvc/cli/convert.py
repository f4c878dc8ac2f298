"""``knnvc convert``: one file or a folder, with rich progress and a summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli.app import app
from knnvc.cli.common import (
    BatchOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    TrimOpt,
    VerboseOpt,
    VocoderOpt,
    WavlmOpt,
    err,
    handle_errors,
    nothing,
    parse_loudness,
    say,
    setup_logging,
    shown,
)
from knnvc.constants import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM
from knnvc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, KnnvcError

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress as RichProgress

    from knnvc.batch import Job, Progress, Report


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source audio file, or a folder searched recursively.")],
    reference: Annotated[Path, typer.Argument(help="Target speech: a file, a folder, or a saved .voice file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (for one source) or folder (mirrored tree).")
    ] = None,
    wavlm: WavlmOpt = DEFAULT_WAVLM,
    vocoder: VocoderOpt = DEFAULT_VOCODER,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    trim: TrimOpt = True,
    loudness: Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")] = "-16",
    sample_rate: Annotated[
        int | None, typer.Option("--sample-rate", help="Output rate in Hz (soxr) [default: the vocoder's, 16000].")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="wav, flac or ogg: for folder outputs and default file names.")
    ] = "wav",
    batch_size: BatchOpt = 8,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the networks first (pays off on long folders).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")] = False,
    offline: OfflineOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Convert SOURCE (file or folder) into the voice of REFERENCE. Existing outputs are skipped: rerun to resume."""
    setup_logging(verbose, quiet)
    with handle_errors(verbose):
        from knnvc import api
        from knnvc.options import ConvertOptions

        # bad values fail here, before anything heavy is imported
        options = ConvertOptions(k=k, loudness=parse_loudness(loudness), trim=trim, output_sample_rate=sample_rate)
        api.check_options(batch_size=batch_size)
        from knnvc import batch, manifest
        from knnvc.voice import VOICE_SUFFIX, Voice

        saved = Voice.load(reference) if reference.suffix == VOICE_SUFFIX else None
        name = saved.name if saved else reference.stem if reference.is_file() else reference.resolve().name
        jobs = batch.plan(source, output, name, extension=fmt)
        with err.status("loading models", spinner="dots") if not (quiet or json_out) else nothing():
            from knnvc.pipeline import KnnVC

            vc = KnnVC.from_pretrained(
                wavlm, vocoder, device=device, precision=precision, batch_size=batch_size, offline=offline or None,
                compile=compile_,
            )  # fmt: skip
            if compile_:
                vc.warm_up()
                if not (quiet or json_out):
                    say("compiled", "green", f"torch.compile took {vc.compile_seconds:.1f} s")
            ext = jobs[0].output.suffix.lower()
            settings = manifest.batch_settings(vc, saved or reference, options, vocoder=vocoder, extension=ext)
            ledger = manifest.Ledger(batch.manifest_folder(source, jobs), settings)
            resume = ledger.check(jobs, overwrite=overwrite)  # outputs made with other settings stop here
            voice = (saved or vc.build_voice(reference, trim=trim, name=name)) if resume.todo else None
        if voice is None:  # nothing to convert
            reasons = Counter(resume.reason(job) for job in jobs)
            report = batch.Report(total=len(jobs), skipped=list(jobs), skip_reasons=reasons)
        else:
            voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
            with BatchView(resume.todo, show=not (quiet or json_out), verbose=verbose) as view:
                report = batch.run(vc, jobs, voice, options, overwrite=overwrite, progress=view.on_event,
                                   on_chunk=view.on_chunk, ledger=ledger)  # fmt: skip
        finish(report, single=source.is_file(), json_out=json_out, quiet=quiet, verbose=verbose)


class BatchView:
    """Rich progress on stderr: one bar over the files (ETA by audio seconds), one over the current file's windows."""

    def __init__(self, todo: list[Job], *, show: bool, verbose: bool) -> None:
        from knnvc.audio import duration_seconds

        self.show, self.verbose = show, verbose
        self.lengths = {job.source: _safe_duration(duration_seconds, job.source) for job in todo}
        self.files, self.done, self.failed = len(todo), 0, 0
        self.bar: RichProgress | None = None

    def __enter__(self) -> BatchView:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if not self.show:
            return self
        info = TextColumn("{task.fields[info]}")
        columns = (TextColumn("{task.description}"), BarColumn(), info, TimeRemainingColumn())
        self.bar = Progress(*columns, console=err, transient=True)
        self.bar.start()
        self.files_task = self.bar.add_task("converting", total=sum(self.lengths.values()) or None, info=self._info())
        self.chunk_task = self.bar.add_task("", total=None, visible=False, info="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _info(self) -> str:
        return f"{self.done}/{self.files} files" + (f", {self.failed} failed" if self.failed else "")

    def on_event(self, event: Progress) -> None:
        if self.bar is None:
            return
        job = event.job
        if event.stage == "start":
            self.bar.update(self.files_task, description=f"converting {job.source.name}")
            return
        if event.stage == "skip":
            if self.verbose:
                self.bar.console.print(f"skipped {shown(job.output)} (exists; --overwrite replaces it)", markup=False)
            return
        self.done += 1
        self.failed += event.stage == "fail"
        self.bar.update(self.files_task, advance=self.lengths.get(job.source, 0.0), info=self._info())
        self.bar.update(self.chunk_task, visible=False)
        if event.stage == "done":
            self.bar.console.print(
                f"{shown(job.output)}: {event.audio_seconds:.1f} s of audio in {event.seconds:.2f} s",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip

    def on_chunk(self, stage: str, done: int, total: int) -> None:
        if self.bar is not None and total > 1:
            self.bar.update(self.chunk_task, description=f"  {stage} windows", completed=done, total=total,
                            visible=True, info=f"{done}/{total}")  # fmt: skip


def _safe_duration(measure: Callable[[Path], float], path: Path) -> float:
    """The header's duration, or 0 for a file whose header cannot be read (it will fail to convert anyway)."""
    try:
        return float(measure(path))
    except KnnvcError:
        return 0.0


def finish(report: Report, *, single: bool, json_out: bool, quiet: bool, verbose: bool) -> None:
    """Summary (a table on stderr, or JSON on stdout), one line per failure, then the exit status."""
    from rich.table import Table

    s = report.summary()
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    elif not quiet:
        table = Table(title="knnvc convert")
        for col in ("files", "converted", "skipped", "failed", "audio s", "wall s", "real-time factor"):
            table.add_column(col, justify="right")
        keys = ("files", "converted", "skipped", "failed", "audio_seconds", "wall_seconds")
        table.add_row(*(str(s[c]) for c in keys), f"{report.realtime_factor:.3f}")
        err.print(table)
    if report.skipped and not (quiet or json_out):
        say("skipped:", "yellow", skip_line(report))
    for failure in report.failed:
        if verbose:
            from rich.traceback import Traceback

            exc = failure.error
            err.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        say("failed:", "bold red", f"{shown(failure.source)}: {failure.error}")
    if report.interrupted:
        say("interrupted:", "yellow", "finished files are kept; rerun the same command to convert the rest")
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.stopped is not None:  # a full disk: the batch stopped at once
        say("stopped:", "bold red", "finished files are kept; fix the error above, then rerun to convert the rest")
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
