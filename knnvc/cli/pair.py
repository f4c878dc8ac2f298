"""``knnvc pair build`` and ``knnvc pair info``: saved speaker pairs, a fixed map from one source speaker's features
to a target's (LinearVC's W, or an MKL-VC map fitted on the source speaker's recordings).

A pair converts with ``knnvc convert SOURCE NAME.pair``; its map fits the source speaker it was built from.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import KnnvcTyper, app
from knnvc.cli.controls import MklBlockOpt
from knnvc.cli.convert import is_pair, is_voice, reference_files, weights_name
from knnvc.cli.view import Stages
from knnvc.errors import OutputError, UsageError, missing_extra
from knnvc.options import DEFAULT_WAVLM, MKL_BLOCK, PAIR_SUFFIX

if TYPE_CHECKING:
    from knnvc.voice import Pair

pair_app = KnnvcTyper(
    help="Build and inspect speaker pairs: a source speaker's map onto a target (LinearVC, MKL-VC).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(pair_app, name="pair")

PAIR_METHODS = ("linear", "mkl")


@pair_app.command("build")
def pair_build(
    source_speaker: Annotated[
        Path, typer.Argument(help="The source speaker's recordings: a file or a folder (its audio files).")
    ],
    target: Annotated[
        Path, typer.Argument(help="The target: reference speech (a file or a folder) or a saved .voice file.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write NAME.pair (never over an input).")],
    method: Annotated[
        str, typer.Option("--method", help="linear (LinearVC's W) or mkl (MKL-VC's map between the two speakers).")
    ] = "linear",
    parallel: Annotated[
        bool,
        typer.Option(
            "--parallel",
            help="LinearVC on parallel speech: files of the same name say the same words; "
            "W is a lasso fit (TARGET: recordings, not a voice).",
        ),
    ] = False,
    lasso: Annotated[
        float | None,
        typer.Option(
            "--lasso",
            metavar="ALPHA",
            help="LinearVC: the lasso's alpha (0: least squares).",
            show_default="0.3 with --parallel, else least squares",
        ),
    ] = None,
    mkl_block: MklBlockOpt = MKL_BLOCK,
    name: common.NameOpt = None,
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    trim: common.TrimOpt = True,
    batch_size: common.BatchOpt = None,
    offline: common.OfflineOpt = False,
    overwrite: common.OverwriteOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Fit a map from SOURCE_SPEAKER's voice to TARGET's and save it as a pair (safetensors + JSON metadata).

    The map fits that source speaker only: convert their speech with `knnvc convert SOURCE NAME.pair`. LinearVC (the
    default) matches up to 8,192 frames of each speaker and fits W by least squares; its authors suggest about 3
    minutes of each. The output may not replace an input, not even with --overwrite.
    """
    with common.session(verbose, quiet):
        with Stages(not quiet) as stages:
            stages.now("checking the inputs")  # every check that needs no model comes first, audio before torch
            from knnvc.files import check_not_inputs, writable_folder
            from knnvc.options import Models, PipelineSettings

            if output.suffix != PAIR_SUFFIX:
                raise UsageError(f"{output}: pair files end in {PAIR_SUFFIX}")
            check_fit(method, parallel=parallel, lasso=lasso, mkl_block=mkl_block)
            common.require_inputs(source_speaker, target)
            inputs = {"source speaker": reference_files(source_speaker), **_target_files(target, parallel)}
            check_not_inputs([output], inputs)
            if output.exists() and not overwrite:
                raise OutputError(f"{output} already exists; pass --overwrite to replace it, or choose another name")
            settings = PipelineSettings(device, precision, batch_size)
            stages.now("loading torch")
            common.check_device(device, precision)
            writable_folder(output.parent)
            if is_voice(target):
                from knnvc.voice import Voice

                Voice.load(target)  # a bad voice fails now, before the model loads
            stages.now(f"loading models: {weights_name(wavlm)}")
            from knnvc.pipeline import KnnVC

            vc = KnnVC.from_pretrained(Models(wavlm, settings=settings, offline=offline or None))  # no vocoder
            stages.now("fitting the pair")
            pair = vc.build_pair(source_speaker, target, method=method, parallel=parallel, lasso=lasso,
                                 mkl_block=mkl_block, trim=trim, name=name or output.stem)  # fmt: skip
            stages.now("writing the pair")
            pair.save(output)
        if not quiet:
            common.say("wrote", "green", f"{output}: {summary(pair)}")


def check_fit(method: str, *, parallel: bool, lasso: float | None, mkl_block: int) -> None:
    """``UsageError`` for flags that do not fit ``method`` (before any model loads)."""
    if method not in PAIR_METHODS:
        raise UsageError(f"--method must be {' or '.join(PAIR_METHODS)} for a pair, got {method!r}")
    if method == "mkl":
        for flag, given in (("--parallel", parallel), ("--lasso", lasso is not None)):
            if given:
                raise UsageError(f"{flag} is LinearVC's; MKL-VC fits on the two speakers' statistics: leave it out")
    elif mkl_block != MKL_BLOCK:
        raise UsageError("--mkl-block is MKL-VC's block size: it needs --method mkl")
    if lasso is not None and lasso < 0:
        raise UsageError(f"--lasso takes an alpha of 0 or more (0: least squares), got {lasso}")
    if method == "linear" and (parallel or lasso) and lasso != 0 and importlib.util.find_spec("celer") is None:
        raise missing_extra("a lasso fit (a parallel LinearVC pair, or --lasso)", "linear", "celer")


def _target_files(target: Path, parallel: bool) -> dict[str, list[Path]]:
    """TARGET's files by what they are (``knnvc.files.check_not_inputs``), its audio probed: a voice file, or
    reference audio. A pair is not a target, and a parallel fit pairs recordings, not a voice."""
    if is_pair(target):
        raise UsageError(f"{target}: a pair maps onto a voice or reference speech, not onto another pair")
    if is_voice(target):
        if parallel:
            raise UsageError(f"{target}: --parallel pairs files by name: give the target's recordings, not a voice")
        return {"voice": [target]}
    return {"reference": reference_files(target)}


def summary(pair: Pair) -> str:
    """One line: what the map is, and the frames and files it was fitted on."""
    if pair.method == "mkl":
        what = f"MKL-VC map (blocks of {pair.mkl_block})"
    else:
        fit = f"lasso {pair.lasso:g}" if pair.lasso is not None else "least squares"
        what = f"LinearVC W ({'parallel, ' if pair.parallel else ''}{fit})"
    return (f"{what}, {pair.dim}x{pair.dim}, from {pair.source_frames} frames of {len(pair.sources)} source file(s) "
            f"to {pair.target_frames} frames of {len(pair.targets)} target file(s)")  # fmt: skip


@pair_app.command("info")
def pair_info(
    path: Annotated[Path, typer.Argument(metavar="PAIR", help="A .pair file.")], json_out: common.JsonOpt = False
) -> None:
    """Print a saved pair's metadata: method, frames, encoder and layer, the files it was fitted on and their hashes."""
    with common.handle_errors(False):
        from knnvc.voice import Pair

        common.require_inputs(path)
        meta = Pair.load(path).metadata()
        if json_out:
            typer.echo(json.dumps(meta, indent=2))
            return
        keys = ("name", "method", "parallel", "lasso", "mkl_block", "encoder", "encoder_fingerprint", "layer", "dim",
                "source_frames", "target_frames", "target_voice", "trim", "created")  # fmt: skip
        common.show_saved(meta, keys, {side: meta[side] for side in ("sources", "targets")})
