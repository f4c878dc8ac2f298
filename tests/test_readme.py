"""The README cannot drift: every example in README.md runs here, and what it prints must be what the README shows.
``tests/test_docs.py`` runs the pages of docs/ through the same machinery (``check_examples``), one page at a time.

- ```console blocks: each ``$ command`` runs in one sandbox folder, in page order (later commands see earlier
  outputs); the lines under it are compared with what it printed (stdout, then stderr). ``knnvc`` commands run in
  process (typer's runner, models cached); anything else (``rm``, ``echo``) runs in bash.
- ```python blocks run in the same sandbox, in the same order, and must not raise. Each runs in a fresh namespace,
  and every name it reads must be imported or assigned in the block itself (checked before it runs, so a name used
  only on a branch that does not run counts too): a snippet copied alone works.
- ```bash blocks are setup a reader types once (install, the test suite itself, the benchmark); they are checked to
  hold only those commands, since running them here would install packages or recurse.
- ```sh blocks need what this machine lacks (the published weights, LibriSpeech, a GPU, a cluster, a microphone, a
  server left running): every ``knnvc`` command in them is parsed by the real CLI (its subcommand, options, option
  values and required arguments must exist), not run.
- Blocks with no language, or ```text, ```yaml, ```csv or ```json, are shown, not run: file layouts, diagrams,
  configuration files, and output recorded where the command cannot run here (it follows a ```sh block).

The defaults point at copies of the tiny test models (``KNNVC_WAVLM``, ``KNNVC_VOCODER``), offline. Masked when
comparing: timings, versions, dates, cache paths, the device; padding of tables (their widths follow the numbers).

After changing what a command prints, ``KNNVC_README_UPDATE=1 python -m pytest tests/test_readme.py
tests/test_docs.py`` writes the printed outputs of the blocks that drifted into the page (review the diff; the test
still fails that run).
"""

from __future__ import annotations

import ast
import builtins
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
from tests.conftest import REF_DIR, SOURCE_WAV, SPEECH, TINY_VOCODER, TINY_VOCODER_CONFIG, TINY_WAVLM

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
SETUP = ("pip install ", "python -m pytest", "python -m bench", "mkdocs ", "python docs/")
EXIT_ECHO = '; echo "exit $?"'
RUN, CHECKED, SHOWN = {"console", "python"}, {"bash", "sh"}, {"", "text", "yaml", "csv", "json"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # where it starts in its page
    page: str = "README.md"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path = README) -> list[Block]:
    """The fenced code blocks of a markdown page, in order: a line of ``` and a language (maybe none) opens one, a
    line of ``` closes it."""
    found, opened, lang, lines = [], 0, "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not opened and (fence := re.fullmatch(r"```(\w*)", line)):
            opened, lang, lines = number, fence.group(1), []
        elif opened and line == "```":
            found.append(Block(lang, "".join(f"{text}\n" for text in lines), opened, page_name(path)))
            opened = 0
        elif opened:
            lines.append(line)
    assert not opened, f"{page_name(path)}:{opened}: a code block is never closed"
    return found


def page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def steps(block: Block) -> list[tuple[str, list[str]]]:
    """A console block as (command, the lines shown under it)."""
    found: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            assert found, f"{block.where}: output before any command"
            found[-1][1].append(line)
    return found


