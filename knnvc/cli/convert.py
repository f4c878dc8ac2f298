"""``knnvc convert``: one file or a folder, with rich progress and a summary."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.controls import (
    MatchLayerOpt,
    MethodOpt,
    MklBlockOpt,
    MorphOpt,
    MorphWeightOpt,
    StrengthOpt,
    WeightingOpt,
    controls,
    with_morph_voice,
)
from knnvc.cli.view import BatchView, Stages
from knnvc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, KnnvcError, UsageError
from knnvc.options import (
    DEFAULT_K,
    DEFAULT_VOCODER,
    DEFAULT_WAVLM,
    MKL_BLOCK,
    PAIR_SUFFIX,
    VOICE_SUFFIX,
    WAVLM_LAYER,
)

if TYPE_CHECKING:
    from types import ModuleType

    from knnvc.batch.plan import Report
    from knnvc.options import ConvertOptions


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source audio file, or a folder searched recursively.")],
    reference: Annotated[
        Path,
        typer.Argument(help="Target speech: a file, a folder, or a saved .voice file; or a .pair (its fixed map)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", show_default="STEM_VOICE.FORMAT, or for a folder FOLDER_VOICE/, in the current folder",
            help="Output file (for one source) or folder (mirrored tree); never one of the inputs.",
        ),
    ] = None,
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    vocoder: common.VocoderOpt = DEFAULT_VOCODER,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    trim: common.TrimOpt = True,
    loudness: Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")] = "-16",
    sample_rate: Annotated[
        int | None,
        typer.Option("--sample-rate", help="Output rate in Hz (soxr).", show_default="the vocoder's, 16000"),
    ] = None,
    method: MethodOpt = "knn",
    mkl_block: MklBlockOpt = MKL_BLOCK,
    strength: StrengthOpt = 1.0,
    match_layer: MatchLayerOpt = WAVLM_LAYER,
    knn_weighting: WeightingOpt = "uniform",
    morph: MorphOpt = None,
    morph_weight: MorphWeightOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="wav, flac or ogg: for folder outputs and default file names.")
    ] = "wav",
    batch_size: common.BatchOpt = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the networks first (pays off on long folders).")
    ] = False,
    overwrite: common.OverwriteOpt = False,
    offline: common.OfflineOpt = False,
    json_out: common.JsonOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", help="Run on Ray: 'local', or a cluster address (extra [cluster])."),
    ] = None,
) -> None:
    """Convert SOURCE (file or folder) into the voice of REFERENCE. Existing outputs are skipped: rerun to resume.

    A folder's outputs mirror its tree, and the output folder keeps the settings they were made with
    (knnvc-manifest.json). A one-file output keeps its settings in its own metadata (its comment tag), and nothing is
    written beside it. Either way a rerun skips what these settings already made and refuses outputs made with other
    settings unless --overwrite. No output may replace an input (a source, a reference, a voice or pair, --morph),
    not even with --overwrite. On a terminal a status line names each stage of the start; one file's result line also
    says how long the command took to start converting it (imports, models, the voice).

    --method mkl (MKL-VC) maps each source utterance onto REFERENCE's statistics: it works from seconds of reference
    speech (1 s at least). A .pair (`knnvc pair build`) converts with its map (LinearVC's W, or an MKL-VC map): it
    was fitted on one source speaker's recordings, and fits that speaker only.
    """
    began = time.perf_counter()
    show = not (quiet or json_out)
    with common.session(verbose, quiet):
        with Stages(show) as stages:
            # What would fail every file fails here, once, before any model loads: bad values; missing, unreadable
            # or bad inputs (a source file, the references); an output over an input; output folders that cannot be
            # written; the device; k against a saved voice. Audio is checked before torch is even imported.
            stages.now("checking the inputs")
            from knnvc.options import ConvertOptions, Models, PipelineSettings

            options = ConvertOptions(k=k, loudness=common.parse_loudness(loudness), trim=trim,
                                     output_sample_rate=sample_rate,
                                     **controls(strength, match_layer, knn_weighting, morph, morph_weight,
                                                method=method, mkl_block=mkl_block))  # fmt: skip
            check_method(options, reference, morph)
            running = PipelineSettings(device, precision, batch_size, compile=compile_)
            common.require_inputs(source, reference, morph)
            inputs = {**_inputs("reference", reference), **_inputs("morph reference", morph)}
            if source.is_file():  # a folder's bad files fail one by one, as the batch meets them
                _probe(source)
            from knnvc.batch import identity, manifest, plan

            saved, jobs = None, []
            if not is_saved(reference):  # the outputs' names are known: check them before torch is imported
                jobs = plan.plan(source, output, _name(reference), extension=fmt, inputs=inputs)
                plan.check_outputs(plan.pending(jobs, overwrite=overwrite))
            stages.now("loading torch")
            common.check_device(device, precision)
            from knnvc.voice import Pair, Voice

            if is_saved(reference):  # its saved name names the outputs
                saved = Pair.load(reference) if is_pair(reference) else Voice.load(reference)
                if isinstance(saved, Voice) and options.method == "knn":
                    saved.check_neighbours(k)
                jobs = plan.plan(source, output, saved.name, extension=fmt, inputs=inputs)
                plan.check_outputs(plan.pending(jobs, overwrite=overwrite))
            if morph is not None and is_voice(morph):
                Voice.load(morph)  # a bad voice fails now, not once the models are loaded
            name = saved.name if saved else _name(reference)
            models = None
            if ray is not None:  # the driver builds the voice on its CPU; Ray's actors convert
                models = Models(wavlm, vocoder, replace(running, compile=False), offline or None)
                _cluster().connect(ray)
                running = PipelineSettings("cpu", "fp32", batch_size)  # with --ray the driver only builds voices
            stages.now(f"loading models: {weights_name(wavlm)}")
            from knnvc.pipeline import KnnVC

            vc = KnnVC.from_pretrained(Models(wavlm, vocoder, running, offline or None), match_layer=match_layer)
            stages.now(f"loading models: the vocoder ({weights_name(vocoder)})")
            vc.load_vocoder()  # missing or bad vocoder weights fail before any file is read
            if running.compile:
                stages.now("compiling the networks")
                vc.warm_up()
                if show:
                    common.say("compiled", "green", f"torch.compile took {vc.compile_seconds:.1f} s")
            if morph is not None:
                stages.now("loading the morph voice" if is_voice(morph) else "building the morph voice")
            options = with_morph_voice(vc, options, morph)  # before the settings record, which names it
            ext, compute = jobs[0].output.suffix.lower(), _cluster().compute(models) if models else None
            settings = identity.batch_settings(
                vc, saved or reference, options, vocoder=vocoder, extension=ext, compute=compute
            )
            ledger = manifest.ledger_for(source, jobs, settings)  # a folder's manifest, or one output's own tag
            resume = ledger.check(jobs, overwrite=overwrite)  # outputs made with other settings stop here
            voice = None
            if resume.todo:
                if saved is None:
                    stages.now("building the voice")
                voice = saved or vc.build_voice(reference, trim=trim, name=name, match_layer=match_layer)
                vc.check_target(voice, options)  # the encoder; k (kNN) or 1 s of speech (MKL-VC), before any file
        if voice is None:  # nothing to convert
            reasons = Counter(resume.reason(job) for job in jobs)
            report = plan.Report(total=len(jobs), skipped=list(jobs), skip_reasons=reasons)
        else:
            single = began if source.is_file() else None  # one file: its line says how long the start took
            with BatchView(resume.todo, show=show, verbose=verbose, began=single) as view:
                if models is not None:
                    report = _cluster().run(jobs, voice, options, models, address=str(ray), overwrite=overwrite,
                                         ledger=ledger, progress=view.on_event)  # fmt: skip
                else:
                    from knnvc.batch import runner

                    report = runner.run(vc, jobs, voice, options, overwrite=overwrite, progress=view.on_event,
                                       ledger=ledger)  # fmt: skip
        finish(report, single=source.is_file(), json_out=json_out, quiet=quiet, verbose=verbose)


def is_voice(path: Path) -> bool:
    """A saved voice, by its name."""
    return path.suffix == VOICE_SUFFIX  # a folder named so is refused by Voice.load, saying what it is


def is_pair(path: Path) -> bool:
    """A saved speaker pair, by its name (``Pair.load`` refuses a folder named so)."""
    return path.suffix == PAIR_SUFFIX


def is_saved(path: Path) -> bool:
    """A saved target (a voice or a pair), whose own name names the outputs."""
    return is_voice(path) or is_pair(path)


def check_method(options: ConvertOptions, reference: Path, morph: Path | None) -> None:
    """``UsageError`` (before any model loads) for a method that cannot convert onto REFERENCE: LinearVC needs a
    pair; a pair converts with its own map, so it takes no other method and no kNN control."""
    if not is_pair(reference):
        if options.method == "linear":
            raise UsageError(f"{reference}: --method linear converts with a pair, a map fitted on a source speaker's "
                             "recordings: build one with `knnvc pair build SOURCE_SPEAKER TARGET -o NAME.pair` and "
                             "give it as the target")  # fmt: skip
        return
    if options.method == "mkl":
        raise UsageError(f"{reference}: a pair converts with its own map; --method mkl fits one per utterance onto "
                         "a voice or references: give those as the target, or leave out --method")  # fmt: skip
    knn_only = [("--k", options.k != DEFAULT_K), ("--match-layer", options.match_layer != WAVLM_LAYER),
                ("--knn-weighting", options.knn_weighting != "uniform"), ("--morph", morph is not None)]  # fmt: skip
    for flag, given in knn_only:
        if given:
            raise UsageError(f"{flag} is a control of kNN matching, and pair {reference} converts with its own map: "
                             "leave it out")  # fmt: skip


def _name(reference: Path) -> str:
    """The voice name of reference audio: the file's stem, or the folder's name."""
    return reference.stem if reference.is_file() else reference.resolve().name


def weights_name(weights: str) -> str:
    """Weights as the status line names them: a file by its name, a hub id as it is."""
    path = Path(weights)
    return path.name if path.exists() else weights


def _inputs(role: str, reference: Path | None) -> dict[str, list[Path]]:
    """A reference's files, named by what they are (``knnvc.files.check_not_inputs``): a voice file, or its audio
    files, each probed first (``reference_files``); nothing for None."""
    if reference is None:
        return {}
    if is_voice(reference):
        return {role.replace("reference", "voice"): [reference]}
    if is_pair(reference):
        return {role.replace("reference", "pair"): [reference]}
    return {role: reference_files(reference)}


def _probe(source: Path) -> None:
    """A source file decodes (``knnvc.audio.decode.probe``) with the samples one WavLM frame needs."""
    from knnvc.audio import decode
    from knnvc.options import RECEPTIVE_FIELD

    decode.probe(source, min_samples=RECEPTIVE_FIELD)


def reference_files(reference: Path) -> list[Path]:
    """REFERENCE's audio (the file, or the folder's audio files), each probed (``knnvc.audio.decode.probe``): a bad
    one fails now, before any model loads, with the line the conversion would give."""
    from knnvc.audio import decode

    common.check_references(reference)
    found = decode.audio_files(reference) if reference.is_dir() else [reference]
    for path in found:
        _probe(path)
    return found


def _cluster() -> ModuleType:
    """``knnvc.batch.cluster``, imported when ``--ray`` is used (it needs the cluster extra)."""
    from knnvc.batch import cluster

    return cluster


def finish(report: Report, *, single: bool, json_out: bool, quiet: bool, verbose: bool) -> None:
    """Summary (a table on stderr for a folder, or JSON on stdout), one line per failure, then the exit status.

    One source file needs no table: its line (written, skipped, or the error) says it all.
    """
    from rich.table import Table

    s = report.summary()
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    elif not quiet and not single:
        table = Table(title="knnvc convert")
        for col in ("files", "converted", "skipped", "failed", "audio s", "wall s", "real-time factor"):
            table.add_column(col, justify="right")
        keys = ("files", "converted", "skipped", "failed", "audio_seconds", "wall_seconds")
        table.add_row(*(str(s[c]) for c in keys), f"{report.realtime_factor:.3f}")
        common.err.print(table)
    if report.skipped and not (quiet or json_out):
        common.say("skipped:", "yellow", skip_line(report))
    for failure in report.failed:
        if verbose:
            from rich.traceback import Traceback

            exc = failure.error
            common.err.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))
        common.say("error:" if single else "failed:", "bold red", _failure_line(failure.source, failure.error))
    if report.interrupted:
        common.say("interrupted:", "yellow", "finished files are kept; rerun the same command to convert the rest")
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.stopped is not None:  # a full disk: the batch stopped at once
        kept = "finished files are kept; fix the error above, then rerun to convert the rest"
        common.say("stopped:", "bold red", kept)
        raise typer.Exit(report.stopped.exit_code)
    if report.failed:
        raise typer.Exit(report.failed[0].error.exit_code if single else EXIT_PARTIAL)


def skip_line(report: Report) -> str:
    """How many existing outputs were kept, and why (from the output folder's settings record)."""
    why = report.skip_reasons
    parts = [f"{why['done']} already converted with these settings"] if why["done"] else []
    if why["unrecorded"] or why["exists"]:
        parts.append(f"{why['unrecorded'] + why['exists']} with no settings record (kept as they are)")
    return f"{len(report.skipped)} existing output(s): {', '.join(parts)}; --overwrite re-converts them"


def _failure_line(source: Path, error: KnnvcError) -> str:
    """``FILE: why``, naming the file once (most messages already name it)."""
    message = common.cli_words(str(error))
    name = common.shown(source)
    return message if str(source) in message or name in message else f"{name}: {message}"
