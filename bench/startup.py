"""``python -m bench.startup``: how long ``knnvc`` takes to start, as a user runs it.

    python -m bench.startup               # 15 runs of help and version, 5 of convert: bench/results/startup-<cpu>.json
    python -m bench.startup --runs 5 --quick   # a smoke run, nothing written
    python -m bench.startup --before /tmp/before   # also time another checkout (a ``git worktree``) beside this one

Each command runs as a whole process (the interpreter's start, the imports, the output), after one untimed run
that warms the page cache; the figures are the median, fastest and slowest wall times of ``--runs`` runs, with
the machine's load average beside them (the machine may be shared: rerun when it was busy). ``python -c pass``
is measured the same way: the interpreter's own start, which no change to knnvc can remove. The test suite
checks that help imports no torch (``tests/test_cli.py``); how fast that makes it is this figure, not a test.

``convert`` is a one-file ``knnvc convert`` on the tiny models of ``tests/fixtures`` (``--convert-runs`` runs), its
stderr a terminal (a pseudo-terminal, as a user at a shell has): the time to the first thing shown on stderr (the
first visible character: a status line or a spinner), the time to the end, and the result line it printed. Its
stages are timed in a separate process each run, in the order the command meets them: ``knnvc.cli`` imported,
``torch``, transformers' WavLM, the rest of ``knnvc.pipeline`` (scipy...), the models loading (WavLM and the
vocoder), the first call (the voice built from the references, then the source converted) and, for comparison, the
same call again (what the first one spent on warming up), with the interpreter's start before them and its exit
after (freeing what torch and transformers loaded). Each run also times how long a text file named ``.wav`` takes
to be rejected as the source. ``--before PATH`` times the same for the checkout at PATH
(imported through ``PYTHONPATH``), its runs interleaved with this tree's, and records both.
``python -m bench.table`` lists the results files in docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FIXTURES = ROOT / "tests" / "fixtures"
TINY = ["--wavlm", str(FIXTURES / "wavlm_tiny" / "WavLM-tiny.pt"),
        "--vocoder", str(FIXTURES / "vocoder_tiny" / "prematch_g_tiny.pt"), "--device", "cpu"]  # fmt: skip
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][A-Z0-9]|[=>78])")
STAGES = """
import sys, time, json
marks = [('start', time.monotonic())]
def mark(name): marks.append((name, time.monotonic()))
import knnvc.cli; mark('import knnvc.cli')
import torch; mark('import torch')
from transformers import WavLMModel; mark("import transformers' WavLM")
import knnvc.pipeline; mark('import knnvc.pipeline (the rest)')
from knnvc.options import Models, PipelineSettings
from knnvc.pipeline import KnnVC
wavlm, vocoder, source, refs = sys.argv[1:5]
vc = KnnVC.from_pretrained(Models(wavlm, vocoder, PipelineSettings('cpu')))
vc.load_vocoder(); mark('models loading')
vc.convert(source, vc.build_voice(refs)); mark('first call (voice, then convert)')
vc.convert(source, vc.build_voice(refs)); mark('second call (the same, warm)')
print(json.dumps({'marks': marks, 'stages': {b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])}}))
"""


def knnvc_command() -> list[str]:
    """The installed ``knnvc`` console script beside this interpreter, else ``python -m knnvc``."""
    script = Path(sys.executable).parent / "knnvc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "knnvc"]


def cpu_model() -> str:
    """The CPU's model name (``lscpu``, else /proc/cpuinfo, else ``platform``)."""
    lscpu = shutil.which("lscpu")
    if lscpu:
        out = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def slug(text: str) -> str:
    """``AMD EPYC 7B13`` -> ``amd-epyc-7b13``: a file-name-safe name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def wall_times(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Seconds each of ``runs`` runs of ``command`` took (after one untimed run); each must exit 0."""
    times: list[float] = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}: {proc.stderr.strip()}")
        if i:
            times.append(seconds)
    return times


