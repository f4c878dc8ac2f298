"""Whole-process comparisons: the original's algorithm (``bench.reference``) and ``knnvc convert``, side by side.

Each run is a fresh ``python`` process, timed from launch to exit (imports, model loading, the voice, every
file, writing), with its peak resident memory from ``wait4``. The two modes alternate (A B B A ...), so a
change in the machine's load hits both; the load average is recorded beside every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Task:
    """What both modes convert: sources (a file or a folder's files) into one voice from ``references``."""

    name: str
    sources: list[Path]
    source_arg: Path  # the file, or the folder knnvc converts
    references: list[Path]
    audio_seconds: float


def load_average() -> float:
    """The 1-minute load average (``uptime``'s first figure)."""
    return round(os.getloadavg()[0], 2)


def timed(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` to completion: wall seconds, peak RSS (GiB), load average before and after."""
    before = load_average()
    start = time.perf_counter()
    wrapped = [sys.executable, "-S", str(ROOT / "bench" / "peak.py"), *command]  # -S: a small parent
    proc = subprocess.run(wrapped, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:5])}... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1].split()[-1])
    return {"wall_seconds": round(wall, 2), "peak_rss_gib": round(peak_kib / 2**20, 3),
            "load_before": before, "load_after": load_average()}  # fmt: skip


def reference_command(task: Task, models: dict[str, Path], out: Path, device: str) -> list[str]:
    return [sys.executable, "-m", "bench.reference", *map(str, task.sources), "--wavlm", str(models["wavlm"]),
            "--vocoder", str(models["vocoder"]), "--refs", *map(str, task.references), "-o", str(out),
            "--device", device]  # fmt: skip


def knnvc_command(task: Task, models: dict[str, Path], out: Path, device: str, extra: list[str]) -> list[str]:
    refs = task.references[0].parent
    target = out / task.sources[0].name if len(task.sources) == 1 else out
    return [sys.executable, "-m", "knnvc", "convert", str(task.source_arg), str(refs), "-o", str(target),
            "--wavlm", str(models["wavlm"]), "--vocoder", str(models["vocoder"]), "--device", device,
            "--overwrite", "--quiet", *extra]  # fmt: skip


def alternate(
    task: Task, models: dict[str, Path], work: Path, device: str, repeats: int, extra: list[str]
) -> dict[str, Any]:
    """``repeats`` runs of each mode in A B B A order; medians, every run, and the speed-up of the medians."""
    env = {**os.environ, "KNNVC_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "knnvc": []}
    order = [("reference", "knnvc")[(i + i // 2) % 2] for i in range(2 * repeats)]  # A B B A A B ...
    for n, mode in enumerate(order):
        out = work / f"out-{task.name}-{mode}-{n}"
        out.mkdir(parents=True, exist_ok=True)
        if mode == "reference":
            command = reference_command(task, models, out, device)
        else:
            command = knnvc_command(task, models, out, device, extra)
        runs[mode].append(timed(command, env))
        print(f"  {task.name} {mode}: {runs[mode][-1]}", file=sys.stderr)  # noqa: T201 (progress of a benchmark)
    summary: dict[str, Any] = {"audio_seconds": round(task.audio_seconds, 2), "order": order}
    for mode, found in runs.items():
        wall = median(r["wall_seconds"] for r in found)
        summary[mode] = {
            "wall_seconds": wall,
            "audio_per_wall_second": round(task.audio_seconds / wall, 3),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in found),
            "runs": found,
        }
    summary["speedup"] = round(summary["reference"]["wall_seconds"] / summary["knnvc"]["wall_seconds"], 2)
    return summary
