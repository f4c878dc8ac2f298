"""``python -m bench.methods``: what each matching step costs, kNN-VC, MKL-VC and LinearVC, on the CPU.

    python -m bench.methods            # full-size random weights, fp32: bench/results/methods-<cpu>.json and a table
    python -m bench.methods --quick    # a smoke run (2 s and 4 s of references, a 2 s source), nothing written

For 10 s and for 8 min of the target's references (``--lengths``), with the published layouts' full-size random
weights (``bench/layouts.py``: they cost what the real ones cost) in fp32, in one process, each figure the median of
``--repeats`` runs, with the machine's load average (``os.getloadavg()``) beside it:

- **encode**: the target's references built into a voice (``KnnVC.build_voice``, untrimmed, as a benchmark corpus
  has no silence to cut; the silence trim, silero-vad, is timed on its own), and the source speaker's recordings, as
  much as the target's (LinearVC fits on them);
- **fit**: kNN-VC fits nothing (the voice is its matching set); MKL-VC fits one map per source utterance, here a
  10 s one (``--source-seconds``); LinearVC fits W from the source speaker's recordings: least squares on nearest
  frames (non-parallel), or celer's lasso (alpha 0.3) on parallel files paired by name. The lasso solves one
  problem per output dimension (1,024), one after another; when the first ``LASSO_PROBE`` of them say the whole fit
  would take longer than ``--lasso-cap`` seconds, the figure is that probe scaled to 1,024 and marked
  ``extrapolated`` (the lasso's W is then not computed, and its conversion is timed with the non-parallel W: the
  same matrix product);
- **convert** a 10 s source: encode, match or map, vocode (the stages, and their sum);
- **fit share**: the fit beside the encoding it rides on: MKL's per-utterance fit over encoding that utterance,
  LinearVC's fit over encoding both speakers' recordings.

The source speaker's and the target's clips are cut from the fixture speech (``bench.measure.write_clip``), 30 s a
file, the same file names on both sides (the parallel fit pairs them). ``--wavlm``/``--vocoder`` take other
checkpoints (the tiny fixture models in ``tests/test_bench_methods.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import torch

from bench.layouts import write_prematch_vocoder, write_wavlm_large
from bench.measure import write_clip

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000
FILE_SECONDS = 30.0  # the references come in files of this length (the last one shorter)
LENGTHS = (10.0, 480.0)  # seconds of the target's references (and of the source speaker's recordings)
LASSO_PROBE = 32  # output dimensions the lasso is timed on before deciding whether the whole fit fits the cap
METHODS = ("knn", "mkl", "linear", "linear_parallel")
T = TypeVar("T")


def load() -> float:
    """The 1-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


