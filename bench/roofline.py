"""``python -m bench.roofline``: how close the encoder and the vocoder run to the CPU's fp32 matmul peak.

    python -m bench.roofline                       # full-size random models: bench/results/roofline-<cpu>.json
    python -m bench.roofline --quick               # a smoke run (small sizes), nothing written
    python -m bench.roofline --before /tmp/before  # also run another checkout (a ``git worktree``), A B B A

One process per run, fp32, the intra-op threads torch uses (``--threads`` to force a count), wall seconds
(``--clock cpu``: the process's CPU seconds, which with ``--threads 1`` hold on a loaded machine). It measures:

- the machine: the CPU model (``lscpu``), its relevant flags (avx2, avx512f, avx512_bf16, amx), the threads;
- the fp32 matmul peak: a 4096 x 4096 x 4096 ``torch.mm``, warm, and the encoder's FFN shape (T x 1024 x 4096
  with bias, as ``nn.Linear`` runs it), each the best of several runs;
- the encoder (``WavLMEncoder.encode``) and the vocoder (the pipeline's ``Generator``) as the pipeline prepares
  them (``knnvc.weights.loaded.cached_encoder`` / ``cached_vocoder``): the process's first call, warm calls,
  and a call on a new input length after the first call (oneDNN builds primitives per new shape), in GFLOP/s
  and as a share of the 4096 x 4096 peak;
- a torch-profiler table of the top operators (self CPU time) over ``--profile-seconds`` of warm encoding.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; 2 per
multiply-add; element-wise ops are not counted) on the unpadded input through the raw model (transformers'
``WavLMModel``, the ``Generator``): useful work only, so padding a call to a fixed length never inflates the
figure. Full size uses random weights of the published layouts (``bench/layouts.py``): they cost the same to run
as the real ones. The machine may be shared: the load average is recorded beside every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from another checkout's PYTHONPATH (``--before``)
    sys.path.append(str(ROOT))

from bench.startup import cpu_model, slug  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SR = 16_000
FULL = {"seconds": 10.0, "new_seconds": (7.37, 12.61), "peak_n": 4096, "ffn_t": 500, "repeats": 3, "profile": 10.0}
QUICK = {"seconds": 1.0, "new_seconds": (0.73,), "peak_n": 256, "ffn_t": 50, "repeats": 1, "profile": 0.5}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """CPU model, the flags that decide the fast paths, torch's threads and version."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "flags": {flag: flag in flags for flag in FLAGS},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def best_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    fn()
    return [timed(fn) for _ in range(repeats)]


