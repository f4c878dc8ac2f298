"""The README cannot drift: every example in README.md runs here, and what it prints must be what the README shows.

- ```console blocks: each ``$ command`` runs in one sandbox folder, in README order (later commands see earlier
  outputs); the lines under it are compared with what it printed (stdout, then stderr). ``knnvc`` commands run in
  process (typer's runner, models cached); anything else (``rm``, ``echo``) runs in bash.
- ```python blocks run in the same sandbox, in the same order, and must not raise.
- ```bash blocks are setup a reader types once (install, the test suite itself, the benchmark); they are checked to
  hold only those commands, since running them here would install packages or recurse.
- ```sh blocks need what this machine lacks (the published weights, LibriSpeech, a GPU, a cluster, a microphone, a
  server left running): every ``knnvc`` command in them is parsed by the real CLI (its subcommand, options, option
  values and required arguments must exist), not run.

The defaults point at copies of the tiny test models (``KNNVC_WAVLM``, ``KNNVC_VOCODER``), offline. Masked when
comparing: timings, versions, dates, cache paths, the device; padding of tables (their widths follow the numbers).

After changing what a command prints, ``KNNVC_README_UPDATE=1 python -m pytest tests/test_readme.py`` writes the
printed outputs of the blocks that drifted into README.md (review the diff; the test still fails that run).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from knnvc.cli import app
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_VOCODER_CONFIG, TINY_WAVLM

README = Path(__file__).parents[1] / "README.md"
SETUP = ("pip install ", "python -m pytest", "python -m bench")
EXIT_ECHO = '; echo "exit $?"'

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # where it starts in README.md


def blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.M | re.S)
    ]


def steps(block: Block) -> list[tuple[str, list[str]]]:
    """A console block as (command, the lines shown under it)."""
    found: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            assert found, f"README.md:{block.line}: output before any command"
            found[-1][1].append(line)
    return found


_MASKS = [
    (re.compile(r"( of audio in )\d+\.\d+ s"), r"\1N s"),
    (re.compile(r"(k-means, )\d+\.\d+ s"), r"\1N s"),
    (re.compile(r'("(?:wall_seconds|realtime_factor|speed)": )[\d.e-]+'), r"\1N"),
    (re.compile(r"^( created\s+)\S+"), r"\1DATE"),
    (re.compile(r"^( (?:knnvc|python|torch|transformers|device|cuda|knnvc_cache|hf_cache)\s+)\S.*"), r"\1X"),
]
_SUMMARY_ROW = re.compile(r"^│((?:\s+[\d.]+\s+│){7})$")  # files, converted, skipped, failed, audio s, wall s, rtf


def normalise(text: str) -> list[str]:
    lines = []
    for line in text.strip("\n").splitlines():
        line = line.rstrip()
        for pattern, replacement in _MASKS:
            line = pattern.sub(replacement, line)
        row = _SUMMARY_ROW.match(line)
        if row:
            cells = [c.strip() for c in row.group(1).split("│")[:7]]
            line = "│ " + " │ ".join(cells[:5] + ["N", "N"]) + " │"
        line = re.sub(r"([━─])[━─]*", r"\1", line)  # table rules: their length follows the cells
        lines.append(re.sub(r" {2,}", " ", line))
    return lines


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the README's examples name, and copies of the tiny models under short relative paths."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copy(SOURCE_WAV, root / "source.wav")
    for folder in ("alice", "target_speaker"):
        (root / folder).mkdir()
        for i, ref in enumerate(sorted(REF_DIR.glob("*.wav")), 1):
            shutil.copy(ref, root / folder / f"{i:02d}.wav")
    for rel in ("ep1/interview.wav", "ep1/intro.wav", "ep2/outro.wav"):
        (root / "podcast" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE_WAV, root / "podcast" / rel)
    (root / "weights").mkdir()
    shutil.copy(TINY_WAVLM, root / "weights" / TINY_WAVLM.name)
    shutil.copy(TINY_VOCODER, root / "weights" / TINY_VOCODER.name)
    shutil.copy(TINY_VOCODER_CONFIG, root / "weights" / "config.json")  # the tiny vocoder's shape
    return root


def environment(root: Path) -> dict[str, str]:
    return {
        "KNNVC_WAVLM": f"weights/{TINY_WAVLM.name}",
        "KNNVC_VOCODER": f"weights/{TINY_VOCODER.name}",
        "KNNVC_OFFLINE": "1",
        "KNNVC_CACHE": str(root / ".cache" / "knnvc"),
        "HF_HOME": str(root / ".cache" / "huggingface"),
    }


def knnvc_commands(text: str) -> list[list[str]]:
    """The argument lists of every ``knnvc ...`` command in a shell snippet (pipes, ``&&``, loops, continuations)."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"\||&&|;", line):
            words = shlex.split(part.strip().removeprefix("do ").removeprefix("then "))
            if words[:1] == ["knnvc"]:
                found.append(without_redirections(words[1:]))
    return found


