"""The first hour with ``knnvc``: what a newcomer reads in ``--help`` and ``knnvc info``, and what a missing extra
says. Each help is read as a user reads it (``knnvc COMMAND --help``, here unwrapped: a very wide terminal), for
every command of the typer app, found by walking it.

Missing weights (which name ``knnvc download``, ``KNNVC_WAVLM``/``KNNVC_VOCODER`` and ``--wavlm``/``--vocoder
PATH``) are tested in ``tests/test_cli.py`` (``test_no_weights_offline_names_every_way_out``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner, Result

import knnvc.errors
from knnvc.cli import app
from knnvc.errors import EXIT_CODES, ExtraError
from knnvc.weights import hub
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM

MODELS = ["--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu"]
WIDE = {"terminal_width": 1000, "max_content_width": 1000}  # one help row per line: nothing wrapped
NO_OVERRIDES: dict[str, str | None] = {"KNNVC_WAVLM": None, "KNNVC_VOCODER": None}


def cli(*args: object, env: dict[str, str | None] | None = None, **extra: Any) -> Result:
    """``knnvc ARGS`` in process, offline, with no local defaults unless ``env`` sets them."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"KNNVC_OFFLINE": "1", **NO_OVERRIDES, **(env or {})},
                              **extra)  # fmt: skip


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _walk(command: Any, path: list[str], found: dict[str, Any]) -> dict[str, Any]:
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            _walk(sub, [*path, name], found)
    else:
        found[" ".join(path)] = command
    return found


COMMANDS: dict[str, Any] = _walk(typer.main.get_command(app), [], {})
"""Every command of ``knnvc``, by its path (``voice build``), through the groups."""


