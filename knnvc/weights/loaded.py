"""The networks a pipeline runs: prepared copies on a device in a precision, and the cache that keeps them.

``prepare_encoder`` / ``prepare_vocoder`` never change the modules they are given: a module that is not already
in eval mode on the device, in the precision asked for, is copied first and the copy is moved and cast (with
its fp32 islands, see ``WavLMEncoder.cast`` and ``Generator.cast``). ``cached_encoder`` / ``cached_vocoder``
load weights once per (weights, device, precision) and hand out the same prepared module, which
``KnnVC.from_pretrained`` uses, so repeated pipelines (and repeated calls of ``knnvc.convert``) load nothing
twice. transformers is imported only when a WavLM is loaded. On a CPU the vocoder runs its convolutions in
channels-last layout (the encoder always does, ``WavLMEncoder``), and the process is tuned once (``tune_cpu``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from knnvc.runtime.devices import tune_cpu

if TYPE_CHECKING:
    from knnvc.nn.encoder import WavLMEncoder
    from vocoder import Generator

M = TypeVar("M", bound=nn.Module)

_CACHE: dict[tuple[str, str, str, str, int], Any] = {}
"""(kind, weights key, device, dtype, depth) -> a prepared encoder (run to ``depth`` layers) or vocoder (depth 0)."""


def _ready(module: nn.Module, device: torch.device, dtype: torch.dtype, island: nn.Module) -> bool:
    """Whether ``module`` already runs as asked: eval mode, every tensor on ``device``, cast with its island."""
    if any(m.training for m in module.modules()):
        return False
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.device != device for t in tensors):
        return False
    inside = {id(t) for t in island.parameters()}
    floats = [t for t in module.parameters() if t.is_floating_point()]
    return all(t.dtype == (torch.float32 if id(t) in inside else dtype) for t in floats)


def _prepared(module: M, device: torch.device, dtype: torch.dtype, island: nn.Module, cast: str) -> M:
    if _ready(module, device, dtype, island):
        return module
    duplicate = copy.deepcopy(module)  # never move, cast or switch the mode of the caller's module
    getattr(duplicate.to(device), cast)(dtype)
    return duplicate.eval()


def prepare_encoder(encoder: WavLMEncoder, device: torch.device, dtype: torch.dtype) -> WavLMEncoder:
    """``encoder`` itself when it already runs on ``device`` in ``dtype`` (eval mode), else a prepared copy; on a
    CPU the process is tuned once (``tune_cpu``)."""
    if device.type == "cpu":
        tune_cpu()
    return _prepared(encoder, device, dtype, encoder.model.feature_extractor.conv_layers[0], "cast")


def prepare_vocoder(vocoder: Generator, device: torch.device, dtype: torch.dtype) -> Generator:
    """``vocoder`` itself when it already runs on ``device`` in ``dtype`` (eval mode), else a prepared copy; on a
    CPU a folded vocoder also gets the channels-last layout (``_cpu_layout_helps``), on a copy."""
    prepared = _prepared(vocoder, device, dtype, vocoder.conv_post, "cast")
    if device.type == "cpu":
        tune_cpu()
    if _cpu_layout_helps(prepared, device):
        prepared = (copy.deepcopy(prepared) if prepared is vocoder else prepared).channels_last()
    return prepared


def _cpu_layout_helps(vocoder: Generator, device: torch.device) -> bool:
    """Whether to run ``vocoder`` as 2-D channels-last convolutions (``Generator.channels_last``): on a CPU, where
    oneDNN computes them faster (full-size HiFi-GAN, 10 s on 2 cores: fp32 1.50 -> 0.98 s, bf16 0.66 -> 0.46 s;
    outputs within 6e-8), for a folded vocoder not yet converted."""
    return device.type == "cpu" and vocoder.is_folded and not vocoder.layout_2d


def _owned(module: M, device: torch.device, dtype: torch.dtype) -> M:
    """Prepare a module nobody else holds (just loaded) in place: no copy needed."""
    if device.type == "cpu":
        tune_cpu()
    module.to(device).cast(dtype)  # type: ignore[operator]
    return module.eval()


def _weights_key(name: str | Path) -> str:
    """A local path by its absolute location and modification time (an edited file reloads); else the name."""
    from knnvc.weights.hub import with_local_default

    name = with_local_default(name)
    path = Path(name).expanduser()
    if path.exists():
        return f"{path.resolve()}@{path.stat().st_mtime_ns}"
    return str(name)


def cached_encoder(
    name: str | Path, device: torch.device, dtype: torch.dtype, offline: bool | None, depth: int | None = None
) -> WavLMEncoder:
    """WavLM by registry name, hub id or path, loaded once per (weights, device, precision, depth).

    ``depth``: transformer layers run (default: kNN-VC's layer 6), for a deeper match layer.
    """
    key = ("wavlm", _weights_key(name), str(device), str(dtype), depth or 0)
    if key not in _CACHE:
        from knnvc.weights.formats import load_encoder

        _CACHE[key] = _owned(load_encoder(name, offline=offline, depth=depth), device, dtype)
    found: WavLMEncoder = _CACHE[key]
    return found


def cached_vocoder(name: str | Path, device: torch.device, dtype: torch.dtype, offline: bool | None) -> Generator:
    """A HiFi-GAN by registry name or path, loaded once per (weights, device, precision)."""
    key = ("vocoder", _weights_key(name), str(device), str(dtype), 0)
    if key not in _CACHE:
        from knnvc.weights.formats import load_vocoder

        vocoder = _owned(load_vocoder(name, offline=offline), device, dtype)
        _CACHE[key] = vocoder.channels_last() if _cpu_layout_helps(vocoder, device) else vocoder
    found: Generator = _CACHE[key]
    return found


def clear_cache() -> None:
    """Forget every cached model (frees their memory once nothing else holds them)."""
    _CACHE.clear()


def compiled(module: M) -> tuple[M, float]:
    """``torch.compile`` a module (dynamic shapes); returns it and the seconds the wrapping took.

    Compilation itself happens on the first calls; ``KnnVC.warm_up`` runs them and reports their time.
    """
    start = time.perf_counter()
    out: M = torch.compile(module, dynamic=True)  # type: ignore[assignment]
    return out, time.perf_counter() - start