def without_redirections(words: list[str]) -> list[str]:
    """``a < in.pcm > out.pcm`` -> ``a``: the shell's redirections are not the command's arguments."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif re.fullmatch(r"\d?[<>]{1,2}", word):
            skip = True
        elif not re.match(r"\d?[<>]", word):
            kept.append(word)
    return kept


def parse_command(args: list[str]) -> str:
    """Parse ``knnvc ARGS`` exactly as the CLI would, without running it; the (sub)command's name."""
    import typer

    command = typer.main.get_command(app)
    context = command.make_context("knnvc", list(args))
    while hasattr(command, "resolve_command"):
        name, sub, rest = command.resolve_command(context, [*context._protected_args, *context.args])
        assert sub is not None, args
        command, context = sub, sub.make_context(name, rest, parent=context)
    return str(command.name)


def run_command(command: str, root: Path, env: dict[str, str]) -> str:
    """What ``command`` prints (stdout, then stderr), as the README shows it."""
    if command.startswith("knnvc "):
        echo = command.endswith(EXIT_ECHO)
        args = shlex.split(command.removesuffix(EXIT_ECHO))[1:]
        result = CliRunner().invoke(app, args, env=env, prog_name="knnvc")
        assert result.exception is None or isinstance(result.exception, SystemExit), (command, result.exception)
        printed = result.stdout + result.stderr
        return printed + (f"exit {result.exit_code}\n" if echo else "")
    proc = subprocess.run(["bash", "-c", command], cwd=root, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    return proc.stdout + proc.stderr


def test_readme_examples_run_and_print_what_it_shows(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(sandbox)
    monkeypatch.chdir(sandbox)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = blocks()
    assert {b.lang for b in found} <= {"console", "python", "bash", "sh"}, {b.lang for b in found}
    assert sum(b.lang == "console" for b in found) >= 5 and sum(b.lang == "python" for b in found) >= 2
    drift: list[str] = []
    rewritten: dict[str, str] = {}  # a console block's text -> the same commands with what they printed
    for block in found:
        if block.lang == "bash":
            commands = [c.strip() for c in re.split(r"&&|\n", block.text) if c.strip()]
            assert all(c.startswith(SETUP) for c in commands), f"README.md:{block.line}: not setup: {commands}"
        elif block.lang == "sh":
            for args in knnvc_commands(block.text):
                parse_command(args)  # raises, naming the bad option or argument
        elif block.lang == "python":
            exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "readme"})  # noqa: S102
        else:
            fresh, drifted = [], False
            for command, shown in steps(block):
                if "--device cuda" in command and torch.cuda.is_available():
                    continue  # the example shows a machine without a GPU
                printed = run_command(command, sandbox, env)
                fresh.append(f"$ {command}\n" + "".join(line.rstrip() + "\n" for line in printed.splitlines()))
                if normalise(printed) != normalise("\n".join(shown)):
                    drifted = True
                    drift.append(f"README.md:{block.line}: $ {command}\n--- shown\n" + "\n".join(shown)
                                 + f"\n--- printed\n{printed}")  # fmt: skip
            if drifted:
                rewritten[block.text] = "".join(fresh)
    if drift and os.environ.get("KNNVC_README_UPDATE") == "1":
        text = README.read_text(encoding="utf-8")
        for old, new in rewritten.items():
            text = text.replace(f"```console\n{old}```", f"```console\n{new}```")
        README.write_text(text, encoding="utf-8")
    assert not drift, "\n\n".join(drift)


def test_readme_exit_code_table_is_the_library_table() -> None:
    """Every code in the README's "Errors and exit codes" table is ``knnvc.errors.EXIT_CODES``, and no other."""
    from knnvc.errors import EXIT_CODES

    section = README.read_text(encoding="utf-8").split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    codes = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", section, re.M)}
    assert codes == set(EXIT_CODES)