_MASKS = [
    (re.compile(r"( of audio in )\d+\.\d+ s"), r"\1N s"),
    (re.compile(r" \(started in \d+(?:\.\d+)? s\)"), ""),  # a timing, like the conversion's: compared as absent
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


def make_sandbox(root: Path) -> Path:
    """The files the examples name, and copies of the tiny models under short relative paths."""
    shutil.copy(SOURCE_WAV, root / "source.wav")
    for folder in ("alice", "target_speaker"):
        (root / folder).mkdir()
        for i, ref in enumerate(sorted(REF_DIR.glob("*.wav")), 1):
            shutil.copy(ref, root / folder / f"{i:02d}.wav")
    for folder, speech in (("me", SPEECH / "pair" / "source"), ("alice_same_words", SPEECH / "pair" / "target")):
        shutil.copytree(speech, root / folder)  # a source speaker's recordings; the target saying the same words
    for rel in ("ep1/interview.wav", "ep1/intro.wav", "ep2/outro.wav"):
        (root / "podcast" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE_WAV, root / "podcast" / rel)
    (root / "weights").mkdir()
    shutil.copy(TINY_WAVLM, root / "weights" / TINY_WAVLM.name)
    shutil.copy(TINY_VOCODER, root / "weights" / TINY_VOCODER.name)
    shutil.copy(TINY_VOCODER_CONFIG, root / "weights" / "config.json")  # the tiny vocoder's shape
    return root


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sandbox(tmp_path_factory.mktemp("readme"))


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
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # VAR=value knnvc ...: the environment, not the command
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
    """What ``command`` prints (stdout, then stderr), as the page shows it."""
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


def unbound_names(source: str) -> list[str]:
    """Names a snippet reads that it never imports, assigns or defines (builtins aside): what it takes from
    elsewhere, so that alone it would raise NameError (maybe only on a branch that did not run here)."""
    tree = ast.parse(source)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    read = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return sorted(set(read) - bound)


def check_examples(page: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> list[Block]:
    """Run, parse or check every block of ``page`` in the sandbox ``root``, in page order; fail naming each console
    output that drifted (and, with ``KNNVC_README_UPDATE=1``, write the printed outputs into the page)."""
    env = environment(root)
    monkeypatch.chdir(root)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = blocks(page)
    langs = {b.lang for b in found}
    assert langs <= RUN | CHECKED | SHOWN, (
        f"{page_name(page)}: unknown code block languages {langs - RUN - CHECKED - SHOWN}"
    )
    drift: list[str] = []
    rewritten: dict[str, str] = {}  # a console block's text -> the same commands with what they printed
    for block in found:
        if block.lang == "bash":
            commands = [c.strip() for c in re.split(r"&&|\n", block.text) if c.strip()]
            assert all(c.startswith(SETUP) for c in commands), f"{block.where}: not setup (use ```sh): {commands}"
        elif block.lang == "sh":
            for args in knnvc_commands(block.text):
                parse_command(args)  # raises, naming the bad option or argument
        elif block.lang == "python":
            missing = unbound_names(block.text)
            assert not missing, f"{block.where}: the snippet uses {missing} without importing or defining them"
            exec(compile(block.text, block.where, "exec"), {"__name__": "docs_example"})  # noqa: S102
        elif block.lang == "console":
            fresh, drifted = [], False
            for command, shown in steps(block):
                if "--device cuda" in command and torch.cuda.is_available():
                    continue  # the example shows a machine without a GPU
                printed = run_command(command, root, env)
                fresh.append(f"$ {command}\n" + "".join(line.rstrip() + "\n" for line in printed.splitlines()))
                if normalise(printed) != normalise("\n".join(shown)):
                    drifted = True
                    drift.append(f"{block.where}: $ {command}\n--- shown\n" + "\n".join(shown)
                                 + f"\n--- printed\n{printed}")  # fmt: skip
            if drifted:
                rewritten[block.text] = "".join(fresh)
    if drift and os.environ.get("KNNVC_README_UPDATE") == "1":
        text = page.read_text(encoding="utf-8")
        for old, new in rewritten.items():
            text = text.replace(f"```console\n{old}```", f"```console\n{new}```")
        page.write_text(text, encoding="utf-8")
    assert not drift, "\n\n".join(drift)
    return found


def test_readme_examples_run_and_print_what_it_shows(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = check_examples(README, sandbox, monkeypatch)
    assert sum(b.lang == "console" for b in found) >= 4 and sum(b.lang == "python" for b in found) >= 1


def test_a_snippet_that_does_not_import_what_it_uses_fails() -> None:
    assert unbound_names("from knnvc import KnnVC\nvc = KnnVC.from_pretrained(Models('a.pt', 'b.pt'))\n") == ["Models"]
    assert unbound_names("import numpy as np\nfor i in range(2):\n    x = np.zeros(i)\nprint(x)\n") == []
    assert unbound_names("def f(a):\n    return [b for b in a] + c\n") == ["c"]


def docs_links(text: str) -> set[str]:
    """The pages under docs/ that a markdown text links to, as paths relative to docs/."""
    return {m.group(1) for m in re.finditer(r"\]\(docs/([\w/.-]+\.md)(?:#[\w-]+)?\)", text)}


def test_readme_links_every_guide_and_every_link_is_a_page() -> None:
    """The README is a quickstart: every guide of the site (every page of docs/ outside reference/) is one link
    away from it, and each link it has into docs/ names a page that exists."""
    linked = docs_links(README.read_text(encoding="utf-8"))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages - {"index.md"} <= linked, f"README.md links none of {sorted(pages - {'index.md'} - linked)}"
    assert linked <= pages, f"README.md links missing pages {sorted(linked - pages)}"


def test_readme_is_a_quickstart() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 210


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    """``.ci/run`` installs and tests exactly as the README says (pip's ``-q`` aside), and builds the docs."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("pip install -q ", "pip install ")
    block = next(b for b in blocks() if b.lang == "bash" and "python -m pytest" in b.text)
    for command in (c.strip() for c in block.text.split("&&")):
        assert re.search(rf"^{re.escape(command)}$", ci, re.M), f".ci/run does not run the README's `{command}`"
    assert re.search(r"^\S*.*mkdocs build --strict", ci, re.M)