def cpu() -> dict[str, Any]:
    """The CPU: model (``lscpu``), the flags that decide the fast paths, cores, torch's threads and version."""
    model, flags = platform.processor() or platform.machine(), set()
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = found.group(1).strip() if found else model
        flagged = re.search(r"^Flags:\s*(.+)$", out, re.M)
        flags = set(flagged.group(1).split()) if flagged else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "model": model,
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_name(model: str) -> str:
    """A file-name-safe short name of the CPU, e.g. ``amd-epyc-2core``."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or platform.machine()
    return f"{slug}-{os.cpu_count()}core"


def timed(fn: Callable[[], T], repeats: int) -> tuple[dict[str, Any], T]:
    """``fn`` run ``repeats`` times: {median_s, runs_s, load_before, load_after} and the last result."""
    before, times, result = load(), [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    figure = {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times],
              "load_before": before, "load_after": load()}  # fmt: skip
    return figure, result


def speaker_files(folder: Path, seconds: float, shift: int) -> list[Path]:
    """``seconds`` of fixture speech in files of ``FILE_SECONDS`` (named ``utt_NN.wav``, the same on both sides)."""
    count = int(np.ceil(seconds / FILE_SECONDS))
    return [write_clip(folder / f"utt_{i:02d}.wav", min(FILE_SECONDS, seconds - FILE_SECONDS * i), shift + i)
            for i in range(count)]  # fmt: skip


def lasso_fit(pairs: list[tuple[torch.Tensor, torch.Tensor]], cap: float) -> tuple[dict[str, Any], torch.Tensor | None]:
    """LinearVC's parallel fit (celer's lasso, alpha 0.3), whole if the probe says it fits in ``cap`` seconds."""
    from knnvc.nn import linear
    from knnvc.options import LINEAR_LASSO

    inputs = torch.cat([s for s, _ in pairs])
    outputs = torch.cat([linear.nearest_frames(s, t) for s, t in pairs])
    width = outputs.shape[1]
    probe, _ = timed(lambda: linear.lasso(inputs, outputs[:, :LASSO_PROBE], LINEAR_LASSO), 1)
    estimate = probe["median_s"] * width / min(LASSO_PROBE, width)
    if estimate > cap:
        return {**probe, "median_s": round(estimate, 2), "runs_s": [], "extrapolated": True,
                "probe_dims": LASSO_PROBE, "probe_s": probe["median_s"], "cap_s": cap}, None  # fmt: skip
    figure, weights = timed(lambda: linear.fit_parallel(pairs, LINEAR_LASSO), 1)
    return {**figure, "extrapolated": False, "probe_dims": LASSO_PROBE, "probe_s": probe["median_s"]}, weights


def measure_length(vc: Any, work: Path, seconds: float, source: Path, repeats: int, lasso_cap: float) -> dict[str, Any]:
    """Every method's figures with ``seconds`` of the target's references and of the source speaker's."""
    from knnvc.audio import decode, vad
    from knnvc.nn import linear, mkl
    from knnvc.nn.encoder import num_frames
    from knnvc.options import ConvertOptions
    from knnvc.voice import Pair

    folder = work / f"refs_{seconds:g}s"
    targets = speaker_files(folder / "target", seconds, 100)
    speaker = speaker_files(folder / "speaker", seconds, 300)
    wavs = [decode.load(p) for p in targets]
    out: dict[str, Any] = {"reference_seconds": seconds, "files": len(targets)}
    out["trim_references"], _ = timed(lambda: [vad.trim_silence(w) for w in wavs], 1)
    out["encode_references"], voice = timed(lambda: vc.build_voice(targets, trim=False), 1)
    out["encode_source_speaker"], spoken = timed(lambda: vc.build_voice(speaker, trim=False), 1)
    out["reference_frames"] = voice.num_frames

    wav = decode.load(source)
    out["encode_source"], feats = timed(lambda: vc.encode_many([wav])[0], repeats)
    fits: dict[str, dict[str, Any] | None] = {"knn": None}
    fits["mkl"], _ = timed(lambda: mkl.fit_mkl(feats, voice.frames, 2), repeats)
    fits["linear"], weights = timed(lambda: linear.fit_nonparallel(spoken.frames, voice.frames), repeats)

    def per_file(v: Any, files: list[Path]) -> list[torch.Tensor]:
        return list(v.frames.split([num_frames(sf.info(str(p)).frames) for p in files]))

    pairs = list(zip(per_file(spoken, speaker), per_file(voice, targets), strict=True))
    fits["linear_parallel"], lasso_weights = lasso_fit(pairs, lasso_cap)
    made = {"encoder": vc.encoder.name, "encoder_fingerprint": vc.encoder.fingerprint, "layer": vc.encoder.layer}
    target_for = {
        "knn": voice,
        "mkl": voice,
        "linear": Pair(matrix=weights, bias=None, method="linear", **made),
        "linear_parallel": Pair(
            matrix=weights if lasso_weights is None else lasso_weights,
            bias=None,
            method="linear",
            parallel=True,
            **made,
        ),  # fmt: skip
    }
    encoded_speakers = out["encode_references"]["median_s"] + out["encode_source_speaker"]["median_s"]
    out["methods"] = {}
    for method in METHODS:
        options = ConvertOptions(method="mkl" if method == "mkl" else "knn", loudness=None)
        if method.startswith("linear"):
            options = ConvertOptions(loudness=None)  # a pair converts with its own map
        match, matched = timed(lambda: vc.match(feats, target_for[method], options), repeats)  # noqa: B023
        vocode, _ = timed(lambda: vc.vocode(matched), repeats)  # noqa: B023
        fit = fits[method]
        row: dict[str, Any] = {
            "fit": fit,
            "convert": {
                "encode_s": out["encode_source"]["median_s"],
                "match_s": match["median_s"],
                "vocode_s": vocode["median_s"],
                "total_s": round(out["encode_source"]["median_s"] + match["median_s"] + vocode["median_s"], 4),
                "match": match,
                "vocode": vocode,
            },
        }
        if fit is not None:  # MKL: beside encoding its utterance; LinearVC: beside encoding both speakers
            base = out["encode_source"]["median_s"] if method == "mkl" else encoded_speakers
            row["fit_share_of_encoding"] = round(fit["median_s"] / base, 4)
        out["methods"][method] = row
    return out


