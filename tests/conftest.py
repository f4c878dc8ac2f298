"""Shared fixtures: paths to the reference data from the original kNN-VC run (see fixtures/README.md)."""

from __future__ import annotations

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
