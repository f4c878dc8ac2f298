"""``python -m bench.table``: docs/performance.md, the README's performance section, from bench/results/*.json.

Every figure in the page comes from a results file; rerun ``python -m bench`` (CPU) or ``python -m bench.gpu``
to refresh them, then this command (``python -m bench`` runs it at the end).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "performance.md"

HEADER = """# Performance

Measured by `python -m bench` (CPU) and `python -m bench.gpu` (GPU) with full-size models of the published
layouts and random weights (they cost the same to run as the real ones). Regenerate this page with
`python -m bench.table`. **Reference mode** is the original kNN-VC code's algorithm as it runs: WavLM-Large to
layer 6, fp32, batch 1, whole files, the matching set built once per voice, the vocoder on the whole file
(`bench/reference.py`). Both run as whole processes (start-up, model loading, the voice, every file, writing),
alternated A B B A; the figures are medians, with the load average of the shared machine beside them.
"""


def _load_range(task: dict[str, Any]) -> str:
    loads = [r[k] for mode in ("reference", "knnvc") for r in task[mode]["runs"] for k in ("load_before", "load_after")]
    return f"{min(loads):g}-{max(loads):g}"


def _rows(name: str, result: dict[str, Any]) -> list[str]:
    rows = []
    for key, label in (
        ("whole_process", "30 s source, 60 s of references"),
        ("folder", "20 clips of 3-10 s, one voice"),
    ):
        task = result.get(key)
        if not task:
            continue
        ref, fast = task["reference"], task["knnvc"]
        rows.append(
            f"| {name} | {label} ({task['audio_seconds']:g} s) "
            f"| {ref['wall_seconds']:g} s | {fast['wall_seconds']:g} s "
            f"| **{task['speedup']:g}x** | {ref['audio_per_wall_second']:g} / {fast['audio_per_wall_second']:g} "
            f"| {ref['peak_rss_gib']:g} / {fast['peak_rss_gib']:g} GiB | {_load_range(task)} |"
        )
    return rows


def _agreement(name: str, result: dict[str, Any]) -> list[str]:
    rows = []
    for precision, cases in result.get("precision_agreement", {}).items():
        if precision in ("auto_allowed", "threshold", "options"):
            continue
        allowed = result["precision_agreement"]["auto_allowed"].get(precision)
        cells = " | ".join(f"{c['knn_agreement']:.1%} / {c['snr_db']:g} dB" for c in cases.values())
        rows.append(f"| {name} | {precision} | {cells} | {'yes' if allowed else 'no'} |")
    return rows


def render() -> str:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = [HEADER, "| machine | task | reference mode | knnvc | speed-up | audio s per wall s (ref / knnvc) "
             "| peak RSS (ref / knnvc) | load avg |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, result in results.items():
        lines += _rows(name, result)
    lines += ["", "## Lower precisions against fp32", "",
              "kNN agreement: share of source frames whose 4 nearest matching-set frames equal fp32's; SNR: the "
              "converted waveform against fp32's. `--precision auto` may use a precision only where both reach 95 %.",
              "", "| machine | precision | fixtures (tiny models) | full-size random models | picked by auto |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, result in results.items():
        lines += _agreement(name, result)
    for name, result in results.items():
        if "gpu" in result:
            lines += ["", f"## {name}", "", "```json", json.dumps(result["gpu"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render())


if __name__ == "__main__":
    main()
