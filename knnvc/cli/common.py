"""What every command shares: the consoles, option types, error mapping, logging and small parsers.

Everything human goes to stderr; stdout carries only data (``--json``, ``info``, ``voice info``). Library errors are
typed (``knnvc.errors``); ``handle_errors`` turns each into one line on stderr and its exit code.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console

from knnvc.errors import EXIT_INTERRUPTED, ExtraError, InputError, KnnvcError, UsageError, missing_extra
from knnvc.options import DEFAULT_VOCODER, DEFAULT_WAVLM, Models, PipelineSettings

if TYPE_CHECKING:
    from rich.progress import Progress as Bar

Command = TypeVar("Command", bound=Callable[..., Any])

err = Console(stderr=True)
out = Console()

WavlmOpt = Annotated[str, typer.Option("--wavlm", help="WavLM: hub id, HF folder or original WavLM-Large.pt.")]
VocoderOpt = Annotated[
    str, typer.Option("--vocoder", help="Vocoder: prematched, regular, or a path to a generator checkpoint.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp32), fp32, bf16 (GPU, AMX/AVX512 CPU), fp16.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use cached or local weights.")]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Its name, which converted files are named after.", show_default="the output's stem"),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist (never an input).")]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Waveforms, or windows of long audio, computed together.",
                 show_default="1 on CPU, 8 on GPU"),  # fmt: skip
]
TrimOpt = Annotated[bool, typer.Option("--trim/--no-trim", help="Trim silence from both ends of each reference.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log details; show tracebacks on errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (and nothing else there).")]


def pipeline(
    wavlm: WavlmOpt = DEFAULT_WAVLM,
    vocoder: VocoderOpt = DEFAULT_VOCODER,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None,
    offline: OfflineOpt = False,
) -> Models:
    """The model options of commands that load one pipeline (``takes(pipeline)``), as the ``Models`` to load
    (typer itself refuses a batch size below 1)."""
    settings = PipelineSettings(device=device, precision=precision, batch_size=batch_size)
    return Models(wavlm, vocoder, settings, offline or None)


def say(label: str, style: str, message: str) -> None:
    """One unwrapped line on stderr: a styled label, then ``message`` taken literally (no rich markup)."""
    from rich.text import Text

    err.print(Text.assemble((label, style), " ", message), soft_wrap=True, highlight=False)


_PYTHON_WORDS = re.compile(  # keyword arguments that are also flags; not inside quotes ('k=1,4' is a value)
    r"(?<!['\w])(device|precision|k|loudness|trim|sample_rate|batch_size|vocoder|wavlm|format|overwrite|offline"
    r"|asr|verifier|transcripts)=('[^']*'|[\w.:-]+)"
)


def _flag(match: re.Match[str]) -> str:
    name, value = match.group(1).replace("_", "-"), match.group(2).strip("'")
    if value in ("True", "False"):
        return f"--{name}" if value == "True" else f"--no-{name}"
    return f"--{name} {'none' if value == 'None' else value}"


def cli_words(message: str) -> str:
    """A library message in the CLI's words: ``device='cpu'`` -> ``--device cpu``, ``trim=False`` -> ``--no-trim``.

    The library writes its errors for Python callers (keyword arguments); the CLI shows its own flags.
    """
    return _PYTHON_WORDS.sub(_flag, message)


def require_inputs(*paths: Path | None) -> None:
    """Every given input path exists: else ``InputError`` (exit 3), the same in every command."""
    for path in paths:
        if path is not None and not path.exists():
            raise InputError(f"{path}: no such file or folder; check the path")


def check_references(reference: Path) -> None:
    """Every reference file (REFERENCE, or the audio in the folder) has a readable audio header: else AudioError."""
    from knnvc.audio.decode import audio_files, duration_seconds

    files = audio_files(reference) if reference.is_dir() else [reference]
    if not files:
        raise InputError(f"{reference}: folder holds no audio files; give reference speech")
    for path in files:
        duration_seconds(path)


def check_device(device: str, precision: str = "auto") -> None:
    """Resolve ``--device`` and ``--precision`` now (imports torch), before any model or file is loaded."""
    from knnvc.runtime.devices import resolve_device, resolve_precision

    resolve_precision(precision, resolve_device(device))


def preflight(*paths: Path | None, device: str, precision: str = "auto") -> None:
    """What a command that loads models checks first: its inputs exist, then its device and precision resolve."""
    require_inputs(*paths)
    check_device(device, precision)


@contextmanager
def needs_extra(feature: str, extra: str) -> Iterator[None]:
    """The imports of an optional extra's packages: one that is not installed is ``ExtraError`` (exit 8), naming
    the pip command. A failing import of knnvc's own is a bug, and stays a traceback."""
    try:
        yield
    except ImportError as exc:
        package = (exc.name or "").partition(".")[0]
        if not package or package == "knnvc":
            raise
        raise missing_extra(feature, extra, package) from exc


_EXTRA_HINT = re.compile(r"knnvc\[(\w+)\]")