def measure(
    wavlm: Path, vocoder: Path, work: Path, lengths: tuple[float, ...] = LENGTHS, source_seconds: float = 10.0,
    repeats: int = 3, lasso_cap: float = 300.0, progress: Callable[[str], None] | None = None,
    saved: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The benchmark's core: every method at every reference length, fp32 on the CPU, as a JSON-ready dict
    (handed to ``saved`` after each length, so that a long run stopped keeps what it measured)."""
    from knnvc.options import Models, PipelineSettings
    from knnvc.pipeline import KnnVC

    settings = PipelineSettings(device="cpu", precision="fp32")
    vc = KnnVC.from_pretrained(Models(str(wavlm), str(vocoder), settings, offline=True))
    vc.load_vocoder()
    source = write_clip(work / "source" / "source.wav", source_seconds, 7)
    vc.convert(source, vc.build_voice([source], trim=False))  # warm up: the first call's allocations are not timed
    result: dict[str, Any] = {
        "cpu": cpu(),
        "precision": "fp32",
        "wavlm": str(wavlm),
        "vocoder": str(vocoder),
        "source_seconds": source_seconds,
        "repeats": repeats,
        "lasso_cap_s": lasso_cap,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "lengths": [],
    }
    for seconds in lengths:
        if progress:
            progress(f"{seconds:g} s of references (load {load()})")
        result["lengths"].append(measure_length(vc, work, seconds, source, repeats, lasso_cap))
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if saved:
            saved(result)
    return result


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table: per reference length and method, fit and conversion (seconds)."""
    source = f"{result['source_seconds']:g} s"
    head = f"| refs | method | encode refs (s) | fit (s) | fit / encoding | convert {source} (s) | map (s) | load |"
    rows = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for length in result["lengths"]:
        refs = length["encode_references"]["median_s"]
        speaker = length["encode_source_speaker"]["median_s"]
        for method, row in length["methods"].items():
            fit = row["fit"]
            fit_text = "—" if fit is None else f"{fit['median_s']:.3g}" + (" (extrapolated)" if fit.get("extrapolated")
                                                                          else "")  # fmt: skip
            encoded = f"{refs:.3g}" + (f" + {speaker:.3g}" if method.startswith("linear") else "")
            share = "—" if fit is None else f"{100 * row['fit_share_of_encoding']:.2g} %"
            convert = row["convert"]
            rows.append(f"| {length['reference_seconds']:g} s | {method} | {encoded} | {fit_text} | {share} | "
                        f"{convert['total_s']:.3g} | {convert['match_s']:.3g} | "
                        f"{convert['match']['load_before']:g} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s and 4 s of references, a 2 s source; not saved")
    parser.add_argument("--work", type=Path, default=None, help="keep models and clips here between runs")
    parser.add_argument("--wavlm", type=Path, default=None, help="WavLM checkpoint (default: full-size random)")
    parser.add_argument("--vocoder", type=Path, default=None, help="vocoder checkpoint (default: full-size random)")
    parser.add_argument("--lengths", type=float, nargs="+", default=None, help="seconds of references (10 480)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fit and conversion (median)")
    parser.add_argument("--lasso-cap", type=float, default=300.0, help="longest lasso fit run whole, in seconds")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="knnvc-bench-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KNNVC_CACHE", str(work / "cache"))  # converted weights of random models stay here
    wavlm = args.wavlm or work / "WavLM-Large.pt"
    vocoder = args.vocoder or work / "prematch_g_02500000.pt"
    if args.wavlm is None and not wavlm.exists():
        write_wavlm_large(wavlm)
    if args.vocoder is None and not vocoder.exists():
        write_prematch_vocoder(vocoder)
    lengths = tuple(args.lengths or ((2.0, 4.0) if args.quick else LENGTHS))
    out = RESULTS / f"methods-{machine_name(cpu()['model'])}.json"

    def save(result: dict[str, Any]) -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)  # noqa: T201 (a benchmark's progress)

    result = measure(wavlm, vocoder, work, lengths, 2.0 if args.quick else 10.0,
                     1 if args.quick else args.repeats, args.lasso_cap,
                     lambda text: print(text, file=sys.stderr),  # noqa: T201 (a benchmark's progress)
                     None if args.quick else save)  # fmt: skip
    print(table(result))  # noqa: T201 (a benchmark's output is its report)


if __name__ == "__main__":
    main()