def _name(param: Any) -> str:
    """How help names a parameter: its first long option (``--trim`` for --trim/--no-trim), or the argument."""
    if isinstance(param, TyperOption):
        return next(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    return str(param.metavar or param.name).upper().removesuffix("...")


def _row_name(term: str) -> str:
    option = re.search(r"--[\w-]+", term)
    return option.group(0) if option else term.split()[0].removesuffix("...")


@cache
def help_rows(command: str, **env: str) -> dict[str, str]:
    """``knnvc COMMAND --help``, unwrapped: each argument's and option's name -> the help a user reads for it."""
    result = cli(*command.split(), "--help", env=dict(env), **WIDE)
    assert result.exit_code == 0, result.output
    rows: dict[str, str] = {}
    section, last = False, ""
    for line in result.stdout.splitlines():
        if line in ("Arguments:", "Options:"):
            section = True
        elif not line.strip():
            section = False
        elif section and re.match(r"  \S", line):  # a row: the name, two spaces or more, its help
            term, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            last = _row_name(term)
            rows[last] = "".join(text)
        elif section:  # a name wider than click's first column: its help on the next line
            rows[last] = f"{rows[last]} {line.strip()}".strip()
    return rows


def _parts(text: str) -> tuple[str, list[str]]:
    """A help row as its own words and the items of typer's closing bracket (``[default: 4; x>=1]``)."""
    match = re.fullmatch(r"(.*?)(?:\s{2}\[([^\[\]]*)\])?", text)
    assert match is not None
    return match.group(1), (match.group(2) or "").split("; ") if match.group(2) else []


# A default said in a help's own words: "(default)", "(default 0.5; ...)", "default 6)", "(default: all)", or
# "[default: ...]" in the middle of the text. "default file names" is no default.
INLINE_DEFAULT = re.compile(r"\(default\b|\bdefault\s*[:;)\]]|\bdefault \d|\[default\b")

# Options defined in files this test's author does not own: the change each needs. Whoever fixes one removes
# its entry (the xfail is strict: a fixed entry fails until removed).
NOT_YET_SHOWN_ONCE: dict[tuple[str, str], str] = {}
NOT_YET_THE_SAME: dict[tuple[str, str], str] = {}
OWN_MEANING = {
    "--output": "what each command writes differs: converted audio, a .voice file, a training run",
    "--manifest": "eval: a TSV of conversions to score; train prematch: a CSV of training utterances",
    "--sample-rate": "convert: the output's rate; train prematch: the rate the training targets are stored at",
    "--method": "convert: the matching step; stream, live: also what MKL-VC fits on; pair build: how the map is fitted",
}
OWN_MEANING_IN = {("train vocoder", "--batch-size"): "segments per GPU per training step, not audio computed at once"}


def _cases(marked: dict[tuple[str, str], str], wanted: list[tuple[str, str]]) -> list[Any]:
    return [
        pytest.param(command, name, id=f"{command} {name}",
                     marks=[pytest.mark.xfail(strict=True, reason=marked[command, name])] if (command, name) in marked
                     else [])  # fmt: skip
        for command, name in wanted
    ]


EVERY_PARAM = [(c, _name(p)) for c, command in COMMANDS.items() for p in command.params
               if isinstance(p, TyperOption | TyperArgument) and not p.hidden]  # fmt: skip
"""Every argument and option that help shows, in each command."""
EVERY_OPTION = [(c, name) for c, name in EVERY_PARAM if name.startswith("--")]
_USERS = Counter(name for _, name in EVERY_PARAM)
SHARED = [(c, name) for c, name in EVERY_PARAM
          if _USERS[name] > 1 and name not in OWN_MEANING and (c, name) not in OWN_MEANING_IN]  # fmt: skip
"""Arguments and options that more than one command has, in each of those commands."""


# -- 8. help that agrees with itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "name"), _cases(NOT_YET_SHOWN_ONCE, EVERY_OPTION))
def test_every_default_is_shown_once_as_default(command: str, name: str) -> None:
    """A default is ``[default: ...]`` in typer's closing bracket, once, and never in the help's own words."""
    param = next(p for p in COMMANDS[command].params if _name(p) == name)
    text = help_rows(command)[name]
    words, bracket = _parts(text)
    assert not INLINE_DEFAULT.search(words), f"{command} {name}: the default is in the help's words: {text}"
    shown = [item for item in bracket if item.startswith("default: ")]
    assert len(shown) <= 1 and text.count("default:") == len(shown), text
    if param.default is not None and not param.is_flag:
        assert len(shown) == 1, f"{command} {name} has the default {param.default!r} but shows none: {text}"


@pytest.mark.parametrize(("command", "name"), _cases(NOT_YET_THE_SAME, SHARED))
def test_an_option_has_the_same_help_in_every_command(command: str, name: str) -> None:
    """``--offline`` (or ``--device``, ``--wavlm``, ``REFERENCE``) reads the same wherever it is."""
    helps = Counter(_parts(rows[name])[0] for c in COMMANDS if name in (rows := help_rows(c))
                    and (c, name) not in OWN_MEANING_IN)  # fmt: skip
    usual = helps.most_common(1)[0][0]
    assert _parts(help_rows(command)[name])[0] == usual, f"{command} {name}: {dict(helps)}"


def test_described_defaults_read_like_the_others() -> None:
    """Defaults that are no single value (None in the signature) are still shown in the bracket."""
    for command in ("convert", "stream", "live"):
        rows = help_rows(command)
        assert rows["--morph-weight"].endswith("[default: 0.5]"), rows["--morph-weight"]
    assert help_rows("convert")["--batch-size"].endswith("[default: 1 on CPU, 8 on GPU; x>=1]")
    assert help_rows("stream")["--context-ms"].endswith("[default: 2000, or the encoder's reach if longer]")
    assert help_rows("download")["NAMES"].endswith("[default: every entry but wavlm-original]")


# -- 6. show what will be used ------------------------------------------------------------------------------------

WEIGHTS_OPTIONS = [(c, name) for c, name in EVERY_OPTION if name in ("--wavlm", "--vocoder")]


def test_every_weights_option_is_found() -> None:
    commands = {c for c, _ in WEIGHTS_OPTIONS}
    assert {"convert", "voice build", "train prematch", "serve", "stream", "live", "eval"} <= commands


@pytest.mark.parametrize(("command", "name"), WEIGHTS_OPTIONS, ids=lambda v: str(v))
def test_help_shows_the_weights_a_variable_puts_in_place_of_the_default(command: str, name: str) -> None:
    """``KNNVC_WAVLM``/``KNNVC_VOCODER`` are read when help is shown, not when knnvc is imported."""
    assert help_rows(command)[name].endswith(
        "[default: microsoft/wavlm-large]" if name == "--wavlm" else "[default: prematched]"
    )
    local = help_rows(command, KNNVC_WAVLM="/models/WavLM-Large.pt", KNNVC_VOCODER="/models/prematch_g.pt")[name]
    if name == "--wavlm":
        assert local.endswith("[default: /models/WavLM-Large.pt (from KNNVC_WAVLM)]"), local
    else:
        assert local.endswith("[default: /models/prematch_g.pt (from KNNVC_VOCODER)]"), local


def test_info_says_what_the_defaults_resolve_to(tmp_path: Path) -> None:
    env: dict[str, str | None] = {"KNNVC_CACHE": str(tmp_path / "k"), "HF_HOME": str(tmp_path / "h"),
                                  "KNNVC_WAVLM": "/models/WavLM-Large.pt"}  # fmt: skip
    data = json.loads(cli("info", "--json", "--device", "cpu", env=env).stdout)
    assert data["defaults"] == {
        "wavlm": {"weights": "/models/WavLM-Large.pt", "from": "KNNVC_WAVLM"},
        "vocoder": {"weights": "prematched", "from": None},
    }
    table = cli("info", "--device", "cpu", env=env)
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in table.stdout.splitlines() if line.strip()}
    assert rows["wavlm"] == "/models/WavLM-Large.pt (from KNNVC_WAVLM)" and rows["vocoder"] == "prematched"


# -- 7. one exit code for a missing extra -------------------------------------------------------------------------

