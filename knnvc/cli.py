"""The ``knnvc`` command: a thin typer layer over the Python API (``knnvc.api``, ``knnvc.batch``).

Heavy modules (torch, transformers, the pipeline) are imported inside the commands, so ``knnvc --help`` is
instant. Library errors are typed (``knnvc.errors``); here each becomes one line on stderr and its exit code.
Everything human goes to stderr; stdout carries only data (``--json``, ``info``, ``voice info``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from knnvc.constants import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM
from knnvc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, KnnvcError, UsageError

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress as RichProgress

    from knnvc.batch import Job, Progress, Report

app = typer.Typer(
    help="knnvc: zero-shot voice conversion (kNN-VC). Say any source's words in a target speaker's voice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
voice_app = typer.Typer(help="Build and inspect saved voices (matching sets).", no_args_is_help=True)
app.add_typer(voice_app, name="voice")

err = Console(stderr=True)
out = Console()

WavlmOpt = Annotated[str, typer.Option("--wavlm", help="WavLM: hub id, HF folder or original WavLM-Large.pt.")]
VocoderOpt = Annotated[
    str, typer.Option("--vocoder", help="Vocoder: prematched, regular, or a path to a generator checkpoint.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use cached or local weights.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Waveforms (or windows of long audio) encoded together.")]
TrimOpt = Annotated[bool, typer.Option("--trim/--no-trim", help="Trim silence from both ends of each reference.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details; show tracebacks on errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (and nothing else there).")]


def say(label: str, style: str, message: str) -> None:
    """One unwrapped line on stderr: a styled label, then ``message`` taken literally (no rich markup)."""
    from rich.text import Text

    err.print(Text.assemble((label, style), " ", message), soft_wrap=True, highlight=False)


@contextmanager
def handle_errors(verbose: bool) -> Iterator[None]:
    """Turn library errors into one line and an exit code (tracebacks only when verbose); Ctrl-C into 130."""
    try:
        yield
    except KnnvcError as exc:
        if verbose:
            err.print_exception()
        say("error:", "bold red", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        say("interrupted", "yellow", "")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Route the ``knnvc`` loggers to stderr through rich: DEBUG when verbose, ERROR when quiet, else WARNING."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("knnvc")
    for old in [h for h in logger.handlers if isinstance(h, RichHandler) and h.console is err]:
        logger.removeHandler(old)
    logger.addHandler(RichHandler(console=err, show_time=False, show_path=False, rich_tracebacks=True))
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


def parse_loudness(value: str) -> float | None:
    if value.strip().lower() in {"none", "off", "no"}:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--loudness takes a LUFS value such as -16, or 'none'; got {value!r}") from None


def shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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

        target_lufs = parse_loudness(loudness)  # bad values fail here, before anything heavy is imported
        api.check_options(k=k, output_sample_rate=sample_rate, batch_size=batch_size)
        from knnvc import batch
        from knnvc.voice import VOICE_SUFFIX, Voice

        saved = Voice.load(reference) if reference.suffix == VOICE_SUFFIX else None
        name = saved.name if saved else reference.stem if reference.is_file() else reference.resolve().name
        jobs = batch.plan(source, output, name, extension=fmt)
        todo = batch.pending(jobs, overwrite=overwrite)
        if not todo:
            report = batch.Report(total=len(jobs), skipped=list(jobs))
        else:
            with err.status("loading models", spinner="dots") if not (quiet or json_out) else _nothing():
                vc = api.load_pipeline(
                    wavlm, vocoder, device=device, precision=precision, batch_size=batch_size, offline=offline or None
                )
                voice = saved or vc.build_voice(reference, trim=trim, name=name)
                voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
            with BatchView(todo, show=not (quiet or json_out), verbose=verbose) as view:
                report = batch.run(
                    vc, jobs, voice, overwrite=overwrite, output_sample_rate=sample_rate, progress=view.on_event,
                    on_chunk=view.on_chunk, k=k, loudness=target_lufs,
                )  # fmt: skip
        finish(report, single=source.is_file(), json_out=json_out, quiet=quiet, verbose=verbose)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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


@app.command()
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Registry names (default: all).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Prefetch the published weights into the caches (needs internet)."""
    setup_logging(verbose, False)
    with handle_errors(verbose):
        from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        from knnvc import weights

        for name in names or []:
            weights.get_entry(name)  # unknown names fail before anything is drawn
        columns = (TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=err, transient=True) as bar:

            def factory(entry: weights.WeightsEntry) -> weights.Progress:
                task = bar.add_task(entry.name, total=None)
                return lambda done, total: bar.update(task, completed=done, total=total)

            result = weights.download_all(names=names or None, progress_factory=factory)
        for name, location in result.items():
            out.print(f"{name}: {location}", highlight=False, soft_wrap=True)


