"""``knnvc train``: prematch features, then train a HiFi-GAN vocoder on them (see docs/training.md).

Heavy imports (torch, the encoder, ``vocoder.train``) stay inside the commands so ``knnvc --help`` is instant.
Library errors become one line and their exit code through ``knnvc.cli.common.handle_errors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from knnvc.cli import common
from knnvc.cli.app import train_app
from knnvc.options import DEFAULT_K, DEFAULT_WAVLM, SAMPLE_RATE, PipelineSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from knnvc.train.store import PrematchReport


@train_app.command("prematch")
def prematch_command(
    data_dir: Annotated[Path, typer.Argument(help="Speaker folders (speaker/chapter/utt), or the manifest root.")],
    out_dir: Annotated[Path, typer.Argument(help="Features folder to write (rerun to resume).")],
    wavlm: common.WavlmOpt = DEFAULT_WAVLM,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="CSV with the columns path,speaker (instead of folders).")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Nearest neighbours averaged per frame.")] = DEFAULT_K,
    device: common.DeviceOpt = "auto",
    precision: common.PrecisionOpt = "auto",
    sample_rate: Annotated[
        int, typer.Option("--sample-rate", help="Rate of the stored target audio (a multiple of 50 Hz).")
    ] = SAMPLE_RATE,
    batch_size: common.BatchOpt = None,
    min_frames: Annotated[int, typer.Option("--min-frames", min=1, help="Skip shorter utterances (50 Hz).")] = 10,
    max_pool_minutes: Annotated[
        float, typer.Option("--max-pool-minutes", min=1, help="Match bigger speakers in pools of this size.")
    ] = 60.0,
    offline: common.OfflineOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Build prematched training features: each utterance matched onto its speaker's OTHER utterances.

    OUT_DIR may not be DATA_DIR (by any name: a link to it counts).
    """
    with common.session(verbose, quiet):
        from knnvc.files import check_not_inputs

        settings = PipelineSettings(device, precision, batch_size)
        common.require_inputs(data_dir, manifest)
        check_not_inputs([], {"training data": [data_dir]}, folders=[out_dir])
        common.check_device(device, precision)
        from rich.progress import Progress

        from knnvc.train.prematch import prematch

        with common.progress_bar(*Progress.get_default_columns(), quiet=quiet) as bar:
            task = bar.add_task("prematching", total=None)

            def on_speaker(done: int, total: int, speaker: str) -> None:
                bar.update(task, completed=done, total=total, description=f"speaker {speaker}")

            report = prematch(
                data_dir, out_dir, wavlm=wavlm, manifest=manifest, k=k, settings=settings, sample_rate=sample_rate,
                min_frames=min_frames, max_pool_minutes=max_pool_minutes, offline=offline or None,
                on_speaker=on_speaker,
            )
        if not quiet:
            _print_prematch(report)


def _print_prematch(report: PrematchReport) -> None:
    common.err.print(
        f"{report.out_dir}: {report.written} utterances written, {report.existing} already done, "
        f"{len(report.skipped)} skipped ({report.speakers} speakers)", highlight=False,
    )
    if report.below_rate:
        common.err.print(f"[yellow]warning:[/] {report.below_rate} utterances were recorded below the target rate and "
                  "upsampled", highlight=False)
    if report.skipped:
        common.err.print(f"skipped utterances and reasons: {report.out_dir / 'skipped.json'}", highlight=False)


def _read_overrides(path: Path | None) -> dict[str, Any]:
    from knnvc.errors import UsageError

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--config {path}: cannot read a JSON object ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _resolve_init(init: str | None, offline: bool) -> Path | None:
    """A registry name (``prematched``) or a generator file/folder -> the checkpoint file."""
    if init is None:
        return None
    from knnvc.weights.hub import resolve_vocoder

    return resolve_vocoder(init, offline=offline or None)


# TrainConfig's defaults, shown in --help without importing vocoder.train (tests/test_first_hour.py keeps them equal).
DEFAULT_STEPS, DEFAULT_SEGMENTS, DEFAULT_CHECKPOINT_EVERY = 2_500_000, 16, 5000
OR_CONFIG = "or the --config file's"


@train_app.command("vocoder")
def vocoder_command(
    features_dir: Annotated[Path, typer.Argument(help="Folder written by `knnvc train prematch`.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", show_default=False,
                     help="Run folder: checkpoints, logs, samples (resumed if present); not FEATURES_DIR itself."
                     "  [required]"),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", hidden=True, help="Old name of --output.")] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Total steps to reach.", show_default=f"{DEFAULT_STEPS} {OR_CONFIG}"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Segments per GPU per step.",
                     show_default=f"{DEFAULT_SEGMENTS} {OR_CONFIG}"),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.",
                     show_default=f"{DEFAULT_CHECKPOINT_EVERY} {OR_CONFIG}"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON of vocoder and training overrides (upsample_rates...).")
    ] = None,
    init: Annotated[
        str | None, typer.Option("--init", help="Generator to fine-tune from: 'prematched' or a checkpoint.")
    ] = None,
    device: common.DeviceOpt = "auto",
    offline: common.OfflineOpt = False,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Train a HiFi-GAN vocoder on prematched features; several GPUs: torchrun -m vocoder.train."""
    with common.session(verbose, quiet):
        from knnvc.errors import UsageError
        from knnvc.files import check_not_inputs, writable_folder

        if output is not None and out is not None and output != out:
            raise UsageError("give the run folder once, as -o/--output")
        out = output or out
        if out is None:
            raise UsageError("Missing option '--output' / '-o'; try 'knnvc train vocoder --help'")
        common.require_inputs(features_dir, config)
        check_not_inputs([], {"features": [features_dir]}, folders=[out])
        common.check_device(device)
        writable_folder(out)  # before any download or training: one line, not a traceback
        flags = {"max_steps": steps, "batch_size": batch_size, "checkpoint_every": checkpoint_every}
        result = _train(features_dir, out, _read_overrides(config), {k: v for k, v in flags.items() if v},
                        _resolve_init(init, offline), device, quiet)
        if not quiet:
            common.err.print(f"stopped at step {result.step}; generator: {result.generator_path}", highlight=False)


def _train(features_dir: Path, out: Path, overrides: Mapping[str, Any], flags: Mapping[str, Any],
           init: Path | None, device: str, quiet: bool) -> Any:
    """Run the trainer with a progress bar; map its errors to knnvc's."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from knnvc.errors import UsageError, WeightsError
    from knnvc.files import write_error
    from vocoder import VocoderLoadError
    from vocoder.train import TrainConfig, TrainingError, split_overrides
    from vocoder.train.trainer import train

    try:
        vocoder_overrides, train_overrides = split_overrides(overrides)
        cfg = TrainConfig.from_dict({**train_overrides, **flags})
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with common.progress_bar(*columns, quiet=quiet) as bar:
            task = bar.add_task("training", total=cfg.max_steps)

            def on_step(step: int, losses: Mapping[str, float]) -> None:
                bar.update(task, completed=step, description=f"mel {losses['g_mel']:.3f} d {losses['d_total']:.2f}")

            return train(features_dir, out, cfg, vocoder_overrides=vocoder_overrides, init=init, device=device,
                         on_step=on_step)
    except TrainingError as exc:
        raise UsageError(str(exc)) from exc
    except VocoderLoadError as exc:
        raise WeightsError(str(exc)) from exc
    except OSError as exc:  # the run folder stopped being writable (full disk, permissions) mid-run
        where = Path(exc.filename) if exc.filename else out
        if not where.resolve().is_relative_to(out.resolve()):
            raise
        raise write_error(where, exc) from exc
