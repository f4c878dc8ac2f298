"""``python -m bench.startup``: how long ``knnvc`` takes to start, as a user runs it.

    python -m bench.startup               # 15 runs of help and version, 5 of convert: bench/results/startup-<cpu>.json
    python -m bench.startup --runs 5 --quick   # a smoke run, nothing written
    python -m bench.startup --before /tmp/before   # also time another checkout (a ``git worktree``) beside this one
    python -m bench.startup --before /tmp/before --full-size 3 --work /tmp/knnvc-startup-full   # the whole record

Each command runs as a whole process (the interpreter's start, the imports, the output), after one untimed run
that warms the page cache; the figures are the median, fastest and slowest wall times of ``--runs`` runs, with
the machine's load average beside them (the machine may be shared: rerun when it was busy). ``python -c pass``
is measured the same way: the interpreter's own start, which no change to knnvc can remove. The test suite
checks that help imports no torch (``tests/test_cli.py``); how fast that makes it is this figure, not a test.

``convert`` is a one-file ``knnvc convert`` on the tiny models of ``tests/fixtures`` (``--convert-runs`` runs). Each
run times it three ways:

- as it runs (``TIMELINE``: the command's own code, its exit included, with the status lines it shows timed): the
  time from the process's start to its first compute (the file's conversion begins), and the parts of it in the
  command's order: the interpreter's start, ``import knnvc.cli``, the command line parsed and the first status
  shown, then each status line until the next one (what was left to wait for: torch and the models load in the
  background while the inputs are checked), the conversion, and the exit after the ``atexit`` functions;
- what each stage costs, one after another in a process of its own (``STAGES``): ``knnvc.cli`` imported,
  ``torch``, transformers' WavLM, the rest of ``knnvc.pipeline`` (scipy...), the models loading (WavLM and the
  vocoder), the first call (the voice built from the references, then the source converted) and, for comparison,
  the same call again (what the first one spent on warming up), with the interpreter's start before them and its
  exit after (freeing what torch and transformers loaded: the interpreter's own exit, which knnvc skips);
- with its stderr a terminal (a pseudo-terminal, as a user at a shell has): the time to the first thing shown on
  stderr (a status line or a spinner), the time to the end, and the result line it printed; and how long a text
  file named ``.wav`` takes to be rejected as the source.

``--full-size RUNS`` also times the first two with full-size random checkpoints of the published layouts
(``bench.layouts``: written into ``--work`` once, 1.3 GB, and reused; their converted copies cached there too, after
an untimed first run). ``--before PATH`` times the same for the checkout at PATH (imported through ``PYTHONPATH``),
its runs interleaved with this tree's, and records both. ``python -m bench.table`` lists the results files in
docs/performance.md.
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
TIMELINE = """
import atexit, json, sys, time
marks = [('start', time.monotonic())]
def mark(name): marks.append((name, time.monotonic()))
import knnvc.cli; mark('knnvc.cli')
from knnvc.cli import view
now, on_event = view.Stages.now, view.BatchView.on_event
def stage(self, what):
    mark(what); now(self, what)
def event(self, e):
    if e.stage == 'start' and not any(name == 'first compute' for name, _ in marks): mark('first compute')
    on_event(self, e)
view.Stages.now, view.BatchView.on_event = stage, event
atexit.register(lambda: (mark('exit'), print(json.dumps(marks), flush=True)))
sys.argv = ['knnvc', *sys.argv[1:]]
knnvc.cli.app()
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


def stage_times(repo: Path, env: dict[str, str], work: Path, models: list[str]) -> dict[str, float]:
    """Seconds of each start-up stage (``STAGES``) in a fresh process importing knnvc from ``repo``, with the
    interpreter's own start before them and its exit after them (freeing what torch and transformers loaded): the
    child's marks and this process share the monotonic clock. It runs in ``work`` (``python -c`` imports from the
    current folder first). ``models``: ``--wavlm W --vocoder V ...``."""
    args = [models[1], models[3], str(FIXTURES / "speech" / "source.wav"), str(FIXTURES / "speech" / "ref")]
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


