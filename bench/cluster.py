"""``python -m bench.cluster``: a folder of clips converted by ``knnvc convert`` locally and with ``--ray local``.

    python -m bench.cluster --files 20 --seconds 2

Both runs are whole ``knnvc convert`` processes, so start-up (Python, torch, loading the models, and for Ray
starting a local cluster and its actor) is included. The models are full-size with random weights (the published
layouts, ``bench/layouts.py``), which cost the same to run as the real ones; the voice is built once beforehand and
given as a saved ``.voice`` to both runs. Writes ``bench/results/cluster-<machine>.json`` and prints it, with the
load average before and after (the cores may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench.layouts import write_prematch_vocoder, write_wavlm_large
from bench.measure import make_corpus
from knnvc.options import PipelineSettings
from knnvc.pipeline import KnnVC
from knnvc.weights.formats import load_encoder, load_vocoder

RESULTS = Path(__file__).resolve().parent / "results"


def timed(command: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one ``knnvc convert ... --json`` process and its summary."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return wall, summary


def max_difference(a: Path, b: Path) -> float:
    worst = 0.0
    for path in sorted(a.rglob("*.wav")):
        x, y = sf.read(path, dtype="float32")[0], sf.read(b / path.relative_to(a), dtype="float32")[0]
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--ref-seconds", type=float, default=10.0, help="reference speech in the voice")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs, in alternating order")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = make_corpus(root, args.files, args.seconds, args.ref_seconds)
        wavlm, vocoder = write_wavlm_large(root / "WavLM-Large.pt"), write_prematch_vocoder(root / "g.pt")
        vc = KnnVC(load_encoder(wavlm), load_vocoder(vocoder), PipelineSettings("cpu", "fp32"))
        voice = vc.build_voice(corpus.references).save(root / "target.voice")
        del vc
        knnvc = [sys.executable, "-m", "knnvc", "convert", str(root / "src"), str(voice)]
        local: dict[str, Any] = {}
        on_ray: dict[str, Any] = {}
        common = ["--wavlm", str(wavlm), "--vocoder", str(vocoder), "--device", "cpu", "--json",
                  "--batch-size", str(args.batch_size)]  # fmt: skip
        load_before = os.getloadavg()
        runs: dict[str, list[float]] = {"local": [], "ray": []}
        for n in range(args.repeats):  # alternate the order: the shared cores' load drifts during a run
            for kind in ("local", "ray") if n % 2 == 0 else ("ray", "local"):
                shutil.rmtree(root / kind, ignore_errors=True)
                extra = ["--ray", "local"] if kind == "ray" else []
                wall, summary = timed([*knnvc, "-o", str(root / kind), *common, *extra])
                runs[kind].append(round(wall, 2))
                local, on_ray = (summary, on_ray) if kind == "local" else (local, summary)
        load_after = os.getloadavg()
        local_wall, ray_wall = sum(runs["local"]), sum(runs["ray"])
        result = {
            "machine": f"cpu-{platform.machine()}-{os.cpu_count()}core",
            "cpus": os.cpu_count(),
            "corpus": {"files": args.files, "seconds_each": args.seconds, "audio_seconds": local["audio_seconds"]},
            "models": "full-size WavLM-Large (6 layers run) and HiFi-GAN, random weights, fp32 on CPU",
            "local": {"wall_seconds": runs["local"], "converted": local["converted"]},
            "ray_local": {"wall_seconds": runs["ray"], "converted": on_ray["converted"]},
            "ray_over_local": round(ray_wall / local_wall, 3),  # total Ray wall time over total local wall time
            "max_abs_difference": max_difference(root / "local", root / "ray"),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "note": "whole processes, start-up included; the cores are shared with other work (see load average)",
        }
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out or RESULTS / f"cluster-{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
