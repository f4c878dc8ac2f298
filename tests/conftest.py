"""Shared fixtures: paths to the reference data from the original kNN-VC run (see fixtures/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SPEECH = FIXTURES / "speech"
SOURCE_WAV = SPEECH / "source.wav"
REF_DIR = SPEECH / "ref"
TINY_WAVLM = FIXTURES / "wavlm_tiny" / "WavLM-tiny.pt"
TINY_VOCODER = FIXTURES / "vocoder_tiny" / "prematch_g_tiny.pt"
TINY_VOCODER_CONFIG = FIXTURES / "vocoder_tiny" / "config.json"
LAYOUTS = FIXTURES / "published_layouts.json"


# Under pytest-xdist (pyproject's addopts: two workers on a 2-core machine) each worker runs torch on one thread, and
# so do the interpreters the tests start (OMP_NUM_THREADS is inherited): two workers on two threads each would
# oversubscribe the cores, and the tiny models are slower on two threads than on one when the cores are busy.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Tests better kept on one xdist worker (``--dist loadgroup`` keeps a group on one worker), by module: test_cluster
# starts one local Ray per module and test_web one `knnvc serve` (~7 s). Caveat: pytest-xdist 3.8 marks a group by
# rewriting ``item._nodeid``, which pytest 9.2 no longer reads, so today these modules may still be split over both
# workers; that is safe (each worker's Ray is its own local session, each server its own free port), only slower.
XDIST_GROUPS = {"test_cluster.py": "ray", "test_web.py": "knnvc-serve"}
# Started first, so that no worker is left alone with it at the end (it runs ~1 min on its own).
LONGEST = ("tests/test_windows.py::test_one_hour_converts_on_cpu_in_flat_memory",)


TERMINAL = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist, in the main process) Tell each worker the terminal size variables of this process."""
    node.workerinput["knnvc_terminal"] = {name: os.environ.get(name) for name in TERMINAL}


def pytest_configure(config: pytest.Config) -> None:
    """(in an xdist worker) An xdist worker starts with COLUMNS=80 and LINES=24 where pytest itself had none: rich's
    consoles, made when ``knnvc.cli`` is imported, would keep those 80 columns, and so would the interpreters the
    tests start. Give the worker the main process's values back, before the test modules are imported."""
    terminal = getattr(config, "workerinput", {}).get("knnvc_terminal")
    for name, value in (terminal or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(item.path.name)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.nodeid not in LONGEST)  # stable: the order is otherwise kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The knnvc and Hugging Face caches of the session (of each xdist worker) are its own temp folders: the
    converted copies of full-size weights (~350 MB each) never pile up in ~/.cache, and workers never share one.
    Tests that need a particular cache still set their own."""
    root = tmp_path_factory.mktemp("cache")
    saved = {name: os.environ.get(name) for name in ("KNNVC_CACHE", "HF_HOME")}
    os.environ["KNNVC_CACHE"], os.environ["HF_HOME"] = str(root / "knnvc"), str(root / "huggingface")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def reference_outputs() -> dict[str, Any]:
    out: dict[str, Any] = torch.load(FIXTURES / "reference_outputs.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module on one torch thread: tiny models on a busy 2-core machine are ~10x faster so."""
    from tests.fault_tools import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved voice (.voice file) built with the tiny WavLM from the fixture references."""
    from tests.fault_tools import tiny_voice_file

    return tiny_voice_file(tmp_path_factory.mktemp("voice"))


def help_probe(commands: list[list[str]], heavy: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``knnvc ARGS`` (each a ``--help``) in a fresh interpreter; every help must exit 0, and the last line
    printed is ``LOADED [...]``: which of the ``heavy`` modules those helps imported."""
    probe = (
        "import sys\nfrom knnvc.cli import app\n"
        f"for args in {commands!r}:\n"
        "    try:\n        app(args, prog_name='knnvc')\n"
        "    except SystemExit as exc:\n        assert exc.code == 0, (args, exc.code)\n"
        f"heavy = {heavy!r}\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout)


def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the command line's stderr is a 120-column terminal: rich draws its live displays (progress
    bars, spinners) there, frame by frame, as a user sees them (``tests.fault_tools.last_frame`` reads the last)."""
    from rich.console import Console

    from knnvc.cli import common

    screen = Console(stderr=True, force_terminal=True, force_interactive=True, width=120)
    monkeypatch.setattr(common, "err", screen)


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's stderr is a 120-column terminal (``on_a_terminal``)."""
    on_a_terminal(monkeypatch)


@pytest.fixture()
def unloadable(tmp_path: Path) -> list[str]:
    """CLI model options naming weights that do not exist. A check that must come before any model loads fails
    with its own error; had a model been loaded first, the command would fail on these weights instead (see
    ``tests.fault_tools.no_model_loaded``)."""
    missing = tmp_path / "never-loaded"
    return ["--wavlm", str(missing / "wavlm.pt"), "--vocoder", str(missing / "vocoder.pt"), "--device", "cpu",
            "--no-trim"]  # fmt: skip
