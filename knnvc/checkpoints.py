"""Build models from weight files: the original and Hugging Face WavLM formats, and the published vocoders.

``knnvc.weights`` finds the files (registry, cache, download); this module turns them into modules, with strict
key matching so that a partial or foreign checkpoint fails loudly instead of running with random weights.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import WavLMConfig, WavLMModel
from transformers.utils import logging as hf_logging

from knnvc import converted
from knnvc.constants import WAVLM_LAYER
from knnvc.encoder import WavLMEncoder
from knnvc.errors import WeightsError
from knnvc.wavlm_convert import convert_original_state_dict, hf_config_from_original
from knnvc.weights import load_checkpoint, resolve_vocoder, resolve_wavlm
from vocoder import Generator, VocoderLoadError, load_generator

log = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


def _keep_key(key: str, layer: int) -> bool:
    match = _LAYER_KEY.match(key)
    return match is None or int(match.group(1)) < layer


def _check_keys(name: str, expected: dict[str, torch.Size], got: dict[str, torch.Tensor]) -> None:
    """Strict key and shape matching between a converted state dict and the full-depth model."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatches (first: {k} {tuple(got[k].shape)} vs {tuple(expected[k])})")
    if problems:
        raise WeightsError(f"{name}: not a WavLM checkpoint of the layout its config describes: {'; '.join(problems)}")


def read_original(path: Path) -> tuple[WavLMConfig, dict[str, torch.Tensor]]:
    """An original-format WavLM checkpoint as a transformers config and a renamed state dict.

    Every key and shape is checked strictly against the full-depth model its config describes.
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        raise WeightsError(f"{path}: not an original WavLM checkpoint (expected the keys 'cfg' and 'model')")
    config = hf_config_from_original(dict(ckpt["cfg"]))
    state = convert_original_state_dict(ckpt["model"])
    with torch.device("meta"):
        full = WavLMModel(config)
    _check_keys(str(path), {k: v.shape for k, v in full.state_dict().items()}, state)
    return config, state


def wavlm_model(config: WavLMConfig, state: dict[str, torch.Tensor], layers: int) -> WavLMModel:
    """A ``WavLMModel`` with its first ``layers`` transformer layers, every tensor taken from ``state``."""
    config.num_hidden_layers = layers
    with torch.device("meta"):
        model = WavLMModel(config)  # no random init: the weights come from the checkpoint
    kept = {k: v.float() for k, v in state.items() if _keep_key(k, layers)}
    model.load_state_dict(kept, strict=True, assign=True)
    return model.float()


def wavlm_from_original(path: Path, layer: int = WAVLM_LAYER) -> WavLMEncoder:
    """Load an original-format WavLM checkpoint (``{'cfg': ..., 'model': ...}``, as ``WavLM-Large.pt``).

    The first load keeps a converted, memory-mappable copy of the layers used in the cache (``knnvc.converted``).
    """
    found = converted.load(path, layer)
    if found is None:
        config, state = read_original(path)
        state = {k: v for k, v in state.items() if _keep_key(k, layer)}
        converted.save(path, layer, config, state)
    else:
        config, state = found
    return WavLMEncoder(wavlm_model(config, state, layer), name=str(path), layer=layer)


def wavlm_from_hf(location: Path, name: str, layer: int = WAVLM_LAYER) -> WavLMEncoder:
    """Load a Hugging Face ``WavLMModel`` folder, building only the first ``layer`` transformer layers."""
    config = WavLMConfig.from_pretrained(location)
    if config.num_hidden_layers < layer:
        raise WeightsError(f"{name}: has {config.num_hidden_layers} layers, kNN-VC needs {layer}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused deeper layers are expected; strictness is checked below
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        loaded: Any = WavLMModel.from_pretrained(
            location, num_hidden_layers=layer, output_loading_info=True, dtype=torch.float32
        )
        model: WavLMModel = loaded[0]
        info: dict[str, list[Any]] = loaded[1]
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{name}: cannot load as a Hugging Face WavLM model: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    unexpected = [k for k in info["unexpected_keys"] if _keep_key(k, layer)]
    problems = list(info["missing_keys"]) + unexpected + [str(m) for m in info.get("mismatched_keys", [])]
    if problems:
        raise WeightsError(f"{name}: weights do not match WavLMModel strictly: {sorted(problems)[:5]}")
    return WavLMEncoder(model.float(), name=name, layer=layer)


def load_encoder(id_or_path: str | Path, *, offline: bool | None = None, layer: int = WAVLM_LAYER) -> WavLMEncoder:
    """Load WavLM from a hub id, a local HF folder or an original-format ``.pt`` file; on CPU, fp32."""
    location = resolve_wavlm(id_or_path, offline=offline)
    location = Path(location)
    if location.is_file():
        return wavlm_from_original(location, layer)
    return wavlm_from_hf(location, name=str(id_or_path), layer=layer)


def load_vocoder(name_or_path: str | Path, *, offline: bool | None = None, progress: Any = None) -> Generator:
    """Load a HiFi-GAN generator by registry name or path; eval mode, weight norm folded, on CPU."""
    path = resolve_vocoder(name_or_path, offline=offline, progress=progress)
    found = converted.load_vocoder(path)
    if found is not None:
        return found
    try:
        model = load_generator(path)
    except VocoderLoadError as exc:
        raise WeightsError(f"{exc}; pass --vocoder prematched, or a g_*.pt generator checkpoint you trust") from exc
    converted.save_vocoder(path, model)
    return model


def original_to_hf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert an original-format WavLM checkpoint (all layers) into a Hugging Face model folder."""
    config, state = read_original(Path(path))
    wavlm_model(config, state, config.num_hidden_layers).save_pretrained(out_dir)
    return Path(out_dir)