def _stage_name(shown: str) -> str:
    """A status line as a stage's name, the weights' file names left out: ``loading models: WavLM-tiny.pt`` ->
    ``loading WavLM``, ``loading models: the vocoder (x.pt)`` -> ``loading the vocoder``."""
    if shown.startswith("loading models: the vocoder"):
        return "loading the vocoder"
    return "loading WavLM" if shown.startswith("loading models") else shown


def timeline(repo: Path, env: dict[str, str], work: Path, models: list[str]) -> dict[str, float]:
    """The real one-file ``knnvc convert`` (``TIMELINE``: the CLI's own code, its exit included), as the time each
    part of it took in the command's own order, from the process's start (as this process spawned it): the
    interpreter's start, ``import knnvc.cli``, each status line the command showed until the next one (what the
    user waited on: with loading in the background, what is left of it), then the first compute (the file's
    conversion starts), the conversion and the summary, and the exit after the last ``atexit`` function. Also
    ``to first compute``: the process's start to the first compute, the start-up in one figure."""
    args = ["convert", str(FIXTURES / "speech" / "source.wav"), str(FIXTURES / "speech" / "ref"), "-o", "out.wav",
            *models, "--overwrite"]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", TIMELINE, *args], capture_output=True, text=True,
                          env=python_env(repo, env), cwd=work, check=False)  # fmt: skip
    ended = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"the timeline probe failed on {repo}: {proc.stderr.strip()[-500:]}")
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {"knnvc.cli": "command line parsed, the first status shown", "first compute": "converting the file",
             "exit": "exit (after atexit)"}  # fmt: skip
    parts = {"interpreter start": marks[0][1] - began, "import knnvc.cli (typer, rich)": marks[1][1] - marks[0][1]}
    for (name, at), following in zip(marks[1:], [at for _, at in marks[2:]] + [ended], strict=True):
        label = names.get(name, _stage_name(name))
        parts[label] = parts.get(label, 0.0) + following - at
    first = next((at for name, at in marks if name == "first compute"), None)
    return {**parts, "to first compute": (first if first is not None else ended) - began, "to the end": ended - began}


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


