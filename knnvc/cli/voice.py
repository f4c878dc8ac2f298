"""``knnvc voice build`` and ``knnvc voice info``: saved voices (matching sets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import voice_app
from knnvc.cli.controls import MatchLayerOpt
from knnvc.errors import OutputError, UsageError
from knnvc.options import DEFAULT_WAVLM, WAVLM_LAYER


@voice_app.command("build")
def voice_build(
    references: Annotated[list[Path], typer.Argument(help="Reference files and/or folders of the target speaker.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write NAME.voice.")],
    name: Annotated[str | None, typer.Option("--name", help="Voice name (default: the output's stem).")] = None,
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    trim: common.TrimOpt = True,
    match_layer: MatchLayerOpt = WAVLM_LAYER,
    max_frames: Annotated[
        int | None,
        typer.Option("--max-frames", help="Compact voice: k-means the frames into at most N cluster means."),
    ] = None,
    batch_size: common.BatchOpt = None,
    offline: common.OfflineOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing voice file.")] = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Encode reference speech once and save it as a reusable voice (safetensors + JSON metadata)."""
    with common.session(verbose, quiet):
        from knnvc.files import writable_folder
        from knnvc.options import ConvertOptions, Models, PipelineSettings
        from knnvc.voice import VOICE_SUFFIX

        if output.suffix != VOICE_SUFFIX:
            raise UsageError(f"{output}: voice files end in {VOICE_SUFFIX}")
        if max_frames is not None and max_frames < 1:
            raise UsageError(f"--max-frames must be at least 1, got {max_frames}")
        ConvertOptions(match_layer=match_layer)  # a layer out of range fails before any model loads
        if output.exists() and not overwrite:
            raise OutputError(f"{output} already exists; pass --overwrite to replace it, or choose another name")
        settings = PipelineSettings(device, precision, batch_size)
        common.preflight(*references, device=device, precision=precision)
        for reference in references:
            common.check_references(reference)
        writable_folder(output.parent)
        from knnvc.pipeline import KnnVC

        models = Models(wavlm, settings=settings, offline=offline or None)
        vc = KnnVC.from_pretrained(models, match_layer=match_layer)  # building a voice loads no vocoder
        vc.check_depth([match_layer])
        voice = vc.build_voice(list(references), trim=trim, name=name or output.stem, match_layer=match_layer)
        full = voice.num_frames
        if max_frames is not None:
            voice, clustering = voice.compact(max_frames)
            if not quiet and clustering.method != "none":
                common.say("compacted", "green", f"{full} frames into {voice.num_frames} clusters ({clustering.method} "
                    f"k-means, {clustering.seconds:.1f} s)")  # fmt: skip
        voice.save(output)
        if not quiet:
            size = output.stat().st_size / 2**20
            frames = f"{voice.num_frames} frames, {voice.seconds:.1f} s of speech"
            common.say("wrote", "green", f"{output}: {frames}, {size:.1f} MiB")


@voice_app.command("info")
def voice_info(path: Annotated[Path, typer.Argument(help="A .voice file.")], json_out: common.JsonOpt = False) -> None:
    """Print a saved voice's metadata: encoder and layer, sources and their hashes, speech seconds, frames."""
    with common.handle_errors(False):
        from knnvc.voice import Voice

        common.require_inputs(path)
        meta = Voice.load(path).metadata()
        if json_out:
            typer.echo(json.dumps(meta, indent=2))
            return
        from rich.table import Column, Table

        table = Table(show_header=False, box=None)
        keys = ("name", "encoder", "encoder_fingerprint", "layer", "match_layers", "frames", "compact", "dim",
                "speech_seconds", "created")  # fmt: skip
        for key in keys:
            table.add_row(key, str(meta[key]))
        paths = [src["path"] for src in meta["sources"]]
        try:
            root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
        except ValueError:  # absolute and relative paths mixed
            root = ""
        table.add_row("sources in", root or ".")
        common.out.print(table)
        sources = Table(Column("source", overflow="fold"), "seconds", "sha256")
        for src in meta["sources"]:  # relative to their common folder, so long paths stay readable
            sources.add_row(os.path.relpath(src["path"], root) if root else src["path"], f"{src['seconds']:.2f}",
                            src["sha256"][:16])  # fmt: skip
        common.out.print(sources)