def matmul_peak(n: int, ffn_t: int, repeats: int) -> dict[str, Any]:
    """fp32 GFLOP/s of an n x n x n matmul and of the FFN's shapes (T x 1024 -> 4096 -> 1024, with bias)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    square = min(best_seconds(lambda: torch.mm(a, b), repeats + 2))
    x, h = torch.randn(1, ffn_t, 1024), torch.randn(1, ffn_t, 4096)
    up, down = torch.nn.Linear(1024, 4096), torch.nn.Linear(4096, 1024)
    with torch.inference_mode():
        up_s = min(best_seconds(lambda: up(x), repeats + 2))
        down_s = min(best_seconds(lambda: down(h), repeats + 2))
    ffn_flops = 2 * ffn_t * 1024 * 4096
    return {
        "square_n": n,
        "square_gflops": round(2 * n**3 / square / 1e9, 1),
        "ffn_t": ffn_t,
        "ffn_up_gflops": round(ffn_flops / up_s / 1e9, 1),
        "ffn_down_gflops": round(ffn_flops / down_s / 1e9, 1),
        "load": load_avg(),
    }


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def process_seconds() -> float:
    """CPU seconds this process has used, user and system (page faults included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CLOCK: Callable[[], float] = time.perf_counter  # ``--clock cpu``: process_seconds


def timed(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def shapes(
    name: str, call: Callable[[int], object], raw: Callable[[int], object], sizes: list[int], repeats: int, peak: float
) -> dict[str, Any]:
    """First call on ``sizes[0]``, warm calls, then each new size's first call and its warm calls.

    ``call(size)`` runs the network as the pipeline does; ``raw(size)`` the same maths unpadded, for FLOPs.
    """
    rows = []
    for i, size in enumerate(sizes):
        load = load_avg()
        first = timed(functools.partial(call, size))  # before anything else runs this shape
        flops = count_flops(functools.partial(raw, size))
        warm = [timed(functools.partial(call, size)) for _ in range(repeats)]
        warm_s = statistics.median(warm)
        rows.append(
            {
                "call": "first in process" if i == 0 else "new length",
                "size": size,
                "gflop": round(flops / 1e9, 2),
                "first_s": round(first, 4),
                "warm_s": round(warm_s, 4),
                "warm_all_s": [round(t, 4) for t in warm],
                "first_gflops": round(flops / first / 1e9, 1),
                "warm_gflops": round(flops / warm_s / 1e9, 1),
                "warm_of_peak": round(flops / warm_s / 1e9 / peak, 3),
                "first_over_warm": round(first / warm_s, 3),
                "load": [load, load_avg()],
            }
        )
    return {"name": name, "rows": rows}


def profile_table(call: Callable[[], object], limit: int = 12) -> list[dict[str, Any]]:
    """The top ``limit`` operators by self CPU time over one warm call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_s": round(e.self_cpu_time_total / 1e6, 4),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in events[:limit]
    ]


def full_models(workdir: Path) -> tuple[Path, Path]:
    """Full-size random checkpoints of the published layouts, written once into ``workdir``."""
    from bench.layouts import write_prematch_vocoder, write_wavlm_large

    workdir.mkdir(parents=True, exist_ok=True)
    wavlm, vocoder = workdir / "WavLM-Large.pt", workdir / "prematch_g_02500000.pt"
    if not wavlm.exists():
        write_wavlm_large(wavlm)
    if not vocoder.exists():
        write_prematch_vocoder(vocoder)
    return wavlm, vocoder


def run(wavlm: Path, vocoder_path: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """One side's figures, in this process."""
    from knnvc.weights.loaded import cached_encoder, cached_vocoder

    cpu = torch.device("cpu")
    result: dict[str, Any] = {"machine": machine(), "clock": "cpu" if CLOCK is process_seconds else "wall"}
    result["load_start"] = load_avg()
    peak = matmul_peak(sizes["peak_n"], sizes["ffn_t"], sizes["repeats"])
    result["matmul"] = peak
    start = time.perf_counter()
    encoder = cached_encoder(wavlm, cpu, torch.float32, offline=True)
    vocoder = cached_vocoder(vocoder_path, cpu, torch.float32, offline=True)
    result["load_models_s"] = round(time.perf_counter() - start, 3)
    gen = torch.Generator().manual_seed(0)
    seconds = [sizes["seconds"], *sizes["new_seconds"]]
    wavs = {round(s * SR): 0.1 * torch.randn(round(s * SR), generator=gen) for s in seconds}
    feats = {n: 0.1 * torch.randn(1, (n - 400) // 320 + 1, encoder.dim, generator=gen) for n in wavs}

    def vocode(frames: int) -> object:
        with torch.inference_mode():
            return vocoder(next(f for f in feats.values() if f.shape[1] == frames))

    result["encoder"] = shapes(
        "encoder",
        lambda n: encoder.encode(wavs[n]),
        lambda n: encoder.model(wavs[n][None]),
        list(wavs),
        sizes["repeats"],
        peak["square_gflops"],
    )
    frames = [f.shape[1] for f in feats.values()]
    # the Generator never pads: the timed call is the counted one
    result["vocoder"] = shapes("vocoder", vocode, vocode, frames, sizes["repeats"], peak["square_gflops"])
    profile_wav = 0.1 * torch.randn(round(sizes["profile"] * SR), generator=gen)
    encoder.encode(profile_wav)  # warm for this length
    result["profile_seconds"] = sizes["profile"]
    result["profile"] = profile_table(lambda: encoder.encode(profile_wav))
    result["load_end"] = load_avg()
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: warm share of peak, and the worst new-length first call against its warm call."""
    out: dict[str, Any] = {}
    for name in ("encoder", "vocoder"):
        rows = result[name]["rows"]
        out[f"{name}_warm_gflops"] = rows[0]["warm_gflops"]
        out[f"{name}_warm_of_peak"] = rows[0]["warm_of_peak"]
        out[f"{name}_first_gflops"] = rows[0]["first_gflops"]
        out[f"{name}_new_length_over_warm"] = max((r["first_over_warm"] for r in rows[1:]), default=None)
    return out


def table(label: str, result: dict[str, Any]) -> str:
    m, mm = result["machine"], result["matmul"]
    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none"
    lines = [
        f"## {label}: {m['cpu']}, {m['threads']} threads, flags: {flags}, torch {m['torch']}, "
        f"{result['clock']} seconds",
        f"fp32 matmul peak: {mm['square_n']}^2 {mm['square_gflops']} GFLOP/s; FFN T={mm['ffn_t']} up "
        f"{mm['ffn_up_gflops']}, down {mm['ffn_down_gflops']} GFLOP/s (load {mm['load']})",
        "| network | call | input | GFLOP | first s | warm s | first GFLOP/s | warm GFLOP/s | warm % peak "
        "| first / warm | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("encoder", "vocoder"):
        unit = "samples" if name == "encoder" else "frames"
        for r in result[name]["rows"]:
            lines.append(
                f"| {name} | {r['call']} | {r['size']} {unit} | {r['gflop']} | {r['first_s']} | {r['warm_s']} "
                f"| {r['first_gflops']} | {r['warm_gflops']} | {100 * r['warm_of_peak']:.0f} % "
                f"| {r['first_over_warm']} | {r['load'][0]}-{r['load'][1]} |"
            )
    lines += [
        f"top ops over {result['profile_seconds']} s of warm encoding (self CPU):",
        "| op | self s | share | calls |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p['op']} | {p['self_s']} | {100 * p['share']:.1f} % | {p['calls']} |" for p in result["profile"]]
    return "\n".join(lines)


def side(root: Path, args: argparse.Namespace, wavlm: Path, vocoder: Path) -> dict[str, Any]:
    """One run in a fresh process of the checkout at ``root`` (imported through ``PYTHONPATH``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--side", str(out), "--wavlm", str(wavlm)]
        command += ["--vocoder", str(vocoder), *(["--quick"] if args.quick else [])]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--clock", args.clock]
        env = {**os.environ, "PYTHONPATH": str(root), "KNNVC_CACHE": str(args.workdir / f"cache-{slug(str(root))}")}
        subprocess.run(command, env=env, check=True)
        side_result: dict[str, Any] = json.loads(out.read_text())
    return side_result


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run; nothing written")
    parser.add_argument("--wavlm", type=Path, help="a WavLM checkpoint (default: full-size random weights)")
    parser.add_argument("--vocoder", type=Path, help="a vocoder checkpoint (default: full-size random weights)")
    parser.add_argument("--before", type=Path, help="another checkout to run beside this one, A B B A")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: the process's CPU seconds instead of wall seconds; with --threads 1, figures that hold on a "
        "shared, loaded machine",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="where to write the JSON (default: bench/results/roofline-<cpu>.json)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "knnvc-bench-roofline")
    parser.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # internal: one run, its JSON to this path
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = process_seconds if args.clock == "cpu" else time.perf_counter
    sizes = QUICK if args.quick else FULL
    wavlm, vocoder = args.wavlm, args.vocoder
    if wavlm is None or vocoder is None:
        full_wavlm, full_vocoder = full_models(args.workdir)
        wavlm, vocoder = wavlm or full_wavlm, vocoder or full_vocoder
    if args.side:
        args.side.write_text(json.dumps(run(wavlm, vocoder, sizes)))
        return None
    if args.before is None:
        os.environ.setdefault("KNNVC_CACHE", str(args.workdir / "cache"))
        results = {"after": [run(wavlm, vocoder, sizes)]}
    else:  # A B B A, each in its own process
        results = {"before": [], "after": []}
        for name in ("before", "after", "after", "before"):
            results[name].append(side(args.before if name == "before" else ROOT, args, wavlm, vocoder))
    report: dict[str, Any] = {
        "command": "python -m bench.roofline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "flops": "torch.utils.flop_counter.FlopCounterMode on the unpadded input (2 per multiply-add)",
        "models": {"wavlm": str(wavlm), "vocoder": str(vocoder)},
        "before_root": str(args.before) if args.before else None,
    }
    for name, runs in results.items():
        report[name] = {"runs": runs, "summary": [summary(r) for r in runs]}
        for i, r in enumerate(runs):
            print(table(f"{name} run {i + 1}", r), end="\n\n")
        print(f"{name} summary: {json.dumps(report[name]['summary'])}\n")
    if args.quick and args.out is None:
        return None
    path = args.out or RESULTS / f"roofline-{slug(results['after'][0]['machine']['cpu'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
