"""``python -m bench``: full-size random-weight models, reference mode vs fast path, JSON out.

    python -m bench --device cpu --files 4 --seconds 5 --ref-seconds 30
    python -m bench --device cuda --files 64 --seconds 10 --ref-seconds 480 --long-seconds 3600

Writes ``bench/results/<machine>.json`` and prints the same JSON. Nothing is downloaded: the models have the
published layouts (``bench/layouts.py``) and random weights, which cost the same to run as the real ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import measure
from bench.layouts import write_prematch_vocoder, write_wavlm_large
from bench.reference import ReferenceMode, full_wavlm
from knnvc import batch
from knnvc.checkpoints import load_encoder, load_vocoder
from knnvc.devices import resolve_device
from knnvc.pipeline import KnnVC

RESULTS = Path(__file__).resolve().parent / "results"


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).lower().replace(" ", "-")
    import os

    return f"cpu-{platform.machine()}-{os.cpu_count()}core"


def run_reference(wavlm_path: Path, vocoder_path: Path, corpus: measure.Corpus, device: torch.device) -> dict:
    mode = ReferenceMode(full_wavlm(wavlm_path, device), load_vocoder(vocoder_path), device)
    out_dir = corpus.root / "out_reference"
    with measure.Peak(device) as peak:
        start = time.perf_counter()
        seconds = sum(mode.convert_file(src, corpus.references, out_dir / src.name) for src in corpus.sources)
        wall = time.perf_counter() - start
    return measure.report(seconds, wall, mode.stages, peak)


def run_fast(vc: KnnVC, corpus: measure.Corpus) -> tuple[dict, Any]:
    stages: dict[str, float] = {}
    with measure.Peak(vc.device) as peak:
        start = time.perf_counter()
        with measure.stage(stages, "build_voice", vc.device):
            voice = vc.build_voice(corpus.references)
        jobs = batch.plan(corpus.root / "src", corpus.root / "out_fast", voice.name)
        report = batch.run(vc, jobs, voice, overwrite=True)
        wall = time.perf_counter() - start
    staged = measure.staged_fast(vc, voice, corpus)
    result = measure.report(report.audio_seconds, wall, {**stages, **staged}, peak)
    result["failed"] = len(report.failed)
    return result, voice


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each source file")
    parser.add_argument("--ref-seconds", type=float, default=30.0, help="total reference speech")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-seconds", type=float, default=0.0, help="also convert one file this long")
    parser.add_argument("--window-check-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="knnvc-bench-") as tmp:
        root = Path(tmp)
        wavlm_path = write_wavlm_large(root / "WavLM-Large.pt")
        vocoder_path = write_prematch_vocoder(root / "prematch_g_02500000.pt")
        corpus = measure.make_corpus(root, args.files, args.seconds, args.ref_seconds)
        vc = KnnVC(
            load_encoder(wavlm_path),
            load_vocoder(vocoder_path),
            device=device,
            precision=args.precision,
            batch_size=args.batch_size,
        )
        fast, voice = run_fast(vc, corpus)
        reference = run_reference(wavlm_path, vocoder_path, corpus, device)
        result: dict[str, Any] = {
            "machine": machine_name(device),
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "corpus": {"files": args.files, "seconds_each": args.seconds, "reference_seconds": args.ref_seconds},
            "precision": str(vc.dtype).replace("torch.", ""),
            "reference_mode": reference,
            "fast_path": fast,
            "speedup_end_to_end": round(fast["realtime"] / reference["realtime"], 2),
            "knn_agreement": measure.knn_agreement(wavlm_path, vocoder_path, corpus, device, voice),
            "windows": measure.window_gap(vc, corpus, args.window_check_seconds),
        }
        if args.long_seconds:
            result["long_file"] = measure.long_file(vc, voice, root, args.long_seconds)
    text = json.dumps(result, indent=2)
    out = args.out or RESULTS / f"{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)  # noqa: T201 (a benchmark's output is its report)


if __name__ == "__main__":
    main()
