"""The ``knnvc`` command: a thin typer layer over the Python API.

Heavy modules (torch, transformers, the pipeline) are imported inside the commands, so ``knnvc --help`` is
instant. Library errors are typed (``knnvc.errors``); here each becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from knnvc.constants import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM, SAMPLE_RATE
from knnvc.errors import KnnvcError, UsageError

if TYPE_CHECKING:
    from knnvc.pipeline import KnnVC

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
EXIT_INTERRUPTED = 130
EXIT_PARTIAL = 1

WavlmOpt = Annotated[str, typer.Option("--wavlm", help="WavLM: hub id, HF folder or original WavLM-Large.pt.")]
VocoderOpt = Annotated[
    str, typer.Option("--vocoder", help="Vocoder: prematched, regular, or a path to a generator checkpoint.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use cached or local weights.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Waveforms encoded together.")]
TrimOpt = Annotated[bool, typer.Option("--trim/--no-trim", help="Trim silence from both ends of each reference.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details; show tracebacks on errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]


@contextmanager
def handle_errors(verbose: bool) -> Iterator[None]:
    """Turn library errors into one line and an exit code; Ctrl-C into exit 130."""
    try:
        yield
    except KnnvcError as exc:
        if verbose:
            err.print_exception()
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if not quiet else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def parse_loudness(value: str) -> float | None:
    if value.strip().lower() in {"none", "off", "no"}:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--loudness takes a LUFS value such as -16, or 'none'; got {value!r}") from None


def make_pipeline(**options: Any) -> KnnVC:
    from knnvc.pipeline import KnnVC

    return KnnVC.from_pretrained(**options)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source audio file, or a folder searched recursively.")],
    reference: Annotated[Path, typer.Argument(help="Target speech: a file, a folder, or a saved .voice file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (for one source) or folder.")
    ] = None,
    wavlm: WavlmOpt = DEFAULT_WAVLM,
    vocoder: VocoderOpt = DEFAULT_VOCODER,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    k: Annotated[int, typer.Option("--k", min=1, help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    trim: TrimOpt = True,
    loudness: Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")] = "-16",
    sample_rate: Annotated[int, typer.Option("--sample-rate", min=1000, help="Output sample rate (Hz).")] = SAMPLE_RATE,
    batch_size: BatchOpt = 8,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")] = False,
    offline: OfflineOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Convert SOURCE (file or folder) into the voice of REFERENCE."""
    setup_logging(verbose, quiet)
    with handle_errors(verbose):
        from knnvc import batch

        target_lufs = parse_loudness(loudness)
        vc = make_pipeline(
            wavlm=wavlm,
            vocoder=vocoder,
            device=device,
            precision=precision,
            batch_size=batch_size,
            offline=offline or None,
        )
        voice = vc.voice_from(reference, trim=trim)
        jobs = batch.plan(source, output, voice.name)
        report = _run_with_progress(
            lambda progress: batch.run(
                vc,
                jobs,
                voice,
                overwrite=overwrite,
                output_sample_rate=sample_rate,
                progress=progress,
                k=k,
                loudness=target_lufs,
            ),
            total=len(jobs),
            quiet=quiet or json_out,
        )
        _finish(report, single=source.is_file(), json_out=json_out, quiet=quiet)


def _run_with_progress(work: Callable[[Callable[[Any], None]], Any], total: int, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if quiet:
        return work(lambda event: None)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("converting", total=total)

        def on_event(event: Any) -> None:
            if event.stage == "start":
                bar.update(task, description=f"converting {event.job.source.name}")
            else:
                bar.advance(task)
            if event.stage == "fail":
                err.print(f"[red]failed:[/] {event.error}", highlight=False)

        return work(on_event)


def _finish(report: Any, *, single: bool, json_out: bool, quiet: bool) -> None:
    from rich.table import Table

    if json_out:
        typer.echo(json.dumps(report.summary(), indent=2))
    elif not quiet:
        table = Table(title="knnvc convert", show_header=True)
        for col in ("converted", "skipped", "failed", "audio s", "wall s", "x real time"):
            table.add_column(col, justify="right")
        s = report.summary()
        table.add_row(
            *(str(s[c]) for c in ("converted", "skipped", "failed", "audio_seconds", "wall_seconds")),
            f"{s['realtime_factor']:.1f}",
        )
        err.print(table)
    if report.interrupted:
        err.print("[yellow]interrupted: finished files are kept; rerun the same command to convert the rest[/]")
        raise typer.Exit(EXIT_INTERRUPTED)
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
        from knnvc import weights

        result = weights.download_all(names=names or None)
        for name, location in result.items():
            out.print(f"{name}: {location}", highlight=False)


@app.command()
def info(
    device: DeviceOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Versions, the chosen device, cache folders and which weights are cached."""
    with handle_errors(False):
        from knnvc.sysinfo import system_info

        data = system_info(device)
        if json_out:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for key in ("knnvc", "python", "torch", "transformers", "device", "cuda", "knnvc_cache", "hf_cache", "offline"):
            table.add_row(key, str(data[key]))
        out.print(table)
        weights = Table("weights", "kind", "cached", "where")
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
    verbose: VerboseOpt = False,
) -> None:
    """Encode reference speech once and save it as a reusable voice (safetensors + JSON metadata)."""
    setup_logging(verbose, False)
    with handle_errors(verbose):
        from knnvc.checkpoints import load_encoder
        from knnvc.pipeline import VoiceBuilder

        if output.suffix != ".voice":
            raise UsageError(f"{output}: voice files end in .voice")
        encoder = load_encoder(wavlm, offline=offline or None)
        builder = VoiceBuilder(encoder, device=device, precision=precision, batch_size=batch_size)
        voice = builder.build_voice(list(references), trim=trim, name=name or output.stem)
        voice.save(output)
        err.print(f"wrote {output}: {voice.num_frames} frames, {voice.seconds:.1f} s of speech", highlight=False)


@voice_app.command("info")
def voice_info(
    path: Annotated[Path, typer.Argument(help="A .voice file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Print a saved voice's metadata."""
    with handle_errors(False):
        from knnvc.voice import Voice

        meta = Voice.load(path).metadata()
        if json_out:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for key in ("name", "encoder", "encoder_fingerprint", "layer", "frames", "dim", "speech_seconds", "created"):
            table.add_row(key, str(meta[key]))
        out.print(table)
        sources = Table("source", "seconds", "sha256")
        for src in meta["sources"]:
            sources.add_row(src["path"], f"{src['seconds']:.2f}", src["sha256"][:16])
        out.print(sources)


def _register_subcommands() -> None:
    from knnvc.cli_train import train_app

    app.add_typer(train_app, name="train")


_register_subcommands()