def convert_figures(repos: dict[str, Path], runs: int, env: dict[str, str], models: list[str], *,
                    terminal: bool = True) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The one-file ``knnvc convert`` figure of each checkout in ``repos`` (their runs interleaved, after one
    untimed run each) with ``models`` (``--wavlm W --vocoder V --device cpu``): its timeline (``timeline``: the real
    command, from the process's start to its first compute and its end) and its cost by stage (``stage_times``:
    serially, in a process of their own); with ``terminal``, also the time to the first visible output on stderr
    and to the end with stderr a pseudo-terminal, and a text file rejected as the source."""
    load_before = os.getloadavg()[0]
    seen: dict[str, dict[str, list[Any]]] = {
        name: {"first": [], "end": [], "stages": [], "timeline": [], "line": [], "bad": [], "load": []}
        for name in repos
    }
    with tempfile.TemporaryDirectory(prefix="knnvc-startup-") as tmp:
        work = Path(tmp)
        source, refs = FIXTURES / "speech" / "source.wav", FIXTURES / "speech" / "ref"
        for i in range(runs + 1):
            for name, repo in repos.items():
                (work / name).mkdir(exist_ok=True)
                got = seen[name]
                got["load"].append(os.getloadavg()[0])
                if not i:  # untimed: the page cache, the converted-weights cache
                    timeline(repo, env, work / name, models)
                    continue
                got["timeline"].append(timeline(repo, env, work / name, models))
                got["stages"].append(stage_times(repo, env, work / name, models))
                if terminal:
                    command = [sys.executable, "-m", "knnvc", "convert", str(source), str(refs), "-o", "out.wav",
                               *models, "--overwrite"]  # fmt: skip
                    first, end, text = on_terminal(command, python_env(repo, env), work / name)
                    got["first"].append(end if first is None else first)
                    got["end"].append(end)
                    got["line"].append(next((ln.strip() for ln in reversed(text.splitlines()) if "of audio" in ln), ""))
                    got["bad"] += bad_source_times(repo, 1, env, work / name)
    figures = {}
    for name, got in seen.items():
        stages = {key: round(statistics.median(s[key] for s in got["stages"]), 3) for key in got["stages"][0]}
        keys = list(dict.fromkeys(key for t in got["timeline"] for key in t))
        lines = {key: round(statistics.median(t.get(key, 0.0) for t in got["timeline"]), 3) for key in keys}
        firsts = [t["to first compute"] for t in got["timeline"]]
        figure = {
            "command": f"knnvc convert source.wav ref/ -o out.wav ({_models_name(models)}, --device cpu)",
            "runs": runs,
            "to_first_compute": spread(firsts),
            "timeline_median_s": lines,
            "stages_median_s": stages,
            "load_before": round(load_before, 2),
            "load_during": round(statistics.mean(got["load"]), 2),
            "load_after": round(os.getloadavg()[0], 2),
        }
        if terminal:
            figure |= {
                "first_output": spread(got["first"]),
                "end": spread(got["end"]),
                "median_s": round(statistics.median(got["end"]), 4),
                "min_s": round(min(got["end"]), 4),
                "max_s": round(max(got["end"]), 4),
                "bad_source": {
                    "command": "knnvc convert text.wav ref/ -o never.wav (a text file named .wav): exit 3",
                    **spread(got["bad"]),
                },  # fmt: skip
                "result_line": got["line"][-1],
            }
        else:
            ends = [t["to the end"] for t in got["timeline"]]
            figure |= {"median_s": round(statistics.median(ends), 4), "min_s": round(min(ends), 4),
                       "max_s": round(max(ends), 4)}  # fmt: skip
        figures[name] = figure
    return figures


def _models_name(models: list[str]) -> str:
    return "tiny models" if models is TINY else "full-size models"


def full_size_models(work: Path) -> list[str]:
    """``--wavlm W --vocoder V --device cpu`` for full-size random checkpoints of the published layouts
    (``bench.layouts``), written into ``work`` once and reused by later runs with the same ``--work``."""
    from bench.layouts import write_prematch_vocoder, write_wavlm_large

    work.mkdir(parents=True, exist_ok=True)
    wavlm, vocoder = work / "WavLM-Large.pt", work / "prematch_g_02500000.pt"
    if not wavlm.exists():
        write_wavlm_large(wavlm)
    if not vocoder.exists():
        write_prematch_vocoder(vocoder)
    return ["--wavlm", str(wavlm), "--vocoder", str(vocoder), "--device", "cpu"]


def revision(repo: Path) -> str:
    """The commit checked out at ``repo`` (with ``+changes`` when its tree differs), or "" outside git."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=repo, check=False)
    head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + ("+changes" if head and dirty else "")


