"""``knnvc voice build`` and ``knnvc voice info``: saved voices (matching sets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from knnvc.cli.app import voice_app
from knnvc.cli.common import (
    BatchOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    TrimOpt,
    VerboseOpt,
    WavlmOpt,
    handle_errors,
    out,
    say,
    setup_logging,
)
from knnvc.constants import DEFAULT_WAVLM
from knnvc.errors import UsageError


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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Encode reference speech once and save it as a reusable voice (safetensors + JSON metadata)."""
    setup_logging(verbose, quiet)
    with handle_errors(verbose):
        from knnvc import api
        from knnvc.voice import VOICE_SUFFIX

        if output.suffix != VOICE_SUFFIX:
            raise UsageError(f"{output}: voice files end in {VOICE_SUFFIX}")
        api.check_options(batch_size=batch_size)
        from knnvc.pipeline import VoiceBuilder

        builder = VoiceBuilder.from_pretrained(
            wavlm, device=device, precision=precision, batch_size=batch_size, offline=offline or None
        )
        voice = builder.build_voice(list(references), trim=trim, name=name or output.stem)
        voice.save(output)
        if not quiet:
            say("wrote", "green", f"{output}: {voice.num_frames} frames, {voice.seconds:.1f} s of speech")


@voice_app.command("info")
def voice_info(path: Annotated[Path, typer.Argument(help="A .voice file.")], json_out: JsonOpt = False) -> None:
    """Print a saved voice's metadata: encoder and layer, sources and their hashes, speech seconds, frames."""
    with handle_errors(False):
        from knnvc.voice import Voice

        meta = Voice.load(path).metadata()
        if json_out:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.table import Column, Table

        table = Table(show_header=False, box=None)
        for key in ("name", "encoder", "encoder_fingerprint", "layer", "frames", "dim", "speech_seconds", "created"):
            table.add_row(key, str(meta[key]))
        paths = [src["path"] for src in meta["sources"]]
        try:
            root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
        except ValueError:  # absolute and relative paths mixed
            root = ""
        table.add_row("sources in", root or ".")
        out.print(table)
        sources = Table(Column("source", overflow="fold"), "seconds", "sha256")
        for src in meta["sources"]:  # relative to their common folder, so long paths stay readable
            sources.add_row(os.path.relpath(src["path"], root) if root else src["path"], f"{src['seconds']:.2f}",
                            src["sha256"][:16])  # fmt: skip
        out.print(sources)

