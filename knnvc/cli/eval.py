"""``knnvc eval``: score a file or folder of conversions (speaker similarity, EER, WER/CER, DNSMOS), or sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.errors import UsageError
from knnvc.options import VOICE_SUFFIX, Models

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress as RichProgress

    from knnvc.eval.core import Evaluation
    from knnvc.eval.sweep import Grid, Point
    from knnvc.progress import Progress

PathOpt = Path | None


@app.command("eval")
@common.takes(common.pipeline)
def eval_command(
    converted: Annotated[
        PathOpt, typer.Argument(help="Converted file or folder (with --sweep: where the conversions go).")
    ] = None,
    target: Annotated[PathOpt, typer.Option("--target", "-t", help="The target's real speech: file or folder.")] = None,
    report: Annotated[Path, typer.Option("--report", "-r", help="Folder for report.json, report.md and plots.")] = Path(
        "eval_report"
    ),
    source: Annotated[PathOpt, typer.Option("--source", "-s", help="Source file or folder converted.")] = None,
    transcripts: Annotated[
        PathOpt, typer.Option("--transcripts", help="What was said: 'ID TEXT' lines; a file or folder.")
    ] = None,
    manifest: Annotated[
        PathOpt, typer.Option("--manifest", help="Many targets: TSV with columns converted, target[, source, text].")
    ] = None,
    verifier: Annotated[
        str, typer.Option("--verifier", help="auto, resemblyzer, or a WavLMForXVector folder or cached hub id.")
    ] = "auto",
    asr: Annotated[str, typer.Option("--asr", help="auto, whisper, pocketsphinx, none, or a Whisper path.")] = "auto",
    dnsmos: Annotated[bool, typer.Option("--dnsmos/--no-dnsmos", help="Estimate quality with DNSMOS.")] = True,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="Convert --source over a grid first, e.g. k=1,4,8, method=knn,mkl,linear or "
            "reference_seconds=5,10,30 (the references cut to that much speech); twice for a two-way grid.",
        ),
    ] = None,
    source_speakers: Annotated[
        PathOpt,
        typer.Option(
            "--source-speakers",
            help="With --sweep method=...linear: the source speaker's own recordings "
            "(or a folder per speaker) to fit each LinearVC pair on, apart from the converted files.",
        ),
    ] = None,
    *,
    pipeline: Models,
    json_out: common.JsonOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Score converted speech the way the kNN-VC paper does, and write a report (JSON, markdown, PNG plots)."""
    with common.session(verbose, quiet):
        grids = _check(converted, target, source, manifest, sweep, source_speakers)
        show = not (quiet or json_out)
        with common.err.status("loading metric models", spinner="dots") if show else common.nothing():
            models = _load_models(verifier, asr, dnsmos, str(pipeline.settings.device), show)
        if grids is not None:
            assert target is not None and source is not None  # checked by _check
            result: dict[str, Any] = _sweep(grids, converted or report / "converted", target, source, source_speakers,
                                            transcripts, report, models, show=show, pipeline=pipeline)  # fmt: skip
        else:
            evaluation = _score(converted, target, source, transcripts, manifest, models, show=show)
            from knnvc.eval.report import write_report

            written = write_report(evaluation, report)
            result = evaluation.to_json()
            if show:
                _table(evaluation)
                common.say("report:", "green", ", ".join(str(p) for p in written))
        if json_out:
            typer.echo(json.dumps(result, indent=2))


def _check(converted: PathOpt, target: PathOpt, source: PathOpt, manifest: PathOpt, sweep: list[str] | None,
           source_speakers: PathOpt = None) -> list[Grid] | None:  # fmt: skip
    """Usage errors before any model loads; the sweep's grids when there is one."""
    if manifest is not None:
        if converted is not None or target is not None or source is not None or sweep:
            raise UsageError("--manifest names every file itself: drop CONVERTED, --target, --source and --sweep")
        return None
    if target is None:
        raise UsageError("give --target (the target speaker's real speech), or --manifest")
    if target.suffix == VOICE_SUFFIX:
        raise UsageError(f"--target {target}: scoring needs the target's audio, not a saved voice")
    if not sweep:
        if converted is None:
            raise UsageError("give CONVERTED (a converted file or folder), or --sweep with --source")
        if source_speakers is not None:
            raise UsageError("--source-speakers fits LinearVC's pairs for --sweep method=...,linear: give --sweep")
        return None
    if source is None:
        raise UsageError("--sweep converts --source into the --target voice: give --source")
    if source_speakers is not None and not source_speakers.exists():
        raise UsageError(f"--source-speakers {source_speakers}: no such file or folder")
    from knnvc.eval.sweep import parse_sweeps

    return parse_sweeps(sweep)


def _load_models(verifier: str, asr: str, dnsmos: bool, device: str, show: bool) -> dict[str, Any]:
    from knnvc.eval.asr import load_asr
    from knnvc.eval.quality import load_dnsmos
    from knnvc.eval.speaker import load_verifier
    from knnvc.runtime.devices import resolve_device

    where = str(resolve_device(device))
    models: dict[str, Any] = {"verifier": load_verifier(verifier, where)}
    models["asr"] = None if asr == "none" else load_asr(asr, where)
    if asr == "auto" and show and not models["asr"].name.startswith("Whisper"):
        common.say("note:", "yellow", "Whisper-base is not in the local Hugging Face cache: WER/CER come from "
            "pocketsphinx, which is far weaker (compare its numbers only with each other)")  # fmt: skip
    models["dnsmos"] = None
    if dnsmos:
        models["dnsmos"], why = load_dnsmos()
        if why and show:
            common.say("note:", "yellow", why)
    return models


