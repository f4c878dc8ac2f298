"""The report in a folder: ``report.json`` (one key per metric), ``report.md`` (tables) and PNG plots.

Plots (matplotlib, Agg): ``similarity_hist.png`` (converted, source and genuine similarity distributions),
``per_file.png`` (similarity, and WER when known, per file) and, for a sweep, ``sweep.png`` (each metric
against the swept setting, a line per value of a second one) and ``sweep.md`` (the points as a table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knnvc import files
from knnvc.errors import OutputError
from knnvc.eval.core import Evaluation
from knnvc.eval.models import need
from vocoder import atomic

FIGURE_DPI = 100
ROWS: tuple[tuple[str, str, str], ...] = (
    # (summary key, label, what it means)
    ("speaker_similarity", "speaker similarity", "cosine of converted files to the target (mean ± std)"),
    ("source_similarity", "source similarity", "the sources against the same target: the score before conversion"),
    ("genuine_similarity", "genuine similarity", "the target's own files against each other: the ceiling"),
    ("eer_percent", "EER %", "telling converted from real target speech (50 = indistinguishable)"),
    ("wer_percent", "WER %", "word error rate of the ASR on the converted speech (lower is better)"),
    ("cer_percent", "CER %", "character error rate (lower is better)"),
)  # fmt: skip


def write_report(evaluation: Evaluation, folder: Path) -> list[Path]:
    """Write report.json, report.md, similarity_hist.png and per_file.png into ``folder``; return their paths."""
    folder = _folder(folder)
    paths = [folder / "report.json", folder / "report.md"]
    _write_text(paths[0], json.dumps(evaluation.to_json(), indent=2) + "\n")
    _write_text(paths[1], markdown(evaluation))
    paths.append(plot_similarity(evaluation, folder / "similarity_hist.png"))
    paths.append(plot_per_file(evaluation, folder / "per_file.png"))
    return paths


def write_sweep(
    settings: Sequence[str], values: Sequence[Sequence[Any]], points: Sequence[dict[str, Any]], folder: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Write a sweep's ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``folder``; return the JSON and paths.

    ``points`` (``knnvc.eval.sweep.Point.to_json`` each, with its ``summary``, None when skipped) come in grid
    order, the last setting varying fastest. The JSON holds ``settings`` and ``points``; a one-setting sweep
    also ``setting``, ``values`` and ``summaries`` (one per value, None where skipped).
    """
    folder = _folder(folder)
    result: dict[str, Any] = {"settings": list(settings)}
    if len(settings) == 1:
        result.update(setting=settings[0], values=list(values[0]), summaries=[p["summary"] for p in points])
        series = {"converted": [p["summary"] for p in points]}
    else:
        inner = len(values[1])
        series = {f"{settings[1]}={v}": [points[i * inner + j]["summary"] for i in range(len(values[0]))]
                  for j, v in enumerate(values[1])}  # fmt: skip
    result["points"] = list(points)
    paths = [folder / "sweep.json", folder / "sweep.md"]
    _write_text(paths[0], json.dumps(result, indent=2) + "\n")
    _write_text(paths[1], sweep_markdown(points, settings))
    paths.append(plot_sweep(settings[0], values[0], series, folder / "sweep.png"))
    return result, paths


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) for each metric present in ``summary``, formatted for a table."""
    rows = []
    for key, label, _ in ROWS:
        value = summary.get(key)
        if isinstance(value, dict):
            rows.append((label, f"{value['mean']:.3f} ± {value['std']:.3f} (n={value['n']})"))
        elif value is not None:
            rows.append((label, f"{value:.2f}"))
    for key, value in (summary.get("dnsmos") or {}).items():
        rows.append((f"DNSMOS {key.upper()}", f"{value:.2f}"))
    return rows


def markdown(evaluation: Evaluation) -> str:
    """The summary table, the models used, the notes and a per-file table, as markdown."""
    s = evaluation.summary
    files, targets = _count(s["files"], "file"), _count(s["targets"], "target")
    lines = [f"# knnvc eval: {files}, {targets}", "", "| metric | value | meaning |",
             "| --- | --- | --- |"]  # fmt: skip
    meaning = {label: text for _, label, text in ROWS}
    lines += [f"| {label} | {value} | {meaning.get(label, 'DNSMOS (1-5, higher is better)')} |"
              for label, value in summary_rows(s)]  # fmt: skip
    lines += ["", "Models: " + "; ".join(f"{k}: {v}" for k, v in evaluation.models.items()), ""]
    if s.get("wer_reference"):
        lines += [f"WER/CER references: {s['wer_reference']}.", ""]
    if s.get("wer_normaliser"):
        lines += [f"WER/CER text normalisation (references and hypotheses alike): {s['wer_normaliser']}.", ""]
    lines += [f"- {note}" for note in evaluation.notes] + ([""] if evaluation.notes else [])
    lines += ["| file | similarity | WER | CER | hypothesis |", "| --- | --- | --- | --- | --- |"]
    for f in evaluation.files:
        wer = "" if f.wer is None else f"{100 * f.wer:.1f}"
        cer = "" if f.cer is None else f"{100 * f.cer:.1f}"
        hyp = (f.hypothesis or "").replace("|", "/")
        lines.append(f"| {Path(f.file).name} | {f.speaker_similarity:.3f} | {wer} | {cer} | {hyp} |")
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def plot_similarity(evaluation: Evaluation, path: Path) -> Path:
    """Histogram of similarities: converted files, their sources and genuine target pairs (PNG, 800x500)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=FIGURE_DPI)
    groups = [("converted → target", [f.speaker_similarity for f in evaluation.files]),
              ("source → target", [f.source_similarity for f in evaluation.files if f.source_similarity is not None]),
              ("target ↔ target (genuine)", evaluation.genuine_scores)]  # fmt: skip
    low = min(min(v) for _, v in groups if v)
    span = (max(-1.0, min(0.5, low) - 0.02), 1.0)
    for label, values in groups:
        if values:
            ax.hist(values, bins=40, range=span, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.set(xlabel="cosine similarity", ylabel="count", title=f"Speaker similarity ({evaluation.models['verifier']})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_per_file(evaluation: Evaluation, path: Path) -> Path:
    """Per-file bars: similarity, and WER beside it when known (PNG, 1000 px wide)."""
    plt = _pyplot()
    files = evaluation.files
    with_wer = any(f.wer is not None for f in files)
    fig, axes = plt.subplots(1, 2 if with_wer else 1, figsize=(10, max(3.0, 0.25 * len(files) + 1.5)),
                             dpi=FIGURE_DPI, squeeze=False)  # fmt: skip
    names = [Path(f.file).name for f in files]
    axes[0][0].barh(names, [f.speaker_similarity for f in files], color="tab:blue")
    axes[0][0].set(xlabel="speaker similarity (cosine)", xlim=(min(0.0, *[f.speaker_similarity for f in files]), 1))
    axes[0][0].invert_yaxis()
    if with_wer:
        axes[0][1].barh(names, [100 * (f.wer or 0.0) for f in files], color="tab:orange")
        axes[0][1].set(xlabel="WER %")
        axes[0][1].invert_yaxis()
        axes[0][1].set_yticklabels([])
    fig.suptitle("Per file")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(
    setting: str, values: Sequence[Any], series: Mapping[str, Sequence[dict[str, Any] | None]], path: Path
) -> Path:
    """Each metric against the swept setting, one panel per metric and one line per series (PNG, 3 panels a
    row, 400 px each). ``series`` maps a line's label (a value of a second swept setting, or ``converted``) to its
    summaries, one per value; None is a skipped point: a gap in the line, and an x label ending "(skipped)" when
    every line skipped it.

    The similarity panel also draws the genuine (ceiling) and source (floor) similarities as dashed lines.
    """
    plt = _pyplot()
    every = [s for summaries in series.values() for s in summaries if s is not None]
    panels = [(key, label) for key, label in SWEPT if any(not math.isnan(_scalar(_get(s, key))) for s in every)]
    rows = max(1, (len(panels) + 2) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.5 * rows), dpi=FIGURE_DPI, squeeze=False)
    skipped = [all(list(summaries)[i] is None for summaries in series.values()) for i in range(len(values))]
    xs = [f"{v} (skipped)" if gone else str(v) for v, gone in zip(values, skipped, strict=True)]
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for line, summaries in series.items():
            ax.plot(xs, [_scalar(_get(s, key)) if s is not None else math.nan for s in summaries], marker="o",
                    label=line)  # fmt: skip
        if key == "speaker_similarity":
            for other, style in (("genuine_similarity", "g--"), ("source_similarity", "r--")):
                ys = [_first(other, [list(summaries)[i] for summaries in series.values()]) for i in range(len(xs))]
                if not all(math.isnan(y) for y in ys):
                    ax.plot(xs, ys, style, label=other.replace("_", " "))
        if key == "speaker_similarity" or len(series) > 1:
            ax.legend(fontsize="small")
        ax.set(xlabel=setting, ylabel=label, title=f"{label} vs {setting}")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _first(key: str, summaries: Sequence[dict[str, Any] | None]) -> float:
    """``key`` of the first summary that has it (the references' own numbers are the same on every line)."""
    for s in summaries:
        if s is not None and s.get(key) is not None:
            return _scalar(s[key])
    return math.nan


def sweep_markdown(points: Sequence[dict[str, Any]], settings: Sequence[str]) -> str:
    """A sweep's points as a markdown table: the settings, each metric, and why a point was skipped."""
    labels = [label for _, label in SWEPT]
    lines = ["# knnvc eval: sweep of " + " x ".join(settings), "",
             "| " + " | ".join([*settings, "reference speech s", *labels, "note"]) + " |",
             "| " + " | ".join(["---"] * (len(settings) + len(labels) + 2)) + " |"]  # fmt: skip
    for point in points:
        summary = point.get("summary") or {}
        cells = [str(point[name]) for name in settings]
        seconds = point.get("reference_speech_seconds")
        cells.append("" if seconds is None else f"{seconds:g}")
        for key, _ in SWEPT:
            value = _scalar(_get(summary, key))
            cells.append("" if math.isnan(value) else f"{value:.3f}" if key == "speaker_similarity" else f"{value:.2f}")
        note = point.get("skipped") and f"skipped: {point['skipped']}"
        cells.append((note or "; ".join(point.get("notes") or [])).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SWEPT = (("speaker_similarity", "speaker similarity"), ("eer_percent", "EER %"), ("wer_percent", "WER %"),
         ("cer_percent", "CER %"), ("dnsmos.ovrl", "DNSMOS OVRL"))  # fmt: skip


def _get(summary: dict[str, Any], key: str) -> Any:
    """``summary[key]``, where ``a.b`` reads ``summary[a][b]``; None when absent."""
    value: Any = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _scalar(value: Any) -> float:
    if isinstance(value, dict):
        return float(value["mean"])
    return float("nan") if value is None else float(value)


def _pyplot() -> Any:
    matplotlib = need("matplotlib", "the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        atomic.write_atomically(path, lambda fh: fig.savefig(fh, format="png"))
    except OSError as exc:
        raise files.write_error(path, exc) from exc
    finally:
        plt.close(fig)
    return path


def _folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the report folder {folder}: {exc}") from exc
    return folder


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (``vocoder.atomic``: a temporary file beside it, then a rename)."""
    try:
        atomic.write_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        raise files.write_error(path, exc) from exc
