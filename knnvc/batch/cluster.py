"""Folder conversion as a Ray Data job (extra ``[cluster]``): ``knnvc convert IN_DIR VOICE -o OUT_DIR --ray ADDRESS``.

The same work as ``knnvc.batch.runner.run``, spread over a Ray cluster; Ray does the scheduling, retries and
back-pressure:

1. the driver plans the jobs (``knnvc.batch.plan.plan``), checks the output folder's settings record
   (``knnvc.batch.manifest``) and
   keeps only the outputs still to make, then puts the voice (or the pair) in the object store once (``ray.put``);
2. CPU tasks (``Dataset.map``) decode each source and resample it to 16 kHz mono;
3. ``map_batches`` with a class actor (``Converter``, ``compute=ActorPoolStrategy(size=N)``, ``num_gpus=1`` per
   actor on GPUs) holds a ``KnnVC`` and runs ``runner.convert_group`` (the local batch's unit of work) on each
   batch, then writes each output atomically (``workers.save``) into the mirrored tree;
4. the driver streams back one small row per file (status, seconds, error), records it in the manifest and in a
   ``Report``, so the summary, the exit codes and resuming are those of the local run.

A lost actor is restarted and its batch retried by Ray Data (its defaults for actor pools: ``max_restarts=-1``,
``max_task_retries=-1``; per-call remote arguments are deprecated in Ray 2.60, so none are set here). An
interrupted job keeps every output already written (atomic files); rerunning skips them. Outputs and weights
paths must be reachable from every node (a shared file system), as must the ``knnvc`` package.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knnvc import errors, progress
from knnvc.audio import decode
from knnvc.batch import runner, workers
from knnvc.batch.plan import Failure, Report
from knnvc.errors import DiskFullError, KnnvcError, UsageError, missing_extra
from knnvc.options import ConvertOptions, Models

if TYPE_CHECKING:
    from knnvc.batch.manifest import Ledger
    from knnvc.pipeline import Target

log = logging.getLogger(__name__)

READ_CPUS = 0.25  # CPUs a decoding task asks for: decoding is short, and leaves the cores to the actors
ACTOR_FILES = 8  # files per actor call without a batch size (the pipeline then batches as its device suits)
CPUS_PER_CPU_ACTOR = 4  # on CPU-only clusters, one converting actor per this many cores


@dataclass(frozen=True)
class Layout:
    """How many converting actors, and what each asks of Ray."""

    actors: int
    num_gpus: float
    num_cpus: float
    threads: int
    device: str


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``local``: start one here, or use the one this process started).

    Returns True when this call started Ray (so the caller shuts it down). Raises ``UsageError`` without Ray.
    """
    ray = _ray()
    quiet = logging.WARNING if log.getEffectiveLevel() <= logging.DEBUG else logging.ERROR
    for name in ("ray", "ray.data"):  # Ray Data's INFO lines would mix with knnvc's own progress
        logging.getLogger(name).setLevel(quiet)
    if ray.is_initialized():
        return False
    try:  # "local" always starts a new Ray here; "auto", HOST:PORT and ray:// join a cluster
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot join the Ray cluster at {address!r}: {exc}; check the address, or use local") from exc
    return True


