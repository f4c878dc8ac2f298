"""``knnvc download`` and ``knnvc info``: the weights cache and the environment.

``knnvc info`` fits 80 columns: names, hashes (their first 16 hex digits; whole in ``--json``) and the cached state in
a table, then where each entry comes from (or is cached) on a line of its own, so no name, URL or path is cut.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.common import DeviceOpt, JsonOpt, VerboseOpt, handle_errors, progress_bar, session
from knnvc.progress import Progress

HUB = "https://huggingface.co/"


@app.command()
def download(
    names: Annotated[
        list[str] | None, typer.Argument(help="Registry names.", show_default="every entry but wavlm-original")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Prefetch the published weights into the caches (needs internet)."""
    with session(verbose, False):
        from rich.progress import DownloadColumn, TaskID, TextColumn, TransferSpeedColumn

        from knnvc.weights import hub

        for name in names or []:
            hub.get_entry(name)  # unknown names fail before anything is drawn
        columns = (TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn())
        with progress_bar(*columns) as bar:

            tasks: dict[str, TaskID] = {}

            def on_progress(event: Progress) -> None:
                if event.name not in tasks:
                    tasks[event.name] = bar.add_task(event.name, total=None)
                bar.update(tasks[event.name], completed=event.index, total=event.total)

            result = hub.download_all(names=names or None, progress=on_progress)
        for name, location in result.items():
            common.out.print(f"{name}: {location}", highlight=False, soft_wrap=True)


@app.command()
def info(device: DeviceOpt = "auto", json_out: JsonOpt = False) -> None:
    """Versions, the chosen device, cache folders and which weights are cached."""
    with handle_errors(False):
        from knnvc.cli.sysinfo import system_info

        data = system_info(device)
        if json_out:
            typer.echo(json.dumps(data, indent=2))
            return
        _print_info(data)


def _digest(row: dict[str, Any]) -> str:
    """The sha256 column: its first 16 hex digits and how it is known (the whole hash is in ``--json``)."""
    if row["sha256_from"] == "published":
        return f"{row['sha256'][:16]} (published)"
    if row["sha256_from"] == "recorded":  # no published hash: the one seen at the first download here
        return f"unpinned (recorded at first download: {row['sha256'][:16]})"
    return "unpinned" if "://" in row["source"] else "hub"  # never downloaded here, or checked by huggingface_hub


def _print_info(data: dict[str, Any]) -> None:
    """The environment, the weights the defaults resolve to, and the registry: 80 columns, nothing cut."""
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key in ("knnvc", "python", "torch", "transformers", "device", "cuda", "knnvc_cache", "hf_cache", "offline"):
        table.add_row(key, str(data[key]))
    for kind, chosen in data["defaults"].items():  # what --wavlm / --vocoder are when not given
        table.add_row(kind, chosen["weights"] + (f" (from {chosen['from']})" if chosen["from"] else ""))
    common.out.print(table, markup=False, highlight=False)
    weights = Table("weights", "kind", "cached", "sha256")
    for row in data["weights"]:
        weights.add_row(row["name"], row["kind"], "yes" if row["cached"] else "no", _digest(row))
    common.out.print(weights, markup=False, highlight=False)
    for row in data["weights"]:  # a URL or path is too long for a column: each on a line of its own
        where = row["path"] or (row["source"] if "://" in row["source"] else HUB + row["source"])
        common.out.print(f"{row['name']}, {'cached at' if row['path'] else 'from'}:", markup=False, highlight=False)
        common.out.print(f"  {where}", markup=False, highlight=False)
