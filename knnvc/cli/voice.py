"""``knnvc voice build`` and ``knnvc voice info``: saved voices (matching sets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import voice_app
from knnvc.cli.controls import MatchLayerOpt
from knnvc.cli.convert import reference_files, weights_name
from knnvc.cli.view import Stages
from knnvc.errors import OutputError, UsageError
from knnvc.options import DEFAULT_WAVLM, VOICE_SUFFIX, WAVLM_LAYER


@voice_app.command("build")
def voice_build(
    references: Annotated[list[Path], typer.Argument(help="Reference files and/or folders of the target speaker.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write NAME.voice (never over a reference).")
    ],
    name: common.NameOpt = None,
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
    overwrite: common.OverwriteOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Encode reference speech once and save it as a reusable voice (safetensors + JSON metadata).

    The output may not replace one of the references, not even with --overwrite. On a terminal a status line names
    each stage (checking the inputs, loading torch and the model, building the voice).
    """
    with common.session(verbose, quiet):
        with Stages(not quiet) as stages:
            stages.now("checking the inputs")  # every check that needs no model comes first, audio before torch
            from knnvc.files import check_not_inputs, writable_folder
            from knnvc.options import ConvertOptions, Models, PipelineSettings

            if output.suffix != VOICE_SUFFIX:
                raise UsageError(f"{output}: voice files end in {VOICE_SUFFIX}")
            if max_frames is not None and max_frames < 1:
                raise UsageError(f"--max-frames must be at least 1, got {max_frames}")
            ConvertOptions(match_layer=match_layer)  # a layer out of range fails before any model loads
            common.require_inputs(*references)
            audio = [path for reference in references for path in reference_files(reference)]
            check_not_inputs([output], {"reference": audio})
            if output.exists() and not overwrite:
                raise OutputError(f"{output} already exists; pass --overwrite to replace it, or choose another name")
            settings = PipelineSettings(device, precision, batch_size)
            stages.now("loading torch")
            common.check_device(device, precision)
            writable_folder(output.parent)
            stages.now(f"loading models: {weights_name(wavlm)}")
            from knnvc.pipeline import KnnVC

            models = Models(wavlm, settings=settings, offline=offline or None)
            vc = KnnVC.from_pretrained(models, match_layer=match_layer)  # building a voice loads no vocoder
            vc.check_depth([match_layer])
            stages.now("building the voice")
            voice = vc.build_voice(list(references), trim=trim, name=name or output.stem, match_layer=match_layer)
            full = voice.num_frames
            if max_frames is not None:
                stages.now("compacting the voice")
                voice, clustering = voice.compact(max_frames)
                if not quiet and clustering.method != "none":
                    common.say("compacted", "green", f"{full} frames into {voice.num_frames} clusters "
                               f"({clustering.method} k-means, {clustering.seconds:.1f} s)")  # fmt: skip
            stages.now("writing the voice")
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
        keys = ("name", "encoder", "encoder_fingerprint", "layer", "match_layers", "frames", "compact", "dim",
                "speech_seconds", "created")  # fmt: skip
        common.show_saved(meta, keys, {"sources": meta["sources"]})

