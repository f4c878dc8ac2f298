"""Checkpoints of a training run.

``RUN_DIR/g_XXXXXXXX.pt``: the generator after step X, written by :func:`vocoder.save_generator`
(``{'generator', 'config', 'step'}``), loadable by ``load_generator`` and ``knnvc convert --vocoder``.
``RUN_DIR/state_XXXXXXXX.pt``: everything needed to resume: generator and discriminator weights, both AdamW
states, both schedulers, step, epoch, batches done in that epoch. Both are plain-tensor files
(``torch.load(weights_only=True)`` reads them). ``RUN_DIR/run.json`` records the vocoder config.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from vocoder.atomic import write_atomically
from vocoder.checkpoint import VocoderLoadError, load_generator, read_checkpoint, save_generator
from vocoder.config import HifiganConfig
from vocoder.model import Generator
from vocoder.train.data import TrainingError

logger = logging.getLogger(__name__)

_STATE = re.compile(r"^state_(\d{8,})\.pt$")
RUN_FILE = "run.json"


def generator_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"g_{step:08d}.pt"


def state_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"state_{step:08d}.pt"


def latest_state(run_dir: Path) -> Path | None:
    """The resumable state with the highest step in ``run_dir``, or None."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("state_*.pt") if (m := _STATE.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(run_dir: Path, state: Mapping[str, Any], generator: Generator, keep_states: int) -> Path:
    """Write ``g_<step>.pt`` and ``state_<step>.pt`` (``state`` must hold ``step``); prune old states.

    Returns the generator file's path.
    """
    step = int(state["step"])
    g_path = generator_path(run_dir, step)
    save_generator(generator, g_path, extra={"step": step})
    write_atomically(state_path(run_dir, step), lambda fh: torch.save(dict(state), fh))
    states = sorted(int(m.group(1)) for p in run_dir.glob("state_*.pt") if (m := _STATE.match(p.name)))
    for old in states[: max(0, len(states) - max(1, keep_states))]:
        state_path(run_dir, old).unlink(missing_ok=True)
    return g_path


def load_state(path: Path, map_location: torch.device) -> dict[str, Any]:
    """Read a ``state_*.pt`` file (plain tensors only)."""
    try:
        state = read_checkpoint(path, map_location, "Training state")
    except VocoderLoadError as exc:
        raise TrainingError(str(exc)) from exc
    if "step" not in state or "generator" not in state:
        raise TrainingError(f"{path}: not a training state file")
    return state


def write_run_file(run_dir: Path, vocoder_config: HifiganConfig, extra: Mapping[str, Any]) -> None:
    """Record the run's generator config (and ``extra``) in ``run.json``."""
    body = {"vocoder": vocoder_config.to_dict(), **extra}
    (run_dir / RUN_FILE).write_text(json.dumps(body, indent=1), encoding="utf-8")


def read_run_config(run_dir: Path) -> HifiganConfig | None:
    """The generator config recorded in ``run.json``, or None for a new run."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        return HifiganConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["vocoder"])
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: unreadable run file ({exc})") from exc


def trainable_copy(folded: Generator) -> Generator:
    """A generator with weight-norm parametrizations (trainable) computing what ``folded`` computes.

    Assigning a folded weight to a parametrized ``weight`` sets ``g = ||w||`` and ``v = w`` exactly.
    """
    fresh = Generator(folded.config)
    folded_modules = dict(folded.named_modules())
    with torch.no_grad():
        for name, module in fresh.named_modules():
            source = folded_modules[name]
            if isinstance(module, nn.Conv1d | nn.ConvTranspose1d | nn.Linear):
                if parametrize.is_parametrized(module, "weight"):
                    module.weight = source.weight.detach().clone()  # right_inverse: g = ||w||, v = w
                else:
                    module.weight.copy_(source.weight)
                if module.bias is not None and source.bias is not None:
                    module.bias.copy_(source.bias)
    return fresh


def init_generator(path: Path, config: HifiganConfig) -> Generator:
    """Start from published (or any) generator weights: load, check they fit ``config``, make trainable."""
    folded = load_generator(path, config=config)
    logger.info("initialised the generator from %s", path)
    return trainable_copy(folded)