def layout(resources: dict[str, float], models: Models, actors: int | None = None) -> Layout:
    """One actor per GPU (device cuda), else one per ``CPUS_PER_CPU_ACTOR`` cores, leaving some CPU for decoding."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    device = str(models.settings.device)
    on_gpu = gpus > 0 and device in ("auto", "cuda") or device.startswith("cuda")
    if on_gpu:
        if gpus == 0:
            raise UsageError("device='cuda' was asked for, but the Ray cluster has no GPU; use device='cpu'")
        count = actors or gpus
        return Layout(count, 1.0, 1.0, max(1, int(cpus // max(count, 1)) - 1), "cuda")
    count = actors or max(1, int(cpus // CPUS_PER_CPU_ACTOR))
    per_actor = max(0.5, (cpus - min(1.0, cpus / 4)) / count)
    return Layout(count, 0.0, per_actor, max(1, round(per_actor)), "cpu" if device == "auto" else device)


def compute(models: Models, actors: int | None = None) -> tuple[str, str]:
    """(device, precision) the actors of the connected cluster will convert with, for the settings record."""
    import torch

    from knnvc.runtime.devices import resolve_precision

    plan = layout(_ray().cluster_resources(), models, actors)
    dtype = resolve_precision(models.settings.precision, torch.device(plan.device))
    return plan.device, str(dtype).removeprefix("torch.")


def run(
    jobs: list[progress.Job],
    voice: Target,
    options: ConvertOptions,
    models: Models,
    *,
    address: str = "local",
    actors: int | None = None,
    overwrite: bool = False,
    ledger: Ledger | None = None,
    progress: Callable[[progress.Progress], None] | None = None,
) -> Report:
    """Convert ``jobs`` on Ray into ``voice`` (a ``Voice``, or a ``Pair``: its map) with ``options`` (the method
    among them); the ``Report`` of the local run (converted, skipped, failed, interrupted)."""
    ray = _ray()
    report, todo, notify = runner.begin(jobs, overwrite=overwrite, ledger=ledger, progress=progress)
    if not todo:
        return report
    started = time.perf_counter()
    owned = connect(address)
    try:
        plan = layout(ray.cluster_resources(), models, actors)
        log.info("Ray: %d actor(s) on %s, %s CPU and %s GPU each", plan.actors, plan.device, plan.num_cpus,
                 plan.num_gpus)  # fmt: skip
        tags = ledger.tags if ledger is not None else {}  # a one-file output carries its settings record
        rows = _dataset(todo, Setup([ray.put(voice)], options, models, plan, tags)).iter_rows()
        _collect(rows, dict(todo), report, notify, ledger)
    except KeyboardInterrupt:
        report.interrupted = True
    except ray.exceptions.RayError as exc:  # e.g. actors that cannot start (weights missing on a node)
        report.stopped = _stopped(exc)
        log.error("%s", report.stopped)
    finally:
        if ledger is not None:
            ledger.flush(force=True)
        if owned:
            ray.shutdown()
    report.wall_seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class Setup:
    """What every actor of a job is made with: the voice or pair (in Ray's object store), the options, the weights,
    the layout (device, threads) and the settings tag of a one-file output."""

    voice: list[Any]  # [ObjectRef]: wrapped in a list, so Ray hands the reference over rather than resolving it
    options: ConvertOptions
    models: Models
    plan: Layout
    tags: dict[str, str]


def _dataset(todo: list[tuple[int, progress.Job]], setup: Setup) -> Any:
    """The Ray Data pipeline: items -> ``read`` (CPU tasks) -> ``Converter`` (actor pool) -> one status row each."""
    ray = _ray()
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    plan = setup.plan
    items = [{"index": i, "source": str(job.source), "output": str(job.output)} for i, job in todo]
    files = setup.models.settings.batch_size or ACTOR_FILES  # files per actor call (``convert_group``)
    return (
        ray.data.from_items(items, override_num_blocks=max(1, len(items) // files))
        .map(read, num_cpus=READ_CPUS)
        .map_batches(
            Converter,
            fn_constructor_kwargs={"setup": setup},
            batch_size=files,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.num_gpus or None,
            num_cpus=plan.num_cpus,
        )
    )


def read(row: dict[str, Any]) -> dict[str, Any]:
    """A Ray CPU task: decode one source to (N,) float32 at 16 kHz, or record why it could not be decoded."""
    from knnvc.options import RECEPTIVE_FIELD

    try:
        wav = decode.load(Path(row["source"]), min_samples=RECEPTIVE_FIELD)
        return {**row, "wav": wav, "error": "", "error_type": ""}
    except KnnvcError as exc:
        return {**row, "wav": np.zeros(0, np.float32), "error": str(exc), "error_type": type(exc).__name__}


class Converter:
    """The Ray actor: a ``KnnVC`` on its device, mapping ``runner.convert_group`` over batches and writing outputs."""

    def __init__(self, setup: Setup) -> None:
        import torch

        from knnvc.pipeline import KnnVC

        ray = _ray()
        options = self.options = setup.options
        torch.set_num_threads(setup.plan.threads)
        self.voice: Target = ray.get(setup.voice[0])
        self.vc = KnnVC.from_pretrained(setup.models, device=setup.plan.device, match_layer=options.match_layer)
        self.vc.load_vocoder()  # an actor that cannot load it cannot start: the job stops with one error
        self.vc.check_target(self.voice, options)  # its encoder, and what the method needs of it
        self.rate = self.vc.output_rate(options)
        self.tags = setup.tags

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [_error(t, m) if t else np.asarray(w, np.float32)
                  for w, t, m in zip(rows["wav"], rows["error_type"], rows["error"], strict=True)]  # fmt: skip
        outcomes = runner.convert_group(self.vc, inputs, self.voice, self.options)
        results = [
            self._save(Path(output), out, took) for output, (out, took) in zip(rows["output"], outcomes, strict=True)
        ]
        columns = ("status", "seconds", "audio_seconds", "error", "error_type")
        return {"index": rows["index"], **{name: np.array([r[n] for r in results]) for n, name in enumerate(columns)}}

    def _save(self, output: Path, out: np.ndarray | KnnvcError, seconds: float) -> tuple[str, float, float, str, str]:
        """Write one output atomically: (status, compute seconds, audio seconds, error, error type) for the driver."""
        if isinstance(out, np.ndarray):
            try:
                workers.save(output, out, self.rate, self.tags)
                return "done", seconds, len(out) / self.rate, "", ""
            except KnnvcError as exc:
                out = exc
        return "fail", seconds, 0.0, str(out), type(out).__name__


def _error(kind: str, message: str) -> KnnvcError:
    """The typed error a worker reported by name (so the exit code is the local run's)."""
    cls = getattr(errors, str(kind), KnnvcError)
    return cls(str(message)) if isinstance(cls, type) and issubclass(cls, KnnvcError) else KnnvcError(str(message))


def _stopped(exc: BaseException) -> KnnvcError:
    """A failed Ray job as one typed line: the knnvc error that caused it, else Ray's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, KnnvcError):
        return cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
    raised = re.findall(r"knnvc\.errors\.(\w+): (.+)", text)  # an actor that died in __init__ quotes its error
    if raised:
        return _error(*raised[-1])
    first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return KnnvcError(f"the Ray job stopped: {first[:300]}; finished outputs are kept, rerun to resume")


def _collect(
    rows: Any,
    jobs: dict[int, progress.Job],
    report: Report,
    notify: Callable[[progress.Progress], None],
    ledger: Ledger | None,
) -> None:
    """Record each finished file as it streams back; a full disk stops the job (as in the local run)."""
    for row in rows:
        i, job = int(row["index"]), jobs[int(row["index"])]
        if row["status"] == "done":
            report.converted.append(job)
            report.audio_seconds += float(row["audio_seconds"])
            notify(progress.Progress("done", i, report.total, job, seconds=float(row["seconds"]),
                                  audio_seconds=float(row["audio_seconds"])))  # fmt: skip
        else:
            error = _error(row["error_type"], row["error"])
            report.failed.append(Failure(job.source, error))
            notify(progress.Progress("fail", i, report.total, job, seconds=float(row["seconds"]), error=error))
            if isinstance(error, DiskFullError):
                report.stopped = error
                return
        if ledger is not None:
            ledger.flush()


def _ray() -> Any:
    try:
        import ray
        import ray.data
        import ray.exceptions
    except ImportError as exc:
        raise missing_extra("a Ray job", "cluster", exc.name or "ray") from None
    return ray
