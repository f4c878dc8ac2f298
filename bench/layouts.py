"""Full-size random-weight checkpoints with exactly the published layouts (no download needed).

``tests/fixtures/published_layouts.json`` lists every key and shape of ``WavLM-Large.pt`` and
``prematch_g_02500000.pt``. The files written here have those keys and shapes, small random values (so the
models run without overflowing), and the published container formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LAYOUTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "published_layouts.json"


def load_layouts(path: Path = LAYOUTS) -> dict[str, Any]:
    with open(path) as fh:
        layouts: dict[str, Any] = json.load(fh)
    return layouts


def _random_tensor(key: str, shape: list[int], gen: torch.Generator) -> torch.Tensor:
    if key.endswith("weight_g") or "layer_norm" in key and key.endswith("weight") or key.endswith(".2.1.weight"):
        return torch.ones(shape)
    if key.endswith("bias") or key.endswith("grep_a"):
        return torch.zeros(shape) if key.endswith("bias") else torch.ones(shape)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / fan_in**0.5


def random_state(layout: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the layout's keys and shapes and fan-in-scaled random values."""
    gen = torch.Generator().manual_seed(seed)
    return {key: _random_tensor(key, shape, gen) for key, shape in layout.items()}


def write_wavlm_large(path: Path, seed: int = 0) -> Path:
    """A random ``WavLM-Large.pt`` in the original format: ``{'cfg': dict, 'model': state_dict}``."""
    layout = load_layouts()["WavLM-Large.pt"]
    torch.save({"cfg": dict(layout["cfg"]), "model": random_state(layout["model"], seed)}, path)
    return path


def write_prematch_vocoder(path: Path, seed: int = 0) -> Path:
    """A random ``prematch_g_02500000.pt``: ``{'generator': state_dict}`` in the legacy weight-norm layout."""
    layout = load_layouts()["prematch_g_02500000.pt"]
    torch.save({"generator": random_state(layout["generator"], seed)}, path)
    return path
