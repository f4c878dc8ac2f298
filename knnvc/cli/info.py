"""``knnvc download`` and ``knnvc info``: the weights cache and the environment."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from knnvc.cli.app import app
from knnvc.cli.common import DeviceOpt, JsonOpt, VerboseOpt, handle_errors, out, progress_bar, session
from knnvc.progress import Progress


@app.command()
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Registry names (default: all).")] = None,
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
            out.print(f"{name}: {location}", highlight=False, soft_wrap=True)


@app.command()
def info(device: DeviceOpt = "auto", json_out: JsonOpt = False) -> None:
    """Versions, the chosen device, cache folders and which weights are cached."""
    with handle_errors(False):
        from knnvc.cli.sysinfo import system_info

        data = system_info(device)
        if json_out:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.table import Column, Table

        table = Table(show_header=False, box=None)
        for key in ("knnvc", "python", "torch", "transformers", "device", "cuda", "knnvc_cache", "hf_cache", "offline"):
            table.add_row(key, str(data[key]))
        out.print(table)
        weights = Table("weights", "kind", "cached", Column("where", overflow="fold"), "sha256")
        for row in data["weights"]:
            if row["sha256_from"] == "published":
                digest = f"{row['sha256'][:16]} (published)"
            elif row["sha256_from"] == "recorded":  # no published hash: the one seen at the first download here
                digest = f"unpinned (recorded at first download: {row['sha256'][:16]})"
            else:  # unpinned and never downloaded here, or a hub snapshot (huggingface_hub checks those)
                digest = "unpinned" if "://" in row["source"] else "hub"
            where = row["path"] or row["source"]
            weights.add_row(row["name"], row["kind"], "yes" if row["cached"] else "no", where, digest)
        out.print(weights)

