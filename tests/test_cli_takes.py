"""``knnvc.cli.common.takes``: a group of options shared by commands, spliced into each command's signature."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.testing import CliRunner

from knnvc.cli import common


def group(
    alpha: Annotated[int, typer.Option("--alpha", help="First.")] = 1,
    beta: Annotated[str, typer.Option("--beta", help="Second.")] = "b",
) -> tuple[int, str]:
    return alpha, beta


def test_group_options_take_the_placeholder_place_and_arrive_gathered() -> None:
    app = typer.Typer()
    seen: list[object] = []

    @app.command()
    @common.takes(group)
    def cmd(
        name: Annotated[str, typer.Argument()],
        first: Annotated[int, typer.Option("--first")] = 0,
        *,
        group: tuple[int, str],
        last: Annotated[bool, typer.Option("--last")] = False,
    ) -> None:
        seen.append((name, first, group, last))

    runner = CliRunner()
    result = runner.invoke(app, ["x", "--beta", "q", "--first", "3", "--last"])
    assert result.exit_code == 0, result.output
    assert seen == [("x", 3, (1, "q"), True)]
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    order = [help_text.index(flag) for flag in ("--first", "--alpha", "--beta", "--last")]
    assert order == sorted(order)  # in --help where the placeholder stood


def test_session_maps_library_errors_to_their_exit_code() -> None:
    from knnvc.errors import UsageError

    app = typer.Typer()

    @app.command()
    def fail() -> None:
        with common.session(verbose=False, quiet=True):
            raise UsageError("bad value")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == UsageError.exit_code