def _convert_rows(title: str, shown: dict[str, dict[str, Any]]) -> list[str]:
    """A one-file convert's section of the table: a column for each checkout in ``shown``."""

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    figures = list(shown.values())
    loads = [f"{f['load_before']:g}-{f['load_after']:g}" for f in figures]
    rows = ["", f"{title}, median seconds (load average {', '.join(loads)}):", "",
            row("", list(shown)), "|---|" + "---|" * len(shown)]  # fmt: skip
    for label, key in (("first output on stderr (a terminal)", "first_output"),
                       ("**process start to first compute**", "to_first_compute")):  # fmt: skip
        if all(key in f for f in figures):
            rows.append(row(label, [f"{f[key]['median_s']:.2f}" for f in figures]))
    rows.append(row("the end", [f"{f['median_s']:.2f}" for f in figures]))
    if all("bad_source" in f for f in figures):
        rows.append(row("a text file as the source: rejected after", [f"{f['bad_source']['median_s']:.2f}"
                                                                      for f in figures]))  # fmt: skip
    for caption, key in (("the command as it ran, each part until the next", "timeline_median_s"),
                         ("cost by stage, one after another in a process of its own", "stages_median_s")):  # fmt: skip
        if not all(key in f for f in figures):
            continue
        rows.append(f"| *{caption}:* |" + " |" * len(shown))
        for stage in dict.fromkeys(k for f in figures for k in f[key]):
            if stage in ("to first compute", "to the end"):
                continue
            rows.append(row(stage, [f"{f[key][stage]:.2f}" if stage in f[key] else "-" for f in figures]))
    lines = [f"{name}: {f['result_line']}" for name, f in shown.items() if f.get("result_line")]
    return rows + (["", *lines] if lines else [])


def table(result: dict[str, Any]) -> str:
    rows = [f"Start-up on {result['cpu']} ({result['cores']} cores), {result['runs']} runs each, wall seconds:", "",
            "| command | median | fastest | slowest | load average |", "|---|---|---|---|---|"]  # fmt: skip
    for row in result["figures"].values():
        rows.append(f"| `{row['command']}` | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} "
                    f"| {row['load_before']:g}-{row['load_after']:g} |")  # fmt: skip
    for key, title in (("convert", "One-file `knnvc convert`, tiny models"),
                       ("convert_full", "One-file `knnvc convert`, full-size models (random weights)")):  # fmt: skip
        converts = {"before": result.get("before", {}).get(key), "now": result["figures"].get(key)}
        shown = {name: fig for name, fig in converts.items() if fig}
        if shown:
            rows += _convert_rows(title, shown)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (the median is reported)")
    parser.add_argument("--convert-runs", type=int, default=5, help="timed runs of the one-file convert (0: none)")
    parser.add_argument(
        "--full-size",
        type=int,
        default=0,
        metavar="RUNS",
        help="also time the one-file convert with full-size random models, RUNS times (0: not)",
    )
    parser.add_argument("--work", type=Path, help="keep the full-size checkpoints here between runs (else a temp dir)")
    parser.add_argument("--before", type=Path, help="another checkout to time beside this one (a git worktree)")
    parser.add_argument("--quick", action="store_true", help="print the figures; write nothing to bench/results")
    args = parser.parse_args()
    if args.runs < 1 or args.convert_runs < 0 or args.full_size < 0:
        parser.error("--runs must be at least 1, --convert-runs and --full-size at least 0")
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
    repos = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    earlier = json.loads(out.read_text()).get("before", {}) if out.exists() and not args.before else {}
    if args.before:
        result["before"] = {"revision": revision(args.before)}
    elif earlier:  # keep the earlier checkout's figures recorded by a run with --before
        result["before"] = earlier
    with tempfile.TemporaryDirectory(prefix="knnvc-startup-models-") as tmp:
        sizes = [("convert", args.convert_runs, lambda: TINY, True)]
        if args.full_size:
            work = args.work or Path(tmp)
            sizes.append(("convert_full", args.full_size, lambda: full_size_models(work), False))
        for key, runs, models, terminal in sizes:
            if not runs:
                continue
            full = {**env, "KNNVC_CACHE": str((args.work or Path(tmp)) / "cache")} if key == "convert_full" else env
            converts = convert_figures(repos, runs, full, models(), terminal=terminal)
            result["figures"][key] = {**converts["now"], "revision": revision(ROOT)}
            if "before" in converts:
                result["before"][key] = converts["before"]
    print(table(result))  # noqa: T201 (a benchmark's output is its report)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")  # noqa: T201


if __name__ == "__main__":
    main()
