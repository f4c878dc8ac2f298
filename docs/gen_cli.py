"""Write the CLI reference page at build time (mkdocs-gen-files runs this on every ``mkdocs build``).

The page is typer's own markdown for the ``knnvc`` app (what ``typer knnvc.cli.app utils docs`` prints), made from
the same click command that parses the command line, so it cannot drift from ``--help``. Nothing heavy loads:
building the command imports no torch.
"""

from __future__ import annotations

import inspect
import re

import click
import mkdocs_gen_files
import typer
from typer.cli import get_docs_for_click

from knnvc.cli import app

INTRO = """\
Every command and option of `knnvc`, generated from the CLI itself when the site is built (typer's
`utils docs` output). Each command also answers `--help`. Defaults shown here are those of a clean environment:
`KNNVC_WAVLM` and `KNNVC_VOCODER` replace the weights' defaults. Exit codes are in
[Errors and exit codes](../errors.md).
"""


def whole_first_sentences(command: click.Command) -> None:
    """Give every subcommand its help's first sentence as its short help, where click would cut it at 45
    characters in the command lists (this copy of the command only: the CLI itself is untouched)."""
    for sub in getattr(command, "commands", {}).values():
        if not sub.short_help and sub.help:
            paragraph = inspect.cleandoc(sub.help).split("\n\n")[0].replace("\n", " ")
            sub.short_help = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
        whole_first_sentences(sub)


def plain_defaults(text: str) -> str:
    """``[default: (0.5)]`` -> ``[default: 0.5]``: typer's docs renderer puts a described default in parentheses,
    where ``--help`` prints it bare."""
    return re.sub(r"\[default: \(([^()\]]*)\)(?=[;\]])", r"[default: \1", text)


def page() -> str:
    """The reference as markdown: the title, the introduction, then typer's text without its own title."""
    command = typer.main.get_command(app)
    whole_first_sentences(command)
    context = typer.Context(command, info_name="knnvc")
    text = plain_defaults(get_docs_for_click(obj=command, ctx=context, name="knnvc", title="CLI reference"))
    title, _, body = text.partition("\n")
    return f"{title}\n\n{INTRO}{body}"


with mkdocs_gen_files.open("reference/cli.md", "w") as out:
    out.write(page())
