"""The typer applications: ``knnvc`` and its command groups. Commands register themselves on these.

Help is plain text (``rich_markup_mode=None``: option help is shown as written, brackets and all) in click's
classic shape: ``Usage: knnvc convert [OPTIONS] SOURCE REFERENCE`` and ``--k INTEGER``. ``KnnvcCommand`` gives
every command that shape, whatever typer's own defaults (``{source}``, ``<int>``) are, and usage errors the shape
of knnvc's own errors: one line, ``error: ...``, exit 2. (typer 0.29 and later: they carry click as ``typer._click``.)

Every default is shown once, the same way: ``[default: 4]``. A default that is no single value is described with
``show_default="1 on CPU, 8 on GPU"`` (shown as ``[default: 1 on CPU, 8 on GPU]``), never in the help's own words;
weights that ``KNNVC_WAVLM`` / ``KNNVC_VOCODER`` put in place of a default are shown when help is, as
``[default: /models/WavLM-Large.pt (from KNNVC_WAVLM)]``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from knnvc.errors import UsageError

_TYPE_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def _argument_name(param: TyperArgument) -> str:
    name = str(param.metavar or param.name or "").upper()
    return name + ("..." if param.nargs != 1 and not name.endswith("...") else "")


def _option_metavar(param: TyperOption, ctx: Any) -> str:
    """``<int range>`` -> ``INTEGER``, ``<list[str]>`` -> ``TEXT``, ``<path>`` -> ``PATH``."""
    label = param.display_type(ctx).strip("<>").split(" ")[0]
    label = label.removeprefix("list[").removesuffix("]").lower()
    return _TYPE_METAVARS.get(label, label.upper())


def _described_default(param: TyperArgument | TyperOption) -> str | None:
    """What ``[default: ...]`` says where typer's own words will not do: the weights that ``KNNVC_WAVLM`` or
    ``KNNVC_VOCODER`` put in place of a default name (read now, as help is shown), or a default described in words
    (``show_default="..."``); None: typer's words."""
    if isinstance(param.default, str):
        from knnvc.weights.hub import local_default  # light: no torch

        if found := local_default(param.default):
            return f"{found[0]} (from {found[1]})"
    return param.show_default if isinstance(param.show_default, str) else None


def help_record(param: TyperArgument | TyperOption, ctx: Any) -> tuple[str, str] | None:
    """``param``'s row in help: its names and its help, the default shown once as ``[default: ...]``."""
    described = _described_default(param)
    if described is None:
        return param.get_help_record(ctx)
    given, param.show_default = param.show_default, described
    try:
        record = param.get_help_record(ctx)
    finally:
        param.show_default = given
    if record is None:
        return None
    return record[0], record[1].replace(f"default: ({described})", f"default: {described}", 1)  # typer's (...)


class OneLineUsageError(ClickException):
    """typer's usage errors (a missing argument, an unknown option, a value of the wrong type) as knnvc's: one line
    on stderr, ``error: ...``, and exit 2 (``UsageError.exit_code``)."""

    exit_code = UsageError.exit_code

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.format_message()}", err=True)


def _one_line(exc: ClickUsageError, ctx: Any) -> OneLineUsageError:
    return OneLineUsageError(f"{exc.format_message().rstrip('.')}; see `{ctx.command_path} --help`")


class KnnvcCommand(TyperCommand):
    """A typer command whose help reads ``SOURCE`` and ``--k INTEGER`` (typer alone writes ``{source}``, ``<int>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = _argument_name(param)  # also what usage errors call it

    def _name_options(self, ctx: Any) -> None:
        for param in self.get_params(ctx):
            if isinstance(param, TyperOption) and param.metavar is None and not param.is_flag:
                param.metavar = _option_metavar(param, ctx)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except ClickUsageError as exc:
            raise _one_line(exc, ctx) from None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        self._name_options(ctx)
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = help_record(param, ctx) if isinstance(param, TyperArgument | TyperOption) else None
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class KnnvcGroup(TyperGroup):
    """A command group whose usage errors (``knnvc nope``) are one line, as its commands' are."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except ClickUsageError as exc:
            raise _one_line(exc, ctx) from None


class KnnvcTyper(typer.Typer):
    """``typer.Typer`` whose groups are ``KnnvcGroup`` and commands ``KnnvcCommand`` unless they ask otherwise."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", KnnvcGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # type: ignore[override]
        kwargs.setdefault("cls", KnnvcCommand)
        return super().command(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line. Called bare (``app()``: the ``knnvc`` script, ``python -m knnvc``), it is the whole
        program, and it ends the process itself once the command is done (``exit_at_once``); called with arguments
        (a caller's own ``app([...])``), it raises ``SystemExit`` as typer does."""
        if args or kwargs:
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__()
        except SystemExit as done:
            exit_at_once(done)
            raise


def exit_at_once(done: SystemExit) -> None:
    """End the process now with ``done``'s exit status, skipping the interpreter's teardown, when that is safe; else
    return (the caller raises ``done``, and Python exits as usual).

    Freeing what torch and transformers loaded takes the interpreter about a second at exit, and nothing in it is
    the command's work: every output is written and closed by then (atomic writes: fsync, then rename), and the
    batch's worker threads are joined. What a normal exit does that matters is done here, in its order: threads
    that are not daemons are waited for (while one runs, this returns and Python waits as it always does), the
    ``atexit`` functions run (logging flushed and closed, temporary folders removed, child processes of
    ``multiprocessing`` and Ray ended), then stdout and stderr are flushed; daemon threads end with the process, as
    they would. A status that is not a number (a message for Python to print) or a flush that fails (Python reports
    it, and exits 120) leave the exit to Python.
    """
    code = 0 if done.code is None else done.code
    if not isinstance(code, int):
        return
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _version(value: bool) -> None:
    if value:
        from knnvc.options import package_version

        typer.echo(f"knnvc {package_version()}")
        raise typer.Exit()


app = KnnvcTyper(
    help="knnvc: zero-shot voice conversion (kNN-VC). Say any source's words in a target speaker's voice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
voice_app = KnnvcTyper(
    help="Build and inspect saved voices (matching sets).", no_args_is_help=True, rich_markup_mode=None
)
train_app = KnnvcTyper(
    help="Train your own vocoder: prematch features, then train HiFi-GAN.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(voice_app, name="voice")
app.add_typer(train_app, name="train")


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print knnvc's version and exit.")
    ] = False,
) -> None:
    """knnvc: zero-shot voice conversion (kNN-VC). Say any source's words in a target speaker's voice."""
