"""Fast start: converted copies of weight files, memory-mapped on later loads.

``WavLM-Large.pt`` is a 1.2 GB pickle of all 24 layers in the original key names; reading and converting it
takes seconds. The first load writes the 6 layers kNN-VC runs, in transformers' key names, as a safetensors
file in the cache (``<cache>/converted/``); later loads map that file (no copy, no unpickling). The vocoder is
kept with its weight norm already folded. The copy is
keyed by the source file's absolute path, size and modification time, so an edited checkpoint converts again;
a copy that cannot be read is ignored and written anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from knnvc.weights.hub import cache_dir

if TYPE_CHECKING:
    from transformers import WavLMConfig

    from vocoder import Generator

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the converted layout changes


def converted_path(source: Path, tag: str) -> Path:
    """Where the converted copy of ``source`` (``tag``: what was kept, e.g. ``l6``) lives in the cache."""
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tag}|{FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{source.stem}-{tag}-{digest}.safetensors"


def _read(source: Path, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    from safetensors import safe_open

    path = converted_path(source, tag)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["config"])
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("ignoring the unreadable converted copy %s (%s); converting again", path, exc)
        return None
    return meta, state


def load(source: Path, layer: int) -> tuple[WavLMConfig, dict[str, torch.Tensor]] | None:
    """The config and memory-mapped state of a converted WavLM, or None when there is none (or it is bad)."""
    from transformers import WavLMConfig

    found = _read(source, f"l{layer}")
    return None if found is None else (WavLMConfig.from_dict(found[0]), found[1])


def save(source: Path, layer: int, config: WavLMConfig, state: dict[str, torch.Tensor]) -> None:
    """Keep a converted WavLM (its first ``layer`` layers)."""
    _write(source, f"l{layer}", config.to_dict(), state)


def load_vocoder(source: Path) -> Generator | None:
    """A folded vocoder from its converted copy (eval mode, on CPU), or None when there is none."""
    from vocoder import Generator, HifiganConfig

    found = _read(source, "folded")
    if found is None:
        return None
    with torch.device("meta"):
        model = Generator(HifiganConfig.from_dict(found[0])).fold_weight_norm()
    try:
        model.load_state_dict(found[1], strict=True, assign=True)
    except RuntimeError as exc:
        log.warning("ignoring the converted copy of %s (%s); converting again", source, exc)
        return None
    return model.eval()


def save_vocoder(source: Path, model: Generator) -> None:
    """Keep a folded copy of a vocoder."""
    _write(source, "folded", model.config.to_dict(), model.state_dict())


def _write(source: Path, tag: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Write a converted copy atomically (temp file, rename); a cache that cannot be written is skipped."""
    from safetensors.torch import save_file

    path = converted_path(source, tag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            tensors = {k: v.contiguous() for k, v in state.items()}
            save_file(tensors, tmp, metadata={"config": json.dumps(config), "source": str(source)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.info("could not keep a converted copy of %s in %s (%s); loads stay slow", source, path.parent, exc)
