"""``python -m bench``: the honest CPU (or GPU) benchmark, full-size random-weight models, JSON out.

    python -m bench                    # this machine: writes bench/results/<machine>.json and docs/performance.md
    python -m bench --repeats 1 --quick   # a fast smoke run (small corpus), nothing written to bench/results

Compared, each as a whole process (imports, loading, the voice, every file, writing), alternating A B B A:
- the original kNN-VC algorithm (``bench.reference``: 6 layers, fp32, batch 1, whole files, the matching set
  built once per voice) and ``knnvc convert`` with its defaults;
- on a 30 s source with 60 s of references, and on a folder of 20 clips of 3-10 s against one voice.
Also: each lower precision's kNN agreement with fp32 and its output SNR (``bench.agreement``). Nothing is
downloaded: the models have the published layouts (``bench/layouts.py``) and random weights, which cost the
same to run as the real ones. knnvc runs "after the first run": one untimed run fills its converted-weights cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench import agreement, compare, roofline, table
from bench.layouts import write_prematch_vocoder, write_wavlm_large
from bench.measure import write_clip
from knnvc.runtime.devices import precision_name, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).lower().replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}core"


def models_in(work: Path) -> dict[str, Path]:
    """Full-size random checkpoints in ``work`` (written once, reused by later runs with the same ``--work``)."""
    found = {"wavlm": work / "WavLM-Large.pt", "vocoder": work / "prematch_g_02500000.pt"}
    if not found["wavlm"].exists():
        write_wavlm_large(found["wavlm"])
    if not found["vocoder"].exists():
        write_prematch_vocoder(found["vocoder"])
    return found


def tasks(work: Path, quick: bool) -> dict[str, compare.Task]:
    """The whole-process task (one 30 s source, 60 s of references) and the folder task (20 clips, 3-10 s)."""
    ref_seconds, source_seconds, clips = (20.0, 6.0, 4) if quick else (60.0, 30.0, 20)
    refs = [write_clip(work / "refs" / f"ref_{i}.wav", min(30.0, ref_seconds - 30 * i), 100 + i)
            for i in range(int(np.ceil(ref_seconds / 30)))]  # fmt: skip
    source = write_clip(work / "single" / "source_30s.wav", source_seconds, 7)
    lengths = np.random.default_rng(0).uniform(3.0, 10.0, clips)
    folder = [write_clip(work / "folder" / f"clip_{i:02d}.wav", float(s), i) for i, s in enumerate(lengths)]
    return {
        "whole_process": compare.Task("whole_process", [source], source, refs, source_seconds),
        "folder": compare.Task(
            "folder", folder, work / "folder", refs, float(sum(len(sf.read(p)[0]) for p in folder)) / SR
        ),
    }


def _precision(extra: list[str], device: torch.device) -> str:
    """The precision ``knnvc convert`` runs in with ``extra`` flags on ``device``."""
    asked = extra[extra.index("--precision") + 1] if "--precision" in extra else "auto"
    return precision_name(resolve_precision(asked, device))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode per task (alternated)")
    parser.add_argument("--work", type=Path, default=None, help="keep models and corpus here between runs")
    parser.add_argument("--quick", action="store_true", help="a small corpus; results are not saved")
    parser.add_argument("--knnvc-args", default="", help="extra flags for knnvc convert, e.g. '--precision fp32'")
    args = parser.parse_args()
    device = torch.device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="knnvc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    models = models_in(work)
    jobs = tasks(work, args.quick)
    extra = args.knnvc_args.split()
    env = {**os.environ, "KNNVC_CACHE": str(work / "cache"), "PYTHONPATH": str(compare.ROOT)}
    fill = (
        "from knnvc.weights.formats import load_encoder as e, load_vocoder as v; import sys; "
        "e(sys.argv[1]); v(sys.argv[2])"
    )
    compare.timed([sys.executable, "-c", fill, str(models["wavlm"]), str(models["vocoder"])], env)  # the first run
    out = RESULTS / f"{machine_name(device)}.json"
    result: dict[str, Any] = {
        "machine": machine_name(device),
        "cpu": roofline.machine()["cpu"],  # the model name (lscpu), and its fast paths beside it
        "cpu_flags": [flag for flag, on in roofline.machine()["flags"].items() if on],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": args.device,
        "knnvc_args": extra,
        "knnvc_precision": _precision(extra, device),
    }
    probe = jobs["folder"].sources[0], jobs["whole_process"].references[:1]
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("precision_agreement", partial(agreement.measure, models, *probe, device))
    ]
    for name, task in jobs.items():
        steps.append((name, partial(compare.alternate, task, models, work, args.device, args.repeats, extra)))
    for name, step in steps:
        print(f"{name} ...", file=sys.stderr)  # noqa: T201 (progress of a benchmark)
        result[name] = step()
        if not args.quick:  # saved after every step: a long run interrupted keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201 (a benchmark's output is its report)
    if not args.quick:
        table.main()


if __name__ == "__main__":
    main()