def figure(command: list[str], runs: int, env: dict[str, str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    times = wall_times(command, runs, env)
    return {
        "command": " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command)),
        "runs": runs,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def python_env(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the knnvc of the checkout at ``repo`` first on the import path."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])}


def on_terminal(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float | None, float, str]:
    """Run ``command`` with its stderr on a pseudo-terminal: (seconds to the first visible character on stderr, or
    None when nothing was shown; seconds to the end; what it showed, escape codes removed). It must exit 0."""
    import pty

    master, slave = pty.openpty()
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns, as a shell
    except (ImportError, OSError):
        pass
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**env, "TERM": "xterm-256color"}, cwd=cwd)  # fmt: skip
    os.close(slave)
    first: float | None = None
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.01)
        if not ready:
            continue
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every writer closed the terminal
            data = b""
        if not data:
            break
        shown += data
        if first is None and ANSI.sub("", shown.decode(errors="replace")).strip():
            first = time.perf_counter() - start
    code = proc.wait()
    end = time.perf_counter() - start
    os.close(master)
    text = ANSI.sub("", shown.decode(errors="replace"))
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}: {text.strip()[-500:]}")
    return first, end, text


def stage_times(repo: Path, env: dict[str, str], work: Path) -> dict[str, float]:
    """Seconds of each start-up stage (``STAGES``) in a fresh process importing knnvc from ``repo``, with the
    interpreter's own start before them and its exit after them (freeing what torch and transformers loaded): the
    child's marks and this process share the monotonic clock. It runs in ``work`` (``python -c`` imports from the
    current folder first)."""
    args = [TINY[1], TINY[3], str(FIXTURES / "speech" / "source.wav"), str(FIXTURES / "speech" / "ref")]
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STAGES, *args], capture_output=True, text=True,
                          env=python_env(repo, env), cwd=work, check=False)  # fmt: skip
    ended = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"the stage probe failed on {repo}: {proc.stderr.strip()[-500:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    marks = found["marks"]
    start, stages, end = marks[0][1] - began, found["stages"], ended - marks[-1][1]
    return {"interpreter start": start, **stages, "exit (interpreter teardown)": end}


def bad_source_times(repo: Path, runs: int, env: dict[str, str], work: Path) -> list[float]:
    """Seconds until ``knnvc convert`` rejects a text file named ``.wav`` as its source (exit 3), ``runs`` times,
    run in ``work`` (``python -m`` imports from the current folder first)."""
    fake = work / "text.wav"
    fake.write_text("a text file, not audio\n" * 40)
    command = [sys.executable, "-m", "knnvc", "convert", str(fake), str(FIXTURES / "speech" / "ref"), "-o",
               str(work / "never.wav"), *TINY]  # fmt: skip
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=python_env(repo, env), cwd=work,
                              check=False)  # fmt: skip
        times.append(time.perf_counter() - start)
        if proc.returncode != 3:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}, not 3: {proc.stderr.strip()[-300:]}")
    return times


def spread(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3)}  # fmt: skip