def _score(converted: PathOpt, target: PathOpt, source: PathOpt, transcripts: PathOpt, manifest: PathOpt,
           models: dict[str, Any], *, show: bool) -> Evaluation:  # fmt: skip
    from knnvc.eval.core import evaluate
    from knnvc.eval.inputs import pair, read_manifest

    if manifest is not None:
        items = read_manifest(manifest, transcripts)
    else:
        assert converted is not None and target is not None
        items = pair(converted, target, source, transcripts)
    with StageBar(show) as bar:
        return evaluate(items, models["verifier"], models["asr"], models["dnsmos"], progress=bar.update)


def _sweep(grids: list[Grid], out: Path, target: Path, source: Path, source_speakers: PathOpt, transcripts: PathOpt,
           report: Path, models: dict[str, Any], *, show: bool, pipeline: Models) -> dict[str, Any]:  # fmt: skip
    from knnvc.eval.report import write_report, write_sweep
    from knnvc.eval.sweep import run_sweep

    with common.err.status("loading conversion models", spinner="dots") if show else common.nothing():
        from knnvc.pipeline import KnnVC

        vc = KnnVC.from_pretrained(pipeline)
        vc.load_vocoder()  # before any reference is encoded

    def converted(point: Point) -> None:
        if show:
            common.say("converted:", "green", f"{point.name}: {point.converted} new, {point.kept} kept")

    points = run_sweep(vc, source, target, grids, out, source_speakers=source_speakers, on_point=converted)
    entries = []
    for point in points:
        entry = {**point.to_json(), "summary": None}
        for note in point.notes if show else ():
            common.say("note:", "yellow", f"{point.name}: {note}")
        if point.skipped is not None:
            if show:
                common.say("skipped:", "yellow", f"{point.name}: {point.skipped}")
        else:
            evaluation = _score(point.folder, target, source, transcripts, None, models, show=show)
            write_report(evaluation, report / point.name)
            entry["summary"] = evaluation.summary
            if show:
                _table(evaluation, title=f"knnvc eval: {point.name}")
        entries.append(entry)
    result, written = write_sweep([g.name for g in grids], [list(g.values) for g in grids], entries, report)
    if show:
        common.say("report:", "green", f"{', '.join(str(p) for p in written)}, and one folder per point")
    return result


def _table(evaluation: Evaluation, title: str = "knnvc eval") -> None:
    from rich.table import Table

    from knnvc.eval.report import summary_rows

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in summary_rows(evaluation.summary):
        table.add_row(label, value)
    common.err.print(table)
    common.err.print("  " + "; ".join(f"{k}: {v}" for k, v in evaluation.models.items()), markup=False, highlight=False)
    if evaluation.summary.get("wer_normaliser"):
        common.err.print(f"  WER/CER text normalisation: {evaluation.summary['wer_normaliser']}", markup=False,
                         highlight=False)  # fmt: skip
    for note in evaluation.notes:
        common.say("note:", "yellow", note)


class StageBar:
    """Rich progress on stderr for ``evaluate``'s ``Progress`` events: one bar per stage."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: RichProgress | None = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> StageBar:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

            self.bar = common.progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn())  # fmt: skip
            self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, event: Progress) -> None:
        if self.bar is None:
            return
        stage, done, total = event.stage, event.index, event.total
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


@app.command("eval-librispeech")
def eval_librispeech(
    test_clean: Annotated[Path, typer.Argument(help="LibriSpeech's test-clean folder (SPEAKER/CHAPTER/*.flac).")],
    work: Annotated[Path, typer.Argument(help="Folder for sources/, targets/, converted/ and manifest.tsv.")],
    sources_per_speaker: Annotated[
        int, typer.Option("--sources-per-speaker", help="Utterances each speaker gives as sources.")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random choice of source utterances.")] = 0,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Lay out the paper's kind of test set from LibriSpeech test-clean, then print the commands that score it."""
    with common.session(verbose, quiet):
        from knnvc.eval.librispeech import plan

        laid = plan(test_clean, work, sources_per_speaker=sources_per_speaker, seed=seed)
        if quiet:
            return
        minutes = [s / 60 for s in laid.reference_seconds.values()]
        common.say("planned:", "green", f"{laid.conversions} conversions into {laid.speakers} target speakers; "
            f"references {min(minutes):.1f}-{max(minutes):.1f} min per target; {laid.manifest}")  # fmt: skip
        w = str(work)
        common.err.print("next:", markup=False)
        common.err.print(f"  for t in $(ls {w}/sources); do knnvc convert {w}/sources/$t {w}/targets/$t "
                  f"-o {w}/converted/$t; done", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        common.err.print(f"  knnvc eval --manifest {w}/manifest.tsv --report {w}/report", markup=False, soft_wrap=True)
