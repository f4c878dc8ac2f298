"""Shared fixtures: paths to the reference data from the original kNN-VC run (see fixtures/README.md)."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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
