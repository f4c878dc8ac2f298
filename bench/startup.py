"""``python -m bench.startup``: how long ``knnvc --help`` and ``knnvc --version`` take, as a user runs them.

    python -m bench.startup               # 15 runs of each: writes bench/results/startup-<cpu>.json
    python -m bench.startup --runs 5 --quick   # a smoke run, nothing written

Each command runs as a whole process (the interpreter's start, the imports, the output), after one untimed run
that warms the page cache; the figures are the median, fastest and slowest wall times of ``--runs`` runs, with
the machine's load average beside them (the machine may be shared: rerun when it was busy). ``python -c pass``
is measured the same way: the interpreter's own start, which no change to knnvc can remove. The test suite
checks that help imports no torch (``tests/test_cli.py``); how fast that makes it is this figure, not a test.
``python -m bench.table`` lists the results files in docs/performance.md.
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


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


def table(result: dict[str, Any]) -> str:
    rows = [f"Start-up on {result['cpu']} ({result['cores']} cores), {result['runs']} runs each, wall seconds:", "",
            "| command | median | fastest | slowest | load average |", "|---|---|---|---|---|"]  # fmt: skip
    for row in result["figures"].values():
        rows.append(f"| `{row['command']}` | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} "
                    f"| {row['load_before']:g}-{row['load_after']:g} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="print the figures; write nothing to bench/results")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    env = {**os.environ, "KNNVC_OFFLINE": "1"}
    knnvc = knnvc_command()
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*knnvc, "--help"],
        "version": [*knnvc, "--version"],
    }
    cpu = cpu_model()
    result: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runs": args.runs,
        "figures": {name: figure(command, args.runs, env) for name, command in commands.items()},
    }
    print(table(result))  # noqa: T201 (a benchmark's output is its report)
    if not args.quick:
        out = RESULTS / f"startup-{slug(cpu)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")  # noqa: T201


if __name__ == "__main__":
    main()