MISSING_EXTRAS = [
    pytest.param(["serve"], "uvicorn", "web", id="serve"),
    pytest.param(["live", "--list-devices"], "sounddevice", "live", id="live"),
    pytest.param(["eval", SOURCE_WAV, "--target", REF_DIR, "--verifier", "resemblyzer", "--asr", "none",
                  "--no-dnsmos", "--device", "cpu"], "resemblyzer", "eval", id="eval"),  # fmt: skip
    pytest.param(["eval", SOURCE_WAV, "--target", REF_DIR, "--verifier", "resemblyzer", "--asr", "pocketsphinx",
                  "--no-dnsmos", "--device", "cpu"], "pocketsphinx", "eval", id="eval asr"),  # fmt: skip
    pytest.param(["convert", SOURCE_WAV, REF_DIR, "-o", "{tmp}/x.wav", "--ray", "local", *MODELS], "ray",
                 "cluster", id="convert --ray"),  # fmt: skip
]


@pytest.mark.parametrize(("args", "package", "extra"), MISSING_EXTRAS)
def test_a_missing_extra_is_one_line_and_one_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[object], package: str, extra: str
) -> None:
    """The package of an extra that does not import: one line naming the pip command, exit 8, every command.

    (``train`` without tensorboard or matplotlib and ``voice build --max-frames`` without faiss still run: they
    warn, or fall back to torch's k-means.)"""
    monkeypatch.setitem(sys.modules, package, None)  # its import fails, as if it were not installed
    result = cli(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == ExtraError.exit_code == 8, result.output
    line = one_line(result)
    assert line.startswith("error: ") and f'pip install "knnvc[{extra}]"' in line and package in line, line
    assert not (tmp_path / "x.wav").exists()


def test_the_exit_code_of_a_missing_extra_is_documented() -> None:
    assert EXIT_CODES[ExtraError.exit_code] == "an optional extra is not installed"
    assert re.search(r"^8 +``ExtraError`` ", knnvc.errors.__doc__ or "", re.MULTILINE)


# -- 9. knnvc info fits 80 columns --------------------------------------------------------------------------------


def _fits_80_columns(text: str, cached: tuple[str, ...] = ()) -> None:
    """No line is longer than 80; every registry name is whole on a line, and so is every address shown (that of
    each entry not ``cached``: a cached one shows its path)."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    addresses = {e.location if e.source == "url" else f"https://huggingface.co/{e.location}"
                 for e in hub.REGISTRY.values()}  # fmt: skip
    for entry in hub.REGISTRY.values():
        assert any(re.search(rf"(^|\s){re.escape(entry.name)}[\s,]", line) for line in lines), (entry.name, text)
        if entry.source == "url" and entry.name not in cached:
            assert any(entry.location in line for line in lines), (entry.location, text)
    assert set(re.findall(r"https?://\S+", text)) <= addresses, text  # none cut short


def test_info_fits_an_80_column_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with the longest row: an unpinned file downloaded here, its hash recorded (``regular``)."""
    from rich.console import Console

    from knnvc.cli import common

    monkeypatch.setattr(common, "out", Console(width=80))
    with tempfile.TemporaryDirectory(prefix="k") as short:
        cached = Path(short, "k", "g_02500000.pt")
        cached.parent.mkdir()
        cached.write_bytes(b"weights")
        digest = hashlib.sha256(b"weights").hexdigest()
        hub.sidecar(cached).write_text(f"{digest}  {cached.name}\n")  # the record of its first download
        os.utime(hub.sidecar(cached), ns=(cached.stat().st_mtime_ns,) * 2)
        result = cli("info", "--device", "cpu", env={"KNNVC_CACHE": f"{short}/k", "HF_HOME": f"{short}/h"})
    assert result.exit_code == 0, result.output
    _fits_80_columns(result.stdout, cached=("regular",))
    assert str(cached) in result.stdout.split() and re.search(rf"\b{digest[:16]}\b", result.stdout), result.stdout


def test_info_fits_columns_80_as_a_user_runs_it() -> None:
    """``COLUMNS=80 knnvc info``, in a real interpreter (rich reads COLUMNS when it starts); ``--json`` is whole."""
    with tempfile.TemporaryDirectory(prefix="k") as short:
        env = {**os.environ, "COLUMNS": "80", "KNNVC_CACHE": f"{short}/k", "HF_HOME": f"{short}/h",
               "KNNVC_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
        env.pop("KNNVC_WAVLM", None)
        env.pop("KNNVC_VOCODER", None)
        script = "from knnvc.cli import app; app(prog_name='knnvc')"
        table = subprocess.run([sys.executable, "-c", script, "info", "--device", "cpu"], env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        whole = subprocess.run([sys.executable, "-c", script, "info", "--device", "cpu", "--json"], env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr
    _fits_80_columns(table.stdout)
    data = json.loads(whole.stdout)
    rows = {row["name"]: row for row in data["weights"]}
    for entry in hub.REGISTRY.values():
        assert rows[entry.name]["source"] == entry.location
        if entry.sha256:
            assert rows[entry.name]["sha256"] == entry.sha256
