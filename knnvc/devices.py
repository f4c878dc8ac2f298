"""Devices and precisions: what ``auto`` means, and clear errors for devices that are not there."""

from __future__ import annotations

import torch

from knnvc.errors import DeviceError, UsageError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent raises ``DeviceError``."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} was asked for, but torch sees no CUDA GPU; use device='cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={name!r} was asked for, but this machine has no MPS backend; use device='cpu'")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"device={name!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        seen = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
        raise DeviceError(f"device={name!r} was asked for, but torch sees {count} CUDA GPU(s): {seen}")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU/MPS and bf16 on CUDA; half precisions are refused on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not a precision: use 'auto', 'fp32', 'bf16' or 'fp16'")
    if device.type == "cpu" and precision != "fp32":
        raise UsageError(f"precision={precision!r} needs a GPU; on CPU use precision='fp32'")
    return PRECISIONS[precision]
