"""``python -m bench.table``: the tables of docs/performance.md, from bench/results/*.json.

Every figure in the page's tables comes from a results file; rerun ``python -m bench`` (CPU) or
``python -m bench.gpu`` to refresh them, then this command (``python -m bench`` runs it at the end). It rewrites
what lies between the page's two ``bench.table`` markers and leaves the prose around them as it is (a page without
the markers is written whole: ``HEADER``, then the tables).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- python -m bench.table: start -->", "<!-- python -m bench.table: end -->"

HEADER = """# Performance

Measured by `python -m bench` (CPU) and `python -m bench.gpu` (GPU) with full-size models of the published
layouts and random weights (they cost the same to run as the real ones). Regenerate its tables with
`python -m bench.table`. **Reference mode** is the original kNN-VC code's algorithm as it runs: WavLM-Large to
layer 6, fp32, batch 1, whole files, the matching set built once per voice, the vocoder on the whole file
(`bench/reference.py`). Both run as whole processes (start-up, model loading, the voice, every file, writing),
alternated A B B A; the figures are medians, with the load average of the shared machine beside them.

Where knnvc's time goes, and what makes it faster:
- **Fast start.** `import knnvc` and `knnvc --help` import no torch; transformers loads only with a WavLM. The
  first load keeps a converted copy of the weights in the cache (WavLM's 6 layers, the vocoder with weight norm
  folded, as safetensors); later loads memory-map it instead of unpickling 1.2 GB.
- **Cross-file batching, on a GPU.** The windows of all the files of a group (16 files) form the encoder's and
  the vocoder's batches, bucketed by length within 25 % (2 % on a CPU when a batch size is asked for). Padding
  never changes a result (masks in WavLM and the vocoder; tested to 1e-5 against each file alone). On a CPU
  the batch size is 1 unless asked: there batching measured slower (the bench folder vocodes in 18.6 s one file
  at a time, 26.0 s in batches of 4, fp32), and a CPU run is as fast as its arithmetic, so in fp32 knnvc's
  compute is the original's and only bf16 (on CPUs that have it) makes it faster.
- **The vocoder's layout on a CPU.** HiFi-GAN's 1-D convolutions run as the same 2-D convolutions over
  (B, C, 1, T) in channels-last layout (`Generator.channels_last`), which oneDNN computes faster: 10 s of
  full-size HiFi-GAN on 2 cores in 0.98 s instead of 1.50 s (fp32), 0.46 s instead of 0.66 s (bf16); the
  outputs agree within 6e-8.
- **Nothing waits.** The voice stays on the device, normalised once; the encoder reads lengths on the host
  (no device sync); decoding, loudness, resampling and atomic writes run in worker threads.
- **Precision.** `--precision bf16` (CUDA, or a CPU with AMX or AVX512-BF16) keeps fp32 islands: the raw
  waveform and WavLM's first convolution, and the vocoder's last convolution and tanh. fp32 means fp32 (TF32
  off). `auto` is fp32: bf16 keeps fewer than 95 % of fp32's kNN choices (table below).
- **`--compile`** runs `torch.compile` on both networks and reports the compile time.
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
        label += f", knnvc in {result.get('knnvc_precision', '?')}"
        cpu = f"{result['cpu']} ({', '.join(result['cpu_flags']) or 'no AVX'})" if "cpu_flags" in result else "?"
        rows.append(
            f"| {name}, {cpu} | {label} ({task['audio_seconds']:g} s) "
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


def speed_results() -> dict[str, dict[str, Any]]:
    """The results files of ``python -m bench`` and ``python -m bench.gpu`` (not those of the other benchmarks)."""
    loaded = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    return {name: r for name, r in loaded.items() if {"whole_process", "folder", "gpu", "precision_agreement"} & set(r)}


def startup_rows() -> list[str]:
    """The section of ``python -m bench.startup``'s results (``startup-<cpu>.json``), or nothing without any."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("startup-*.json"))]
    if not results:
        return []
    rows = ["", "## Start-up", "",
            "`python -m bench.startup`: each command as a whole process, wall seconds over its runs (median, fastest, "
            "slowest); `python -c pass` is the interpreter's own start.", "",
            "| CPU | command | median | fastest | slowest | load avg |", "|---|---|---|---|---|---|"]  # fmt: skip
    for result in results:
        for row in result["figures"].values():
            runs = row.get("runs", result["runs"])  # each row's own count (a convert is slower: fewer runs)
            rows.append(f"| {result['cpu']} ({result['cores']} cores, {runs} runs) | `{row['command']}` "
                        f"| {row['median_s']:.3f} s | {row['min_s']:.3f} s | {row['max_s']:.3f} s "
                        f"| {row['load_before']:g}-{row['load_after']:g} |")  # fmt: skip
    return rows


def tables() -> str:
    """The generated part of the page: speed, precision agreement, GPU runs and start-up, from the results files."""
    results = speed_results()
    lines = ["| machine | task | reference mode | knnvc | speed-up | audio s per wall s (ref / knnvc) "
             "| peak RSS (ref / knnvc) | load avg |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, result in results.items():
        lines += _rows(name, result)
    lines += [f"\n{name}: {result['note']}" for name, result in results.items() if result.get("note")]
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
    lines += startup_rows()
    return "\n".join(lines) + "\n"


def render(page: str | None = None) -> str:
    """``page`` with its generated part replaced by ``tables()``; without the markers (or a page), a new page."""
    if page is None or START not in page or END not in page:
        return f"{HEADER}\n{START}\n{tables()}{END}\n"
    head, rest = page.split(START, 1)
    return f"{head}{START}\n{tables()}{END}{rest.split(END, 1)[1]}"


def main() -> None:
    """Rewrite the tables of docs/performance.md between its bench.table markers (the page's prose is kept)."""
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render(PAGE.read_text(encoding="utf-8") if PAGE.exists() else None), encoding="utf-8")


if __name__ == "__main__":
    main()