@app.command()
def info(device: DeviceOpt = "auto", json_out: JsonOpt = False) -> None:
    """Versions, the chosen device, cache folders and which weights are cached."""
    with handle_errors(False):
        from knnvc.sysinfo import system_info

        data = system_info(device)
        if json_out:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.table import Column, Table

        table = Table(show_header=False, box=None)
        for key in ("knnvc", "python", "torch", "transformers", "device", "cuda", "knnvc_cache", "hf_cache", "offline"):
            table.add_row(key, str(data[key]))
        out.print(table)
        weights = Table("weights", "kind", "cached", Column("where", overflow="fold"))
        for row in data["weights"]:
            weights.add_row(row["name"], row["kind"], "yes" if row["cached"] else "no", row["path"] or row["source"])
        out.print(weights)


@voice_app.command("build")
def voice_build(
    references: Annotated[list[Path], typer.Argument(help="Reference files and/or folders of the target speaker.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write NAME.voice.")],
    name: Annotated[str | None, typer.Option("--name", help="Voice name (default: the output's stem).")] = None,
    wavlm: WavlmOpt = DEFAULT_WAVLM,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    trim: TrimOpt = True,
    batch_size: BatchOpt = 8,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Encode reference speech once and save it as a reusable voice (safetensors + JSON metadata)."""
    setup_logging(verbose, quiet)
    with handle_errors(verbose):
        from knnvc import api
        from knnvc.voice import VOICE_SUFFIX

        if output.suffix != VOICE_SUFFIX:
            raise UsageError(f"{output}: voice files end in {VOICE_SUFFIX}")
        api.check_options(batch_size=batch_size)
        builder = api.load_voice_builder(
            wavlm, device=device, precision=precision, batch_size=batch_size, offline=offline or None
        )
        voice = builder.build_voice(list(references), trim=trim, name=name or output.stem)
        voice.save(output)
        if not quiet:
            say("wrote", "green", f"{output}: {voice.num_frames} frames, {voice.seconds:.1f} s of speech")


@voice_app.command("info")
def voice_info(path: Annotated[Path, typer.Argument(help="A .voice file.")], json_out: JsonOpt = False) -> None:
    """Print a saved voice's metadata: encoder and layer, sources and their hashes, speech seconds, frames."""
    with handle_errors(False):
        from knnvc.voice import Voice

        meta = Voice.load(path).metadata()
        if json_out:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.table import Column, Table

        table = Table(show_header=False, box=None)
        for key in ("name", "encoder", "encoder_fingerprint", "layer", "frames", "dim", "speech_seconds", "created"):
            table.add_row(key, str(meta[key]))
        paths = [src["path"] for src in meta["sources"]]
        try:
            root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
        except ValueError:  # absolute and relative paths mixed
            root = ""
        table.add_row("sources in", root or ".")
        out.print(table)
        sources = Table(Column("source", overflow="fold"), "seconds", "sha256")
        for src in meta["sources"]:  # relative to their common folder, so long paths stay readable
            sources.add_row(os.path.relpath(src["path"], root) if root else src["path"], f"{src['seconds']:.2f}",
                            src["sha256"][:16])  # fmt: skip
        out.print(sources)


def _register_subcommands() -> None:
    from knnvc.cli_train import train_app

    app.add_typer(train_app, name="train")


_register_subcommands()
