"""``knnvc convert``: one file or a folder, with rich progress and a summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.controls import (
    MatchLayerOpt,
    MorphOpt,
    MorphWeightOpt,
    StrengthOpt,
    WeightingOpt,
    controls,
    with_morph_voice,
)
from knnvc.cli.view import BatchView
from knnvc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, KnnvcError
from knnvc.options import DEFAULT_K, DEFAULT_VOCODER, DEFAULT_WAVLM, WAVLM_LAYER

if TYPE_CHECKING:
    from types import ModuleType

    from knnvc.batch.plan import Report


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source audio file, or a folder searched recursively.")],
    reference: Annotated[Path, typer.Argument(help="Target speech: a file, a folder, or a saved .voice file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (for one source) or folder (mirrored tree).")
    ] = None,
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    vocoder: common.VocoderOpt = DEFAULT_VOCODER,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    trim: common.TrimOpt = True,
    loudness: Annotated[str, typer.Option("--loudness", help="Output loudness in LUFS, or 'none'.")] = "-16",
    sample_rate: Annotated[
        int | None, typer.Option("--sample-rate", help="Output rate in Hz (soxr) [default: the vocoder's, 16000].")
    ] = None,
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")] = False,
    offline: common.OfflineOpt = False,
    json_out: common.JsonOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", help="Run on Ray: 'local', or a cluster address (extra [cluster])."),
    ] = None,
) -> None:
    """Convert SOURCE (file or folder) into the voice of REFERENCE. Existing outputs are skipped: rerun to resume."""
    with common.session(verbose, quiet):
        from knnvc.options import ConvertOptions, Models, PipelineSettings

        # What would fail every file fails here, once, before any model loads: bad values, missing or unreadable
        # inputs, the device, k against a saved voice, output folders that cannot be written.
        options = ConvertOptions(k=k, loudness=common.parse_loudness(loudness), trim=trim,
                                 output_sample_rate=sample_rate,
                                 **controls(strength, match_layer, knn_weighting, morph, morph_weight))  # fmt: skip
        running = PipelineSettings(device, precision, batch_size, compile=compile_)
        common.preflight(source, reference, device=device, precision=precision)
        from knnvc.batch import identity, manifest, plan, runner
        from knnvc.voice import VOICE_SUFFIX, Voice

        saved = Voice.load(reference) if reference.suffix == VOICE_SUFFIX else None
        if saved is not None:
            saved.check_neighbours(k)
        else:
            common.check_references(reference)
        name = saved.name if saved else reference.stem if reference.is_file() else reference.resolve().name
        jobs = plan.plan(source, output, name, extension=fmt)
        plan.check_outputs(plan.pending(jobs, overwrite=overwrite))
        models = None
        if ray is not None:  # the driver builds the voice on its CPU; Ray's actors convert
            models = Models(wavlm, vocoder, replace(running, compile=False), offline or None)
            _cluster().connect(ray)
            running = PipelineSettings("cpu", "fp32", batch_size)  # with --ray the driver only builds voices
        with common.err.status("loading models", spinner="dots") if not (quiet or json_out) else common.nothing():
            from knnvc.pipeline import KnnVC

            vc = KnnVC.from_pretrained(Models(wavlm, vocoder, running, offline or None), match_layer=match_layer)
            vc.load_vocoder()  # missing or bad vocoder weights fail before any file is read
            compile_ = running.compile
            if compile_:
                vc.warm_up()
                if not (quiet or json_out):
                    common.say("compiled", "green", f"torch.compile took {vc.compile_seconds:.1f} s")
            options = with_morph_voice(vc, options, morph)  # before the settings record, which names it
            ext, compute = jobs[0].output.suffix.lower(), _cluster().compute(models) if models else None
            settings = identity.batch_settings(
                vc, saved or reference, options, vocoder=vocoder, extension=ext, compute=compute
            )
            ledger = manifest.Ledger(plan.manifest_folder(source, jobs), settings)
            resume = ledger.check(jobs, overwrite=overwrite)  # outputs made with other settings stop here
            voice = (
                (saved or vc.build_voice(reference, trim=trim, name=name, match_layer=match_layer))
                if resume.todo
                else None
            )
        if voice is None:  # nothing to convert
            reasons = Counter(resume.reason(job) for job in jobs)
            report = plan.Report(total=len(jobs), skipped=list(jobs), skip_reasons=reasons)
        else:
            voice.check_compatible(vc.encoder.fingerprint, vc.encoder.layer, vc.encoder.name)
            voice.check_neighbours(k)  # references: now that their frames are counted, before any file
            with BatchView(resume.todo, show=not (quiet or json_out), verbose=verbose) as view:
                if models is not None:
                    report = _cluster().run(jobs, voice, options, models, address=str(ray), overwrite=overwrite,
                                         ledger=ledger, progress=view.on_event)  # fmt: skip
                else:
                    report = runner.run(vc, jobs, voice, options, overwrite=overwrite, progress=view.on_event,
                                       ledger=ledger)  # fmt: skip
        finish(report, single=source.is_file(), json_out=json_out, quiet=quiet, verbose=verbose)


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
