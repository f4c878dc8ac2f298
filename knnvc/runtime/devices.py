"""Devices and precisions: what ``auto`` means, native bf16 on CPUs, fp32 that really is fp32, clear errors.

``auto`` picks a lower precision only where it was measured to keep kNN-VC's choices: on the fixtures and on
the full-size random models, its k nearest neighbours must equal fp32's on at least 95 % of frames (``python -m
bench`` measures it and writes it to ``bench/results/*.json`` as ``precision_agreement``, beside the output SNR).
On a CPU, ``auto`` picks bf16 only when the processor computes it natively (AMX or AVX512-BF16); elsewhere bf16 is
emulated and slower than fp32, so an explicit ``bf16`` there runs with one warning that says so.

``tune_cpu`` sets a process up for CPU inference once: intra-op threads no more than the physical cores the
process may use, and glibc's malloc keeping freed blocks for reuse (each call of the networks allocates hundreds of
MB of activations; returned to the system, every page would fault again on the next call).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from knnvc.errors import DeviceError, UsageError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
AUTO_PRECISION = {"cuda": "fp32", "cpu": "fp32", "mps": "fp32"}
"""What ``auto`` picks per device type; a lower precision only where it agrees with fp32 on >= 95 % of kNN choices
on the fixtures and on the full-size random models. Measured (bench/results/cpu-x86_64-2core.json): bf16 agrees on
81 % (fixtures) and 87 % (full size), output SNR 54 and 28 dB, so ``auto`` is fp32 everywhere until a measurement
says otherwise; ``--precision bf16`` stays available (on CPU where it is native)."""


AUTO_BATCH_SIZE = {"cpu": 1}  # else 8
"""Waveforms (or windows) computed together when ``batch_size`` is not given. On a CPU batching costs: the 20
clips of ``python -m bench`` (full-size models, 2 cores) vocode in 18.6 s one at a time and 26.0 s in batches of 4
(fp32; bf16 10.4 s and 12.1 s), and encode in 5.5 s against 6.7 s in batches of 16 (bf16). A GPU wants batches."""


def auto_batch_size(device: torch.device) -> int:
    """The batch size ``PipelineSettings(batch_size=None)`` means on ``device``: 1 on a CPU, 8 elsewhere."""
    return AUTO_BATCH_SIZE.get(device.type, 8)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AMX-BF16 or AVX512-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


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
    """The networks' dtype for ``precision`` on ``device`` (matching is always fp32).

    ``auto``: ``AUTO_PRECISION`` for the device (never bf16 on a CPU without native bf16). On CPU, fp16 is refused,
    and bf16 without native support runs emulated, with one warning logged that it will be slower than fp32.
    """
    if precision == "auto":
        precision = AUTO_PRECISION.get(device.type, "fp32")
        if device.type == "cpu" and not cpu_has_native_bf16():
            precision = "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not a precision: use 'auto', 'fp32', 'bf16' or 'fp16'")
    if device.type == "cpu" and precision == "fp16":
        raise UsageError(
            "precision='fp16' needs a GPU; on CPU use precision='fp32', or 'bf16' where the CPU has AMX or AVX512-BF16"
        )
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        warn_emulated_bf16()
    return PRECISIONS[precision]


@functools.cache
def warn_emulated_bf16() -> None:
    """Log, once per process, that bf16 on this CPU is emulated and slower than fp32."""
    log.warning(
        "precision='bf16' on this CPU is emulated (no AMX or AVX512-BF16) and will be slower than fp32; "
        "precision='auto' picks fp32 here"
    )


MALLOC_MMAP_THRESHOLD = 128 * 2**20
"""Bytes: blocks up to this size come from malloc's heap and are reused once freed (glibc's default maps each
block over 128 KiB to fresh pages, then 32 MiB once it adapts: WavLM's conv stack allocates 65 MB per 10 s).
Larger blocks (an hour of audio is 230 MB) are still mapped and given back, so long inputs stay in flat memory."""
MALLOC_TRIM_THRESHOLD = 512 * 2**20
"""Bytes of freed memory at the heap's top kept for reuse before malloc gives any back to the system."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def physical_cores() -> int:
    """Physical cores this process may run on: its CPU affinity counted by core (SMT siblings once), capped by
    a cgroup CPU quota (a container's ``cpu.max``); ``os.cpu_count()`` where Linux's topology files are absent."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add((str(cpu), ""))
    count = len(cores) or 1
    quota = _cgroup_cpus()
    return max(1, min(count, quota)) if quota else count


def _cgroup_cpus() -> int | None:
    """CPUs a cgroup v2 quota allows (``cpu.max`` "quota period", rounded up); None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return math.ceil(int(quota) / int(period))


@functools.cache
def tune_cpu() -> None:
    """Set this process up for CPU inference, once: intra-op threads no more than ``physical_cores`` (lowered
    only, so a count the caller chose, or OMP_NUM_THREADS, is kept), and malloc keeping freed blocks
    (``keep_freed_memory``). Worker threads of a batch run below the compute (``knnvc.batch.workers``)."""
    cores = physical_cores()
    if torch.get_num_threads() > cores and "OMP_NUM_THREADS" not in os.environ:
        log.info("torch intra-op threads %d -> %d (the physical cores)", torch.get_num_threads(), cores)
        torch.set_num_threads(cores)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``MALLOC_MMAP_THRESHOLD`` for reuse (True when it agreed).

    A warm 10 s WavLM call otherwise faults in about 160,000 fresh pages (~640 MB): measured on a 2-core AMD EPYC,
    writing 640 MB of fresh pages took 1.3 s against 0.5 s for reused ones under load. Peak memory is unchanged;
    memory freed stays with the process for its next call. A no-op (False) off glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    agreed = bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )
    log.debug("malloc keeps freed blocks up to %d bytes: %s", MALLOC_MMAP_THRESHOLD, agreed)
    return agreed


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``."""
    return {v: k for k, v in PRECISIONS.items()}[dtype]


@contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """While the block runs, fp32 on CUDA means fp32: TF32 is off for matmuls and convolutions (then restored).

    Nothing changes for other devices or dtypes. Reads only host-side flags (no device sync).
    """
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