def as_extra(exc: KnnvcError) -> KnnvcError:
    """``exc``, or the ``ExtraError`` it stands for: a library error raised because an optional package did not
    import (an ``ImportError`` as its cause or context) that names the extra to install (``knnvc[eval]``).

    So every missing extra exits 8 with the same words, also where the library still raises another type for it
    (``knnvc.eval.models.need``: ``WeightsError``; ``knnvc.batch.cluster``: ``UsageError``).
    """
    missing, hint = exc.__cause__ or exc.__context__, _EXTRA_HINT.search(str(exc))
    if isinstance(exc, ExtraError) or not isinstance(missing, ImportError) or hint is None:
        return exc
    subject = str(exc).split(" needs ", 1)[0] if " needs " in str(exc) else _command_path()
    return missing_extra(subject, hint.group(1), (missing.name or "").partition(".")[0] or None)


def _command_path() -> str:
    """``knnvc voice build``: the command running now (typer's test runner would call the program "root")."""
    from typer._click.globals import get_current_context

    ctx, names = get_current_context(silent=True), []
    while ctx is not None and ctx.parent is not None:
        names.append(str(ctx.info_name))
        ctx = ctx.parent
    return " ".join(["knnvc", *reversed(names)])


@contextmanager
def handle_errors(verbose: bool) -> Iterator[None]:
    """Turn library errors into one line and an exit code (tracebacks only when verbose); Ctrl-C into 130."""
    try:
        yield
    except KnnvcError as caught:
        if verbose:
            err.print_exception()
        exc = as_extra(caught)
        say("error:", "bold red", cli_words(str(exc)))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        say("interrupted", "yellow", "")
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def session(verbose: bool, quiet: bool) -> Iterator[None]:
    """A command's body: logging set up (``setup_logging``), then library errors mapped (``handle_errors``)."""
    setup_logging(verbose, quiet)
    with handle_errors(verbose):
        yield


def takes(group: Callable[..., Any]) -> Callable[[Command], Command]:
    """Let commands share a group of options: ``group``'s own typer parameters take the place (in the signature,
    so in ``--help`` too) of the command's parameter named like ``group``, which receives ``group(**values)``.

    ``group`` only gathers the values (typer calls it before any error is mapped); it checks nothing.
    """

    def decorate(command: Command) -> Command:
        grouped = list(inspect.signature(group, eval_str=True).parameters.values())
        names = [p.name for p in grouped]
        own = inspect.signature(command, eval_str=True)
        spliced = [q for p in own.parameters.values() for q in (grouped if p.name == group.__name__ else [p])]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in spliced]  # typer passes keywords

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            gathered = group(**{name: values.pop(name) for name in names})
            return command(**values, **{group.__name__: gathered})

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": own.return_annotation}
        return cast(Command, run)

    return decorate


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Route the ``knnvc`` loggers to stderr through rich: DEBUG when verbose, ERROR when quiet, else WARNING."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("knnvc")
    for old in [h for h in logger.handlers if isinstance(h, RichHandler) and h.console is err]:
        logger.removeHandler(old)
    logger.addHandler(RichHandler(console=err, show_time=False, show_path=False, rich_tracebacks=True))
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


def progress_bar(*columns: Any, quiet: bool = False, **options: Any) -> Bar:
    """A transient rich progress bar on stderr, drawn only on a terminal (elsewhere rich would leave a blank line
    where it was). ``options`` go to ``rich.progress.Progress`` (``get_time``...)."""
    from rich.progress import Progress

    return Progress(*columns, console=err, transient=True, disable=quiet or not err.is_terminal, **options)


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


@contextmanager
def nothing() -> Iterator[None]:
    """A context that does nothing (in place of a spinner when output is quiet)."""
    yield


def show_saved(meta: Mapping[str, Any], keys: Sequence[str], sides: Mapping[str, list[dict[str, Any]]]) -> None:
    """Print what a saved voice or pair holds: ``keys`` of its metadata as a two-column table, then the files of
    each side (``sources``, ``targets``...: their paths relative to the side's common folder, seconds, sha256)."""
    from rich.table import Column, Table

    table = Table(show_header=False, box=None)
    for key in keys:
        table.add_row(key, "none" if meta[key] is None else str(meta[key]))
    found = {side: _relative(files) for side, files in sides.items()}
    for side, (root, _) in found.items():
        table.add_row(f"{side} in", root or ".")
    out.print(table)
    labelled = len(sides) > 1
    files = Table(*(["side"] if labelled else []), Column("file", overflow="fold"), "seconds", "sha256")
    for side, (_, listed) in found.items():
        for src in listed:
            cells = [src["path"], f"{src['seconds']:.2f}", src["sha256"][:16]]
            files.add_row(*([side.removesuffix("s")] if labelled else []), *cells)
    out.print(files)


def _relative(files: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The common folder of ``files`` ("" when none), and ``files`` with their paths relative to it (so long paths
    stay readable)."""
    paths = [f["path"] for f in files]
    try:
        root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    except ValueError:  # absolute and relative paths mixed
        root = ""
    return root, [{**f, "path": os.path.relpath(f["path"], root)} for f in files] if root else files
