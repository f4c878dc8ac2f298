"""Finding the models the metrics need: installed packages and the local Hugging Face cache, never the network."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from knnvc.errors import WeightsError, missing_extra

log = logging.getLogger(__name__)
Model = TypeVar("Model")



def need(module: str, metric: str) -> ModuleType:
    """Import ``module`` for ``metric``, or raise the ``ExtraError`` that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(metric, "eval", module) from exc


def cached_hf_model(repo_or_path: str) -> str | None:
    """A local folder or the snapshot of ``repo_or_path`` in the local HF cache, or None; never downloads."""
    if Path(repo_or_path).is_dir():
        return str(Path(repo_or_path))
    if "/" not in repo_or_path or os.path.exists(repo_or_path):
        return None
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(repo_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001  (any failure here means "not cached": LocalEntryNotFoundError, bad id, ...)
        return None



def pick(
    name: str,
    *,
    option: str,
    fallback: str,
    make_fallback: Callable[[], Model],
    always: str,
    repo: str,
    make: Callable[[str], Model],
    alias: str | None = None,
    what: str,
) -> Model:
    """The model ``option`` (``name``) asks for: ``fallback`` (made by ``make_fallback``; ``always`` says why it is
    always there) by its name; ``auto``: ``repo`` when it is cached, else the fallback; anything else (``alias``
    stands for ``repo``): a folder or cached hub id, made by ``make``.

    Raises:
        WeightsError: the model asked for is not in the local cache.
    """
    if name == fallback:
        return make_fallback()
    if name == "auto":
        local = cached_hf_model(repo)
        if local is not None:
            return make(local)
        log.info("%s is not in the local Hugging Face cache: using %s", repo, fallback)
        return make_fallback()
    wanted = repo if name == alias else name
    local = cached_hf_model(wanted)
    if local is None:
        raise WeightsError(
            f"{what} {wanted!r} is neither a folder nor in the local Hugging Face cache; "
            f"use {option}='{fallback}' ({always}) or download it on a machine online"
        )
    return make(local)


class LocalModel:
    """A transformers preprocessor and model (class names in ``transformers``) loaded by ``from_local``; the
    subclass names them, the metric that needs them and its ``label`` (``{path}``: where it was loaded from)."""

    preprocessor: ClassVar[str]
    model: ClassVar[str]
    metric: ClassVar[str]
    what: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, path: str, device: str = "cpu") -> None:
        transformers = need("transformers", self.metric)
        import torch

        classes = getattr(transformers, self.preprocessor), getattr(transformers, self.model)
        self._prepare, self._model = from_local(path, *classes, device, self.what)
        self._torch, self._device = torch, device
        self.name = self.label.format(path=path)


def from_local(path: str, preprocessor: Any, model: Any, device: str, what: str) -> tuple[Any, Any]:
    """transformers' ``preprocessor`` and ``model`` classes loaded from ``path`` (a folder or a cached hub id, never
    downloaded); the model in eval mode on ``device``. A failure is a ``WeightsError`` naming ``what``."""
    import torch

    try:
        loaded = preprocessor.from_pretrained(path, local_files_only=True)
        net = model.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load {what} from {path}: {exc}") from exc
    net.to(torch.device(device)).eval()
    return loaded, net