def convert_figures(repos: dict[str, Path], runs: int, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The one-file ``knnvc convert`` figure of each checkout in ``repos`` (their runs interleaved, after one
    untimed run each): time to the first visible output on stderr, time to the end, and the stages."""
    load_before = os.getloadavg()[0]
    seen: dict[str, dict[str, list[Any]]] = {name: {"first": [], "end": [], "stages": [], "line": [], "bad": []}
                                             for name in repos}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="knnvc-startup-") as tmp:
        work = Path(tmp)
        source, refs = FIXTURES / "speech" / "source.wav", FIXTURES / "speech" / "ref"
        for i in range(runs + 1):
            for name, repo in repos.items():
                (work / name).mkdir(exist_ok=True)
                command = [sys.executable, "-m", "knnvc", "convert", str(source), str(refs), "-o", "out.wav", *TINY,
                           "--overwrite"]  # fmt: skip
                first, end, text = on_terminal(command, python_env(repo, env), work / name)
                if i:
                    stages = stage_times(repo, env, work / name)
                    got = seen[name]
                    got["first"].append(end if first is None else first)
                    got["end"].append(end)
                    got["stages"].append(stages)
                    got["line"].append(next((ln.strip() for ln in reversed(text.splitlines()) if "of audio" in ln), ""))
                    got["bad"] += bad_source_times(repo, 1, env, work / name)
    figures = {}
    for name, got in seen.items():
        stages = {key: round(statistics.median(s[key] for s in got["stages"]), 3) for key in got["stages"][0]}
        figures[name] = {
            "command": "knnvc convert source.wav ref/ -o out.wav (tiny models, --device cpu), stderr a terminal",
            "runs": runs,
            "first_output": spread(got["first"]),
            "end": spread(got["end"]),
            "median_s": round(statistics.median(got["end"]), 4),
            "min_s": round(min(got["end"]), 4),
            "max_s": round(max(got["end"]), 4),
            "stages_median_s": stages,
            "bad_source": {"command": "knnvc convert text.wav ref/ -o never.wav (a text file named .wav): exit 3",
                           **spread(got["bad"])},
            "result_line": got["line"][-1],
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
        }
    return figures


def revision(repo: Path) -> str:
    """The commit checked out at ``repo`` (with ``+changes`` when its tree differs), or "" outside git."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=repo, check=False)
    head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + ("+changes" if head and dirty else "")


def table(result: dict[str, Any]) -> str:
    rows = [f"Start-up on {result['cpu']} ({result['cores']} cores), {result['runs']} runs each, wall seconds:", "",
            "| command | median | fastest | slowest | load average |", "|---|---|---|---|---|"]  # fmt: skip
    for row in result["figures"].values():
        rows.append(f"| `{row['command']}` | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} "
                    f"| {row['load_before']:g}-{row['load_after']:g} |")  # fmt: skip
    converts = {"before": result.get("before", {}).get("convert"), "now": result["figures"].get("convert")}
    shown = {name: fig for name, fig in converts.items() if fig}
    if shown:
        rows += ["", "One-file `knnvc convert`, tiny models, median seconds:", "",
                 "| | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]  # fmt: skip
        rows.append("| first output on stderr | " + " | ".join(f"{f['first_output']['median_s']:.2f}"
                                                               for f in shown.values()) + " |")  # fmt: skip
        rows.append("| the end | " + " | ".join(f"{f['end']['median_s']:.2f}" for f in shown.values()) + " |")
        rows.append("| a text file as the source: rejected after | " + " | ".join(
            f"{f['bad_source']['median_s']:.2f}" if "bad_source" in f else "-" for f in shown.values()) + " |")
        rows.append("| *stages, in a process of their own:* |" + " |" * len(shown))
        for stage in next(iter(shown.values()))["stages_median_s"]:
            cells = [f"{f['stages_median_s'].get(stage, float('nan')):.2f}" for f in shown.values()]
            rows.append(f"| {stage} | " + " | ".join(cells) + " |")
        rows += ["", *(f"{name}: {f['result_line']}" for name, f in shown.items())]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (the median is reported)")
    parser.add_argument("--convert-runs", type=int, default=5, help="timed runs of the one-file convert (0: none)")
    parser.add_argument("--before", type=Path, help="another checkout to time beside this one (a git worktree)")
    parser.add_argument("--quick", action="store_true", help="print the figures; write nothing to bench/results")
    args = parser.parse_args()
    if args.runs < 1 or args.convert_runs < 0:
        parser.error("--runs must be at least 1, --convert-runs at least 0")
    env = {**os.environ, "KNNVC_OFFLINE": "1"}
    knnvc = knnvc_command()
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*knnvc, "--help"],
        "version": [*knnvc, "--version"],
    }
    cpu = cpu_model()
    out = RESULTS / f"startup-{slug(cpu)}.json"
    result: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runs": args.runs,
        "figures": {name: figure(command, args.runs, env) for name, command in commands.items()},
    }
    if args.convert_runs:
        repos = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
        converts = convert_figures(repos, args.convert_runs, env)
        result["figures"]["convert"] = {**converts["now"], "revision": revision(ROOT)}
        if "before" in converts:
            result["before"] = {"revision": revision(args.before), "convert": converts["before"]}
        elif out.exists():  # keep the earlier checkout's figure recorded by a run with --before
            earlier = json.loads(out.read_text()).get("before")
            if earlier:
                result["before"] = earlier
    print(table(result))  # noqa: T201 (a benchmark's output is its report)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")  # noqa: T201


if __name__ == "__main__":
    main()
