"""Loading and saving HiFi-GAN generator checkpoints.

A checkpoint is ``{'generator': state_dict}`` (as the published ``prematch_g_02500000.pt``), optionally
with a ``config`` dict. The state dict may be in any of three layouts: legacy weight norm (``X.weight_g``
and ``X.weight_v``), parametrized weight norm (``X.parametrizations.weight.original0/1``) or folded
(``X.weight``).
Files are read with ``torch.load(..., weights_only=True)`` only: a file that needs pickled code is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vocoder.atomic import write_atomically
from vocoder.config import HifiganConfig
from vocoder.model import Generator

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

_LEGACY_SUFFIXES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}
_PARAM_MARK = ".parametrizations.weight.original"
_MAX_LISTED = 6


class VocoderLoadError(ValueError):
    """A vocoder checkpoint that is missing, unreadable, unsafe to load, or does not fit its config."""


class UnsafeCheckpointError(VocoderLoadError):
    """A checkpoint that holds pickled code or objects, which ``torch.load(weights_only=True)`` refuses."""


def load_generator(
    path: StrPath,
    map_location: str | torch.device = "cpu",
    config: HifiganConfig | Mapping[str, Any] | None = None,
) -> Generator:
    """Load a generator for inference: eval mode, weight norm folded, on ``map_location``.

    The config is, in order: ``config`` if given (a HifiganConfig, or a dict in our or the original's key
    names); the checkpoint's own ``config`` entry; a ``config.json`` next to the file (original key names);
    else the defaults (the published prematched vocoder: 1024-dim features at 50 Hz -> 16 kHz).

    Raises VocoderLoadError (a ValueError) naming the file on any failure.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location, "Vocoder checkpoint")
    state = _generator_state(path, ckpt)
    cfg, source = _resolve_config(path, ckpt, config)
    logger.debug("Loading vocoder %s with config from %s", path, source)
    state, names = _to_parametrized_keys(state)
    with torch.device("meta"):  # no random init to overwrite: every tensor comes from the checkpoint
        model = Generator(cfg)
    if not any(_PARAM_MARK in k for k in state):
        model.fold_weight_norm()  # the checkpoint is already folded: load plain weights
    _check_compatible(path, model, state, names, source)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.fold_weight_norm()
    return model.to(map_location).eval()


def save_generator(generator: Generator, path: StrPath, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``{'generator': state_dict, 'config': config.to_dict(), **extra}`` to ``path`` atomically.

    The state dict is in the model's current layout (parametrized weight norm, or folded), moved to CPU.
    The file is written to a temporary file in the same folder, then renamed over ``path``.
    """
    extra = dict(extra or {})
    clash = {"generator", "config"} & extra.keys()
    if clash:
        raise ValueError(f"save_generator: extra must not contain the reserved keys {sorted(clash)}")
    path = Path(path)
    payload = {
        "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "config": generator.config.to_dict(),
        **extra,
    }
    write_atomically(path, lambda fh: torch.save(payload, fh))


def read_checkpoint(
    path: StrPath, map_location: str | torch.device = "cpu", what: str = "Checkpoint"
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a dict checkpoint: the one place knnvc and vocoder unpickle.

    ``what`` names the file in messages ("Vocoder checkpoint", "Training state"...).

    Raises:
        UnsafeCheckpointError: the file holds pickled code or objects that ``weights_only`` refuses to run.
        VocoderLoadError: the file is missing, truncated, corrupt or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise VocoderLoadError(f"{what} {path} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{what} {path} is not a plain-tensor checkpoint: it holds pickled code or objects "
            f"that torch.load(weights_only=True) refuses to run ({_first_line(e)})"
        ) from e
    except (RuntimeError, EOFError, KeyError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise VocoderLoadError(
            f"{what} {path} cannot be read as a PyTorch checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e
    if not isinstance(ckpt, dict):
        raise VocoderLoadError(f"{what} {path} is not a checkpoint dict (got {type(ckpt).__name__})")
    return ckpt


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's are paragraphs)."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


def _generator_state(path: Path, ckpt: dict[str, Any]) -> dict[str, Tensor]:
    if "generator" not in ckpt:
        keys = sorted(str(k) for k in ckpt)[:_MAX_LISTED]
        raise VocoderLoadError(
            f"Vocoder checkpoint {path} has no 'generator' entry (top-level keys: {keys}); "
            "expected {'generator': state_dict} as the published prematch_g_02500000.pt"
        )
    state = ckpt["generator"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise VocoderLoadError(f"Vocoder checkpoint {path}: 'generator' is not a state dict of tensors")
    return dict(state)


def _resolve_config(
    path: Path, ckpt: dict[str, Any], explicit: HifiganConfig | Mapping[str, Any] | None
) -> tuple[HifiganConfig, str]:
    """The config and a phrase saying where it came from (for messages)."""
    if isinstance(explicit, HifiganConfig):
        return explicit, "the config argument"
    if explicit is not None:
        try:
            return HifiganConfig.from_dict(explicit), "the config argument"
        except ValueError as e:
            raise VocoderLoadError(f"Invalid config argument for vocoder checkpoint {path}: {e}") from e
    if ckpt.get("config") is not None:
        try:
            return HifiganConfig.from_dict(ckpt["config"]), f"the 'config' entry of {path}"
        except ValueError as e:
            raise VocoderLoadError(f"Vocoder checkpoint {path}: invalid 'config' entry: {e}") from e
    json_path = path.parent / "config.json"
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
            return HifiganConfig.from_dict(data), str(json_path)
        except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
            raise VocoderLoadError(f"Vocoder config {json_path} (for {path}) is invalid: {e}") from e
    return HifiganConfig(), "the defaults (published prematched vocoder)"


def _to_parametrized_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename legacy weight-norm keys (``X.weight_g``/``X.weight_v``) to the parametrization layout.

    Returns the renamed state dict and, for messages, each new key's name in the file.
    """
    out: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for key, value in state.items():
        new_key = key
        for old, new in _LEGACY_SUFFIXES.items():
            if key.endswith(old):
                new_key = key[: -len(old)] + new
                break
        out[new_key] = value
        names[new_key] = key
    return out, names


def _check_compatible(
    path: Path, model: Generator, state: dict[str, Tensor], names: dict[str, str], source: str
) -> None:
    """Raise VocoderLoadError naming the first mismatching key or shape, with a hint about the config."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    hint = (
        f"The model was built from {source}. If this is not the published 1024-dim model, put its "
        "config.json next to the checkpoint or pass config=."
    )
    for key, value in state.items():
        if key in expected and tuple(value.shape) != expected[key]:
            raise VocoderLoadError(
                f"Vocoder checkpoint {path}: key {names[key]!r} has shape {tuple(value.shape)} but "
                f"the config expects {expected[key]}. {hint}"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(names[k] for k in set(state) - set(expected))
    if missing or unexpected:
        raise VocoderLoadError(
            f"Vocoder checkpoint {path}: state dict keys do not match the generator "
            f"(missing: {missing[:_MAX_LISTED]}{' ...' if len(missing) > _MAX_LISTED else ''}; "
            f"unexpected: {unexpected[:_MAX_LISTED]}{' ...' if len(unexpected) > _MAX_LISTED else ''}). "
            f"{hint}"
        )
