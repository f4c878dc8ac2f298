"""What ``knnvc info`` reports: versions, device, caches and which weights are cached. No network."""

from __future__ import annotations

import platform
from typing import Any


def system_info(device: str = "auto") -> dict[str, Any]:
    """A JSON-able description of this installation."""
    import torch
    import transformers

    from knnvc.options import DEFAULT_VOCODER, DEFAULT_WAVLM, package_version
    from knnvc.runtime.devices import resolve_device
    from knnvc.weights import hub

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rows = []
    for entry, cached, path in hub.cached_status():
        digest, how = hub.known_sha256(entry) if entry.source == "url" else (None, "")
        rows.append({
            "name": entry.name,
            "kind": entry.kind,
            "cached": cached,
            "path": str(path) if path else None,
            "source": entry.location,
            "sha256": digest,
            # "published" (pinned), "recorded" (unpinned: the hash seen at its first download here), or None
            "sha256_from": how or None,
            "pinned": how == "published" if entry.source == "url" else None,
        })
    defaults = {}
    for kind, name in (("wavlm", DEFAULT_WAVLM), ("vocoder", DEFAULT_VOCODER)):
        found = hub.local_default(name)  # KNNVC_WAVLM / KNNVC_VOCODER
        defaults[kind] = {"weights": found[0], "from": found[1]} if found else {"weights": name, "from": None}
    return {
        "knnvc": package_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(resolve_device(device)),
        "cuda": cuda,
        "threads": torch.get_num_threads(),
        "knnvc_cache": str(hub.cache_dir()),
        "hf_cache": str(hub.hf_cache_dir()),
        "offline": hub.is_offline(),
        # the weights a command uses when --wavlm / --vocoder are not given, and the variable that chose them
        "defaults": defaults,
        "weights": rows,
    }
