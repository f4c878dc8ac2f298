"""The one registry of published weights: where each lives, where it is cached, how it is fetched and checked.

Vocoders are single ``.pt`` files cached under :func:`cache_dir`; WavLM comes from the Hugging Face Hub and is
cached in the Hugging Face cache. Every name also accepts a local path. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from knnvc.constants import DEFAULT_VOCODER, DEFAULT_WAVLM
from knnvc.errors import WeightsError
from knnvc.progress import OnProgress, Progress, report

logger = logging.getLogger(__name__)


_RELEASE = "https://github.com/bshall/knn-vc/releases/download/v0.1"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_TRUTHY = {"1", "true", "yes", "on"}
_SAFETENSORS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_HTTP_CLIENT_ERRORS = (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx2", "HTTPError"))
_PYTORCH_BIN = ["config.json", "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint. ``location`` is a hub repo id (source "hub") or a URL (source "url")."""

    name: str
    kind: Literal["wavlm", "vocoder"]
    source: Literal["hub", "url"]
    location: str
    filename: str | None
    description: str
    sha256: str | None = None


_ENTRIES = (
    WeightsEntry(DEFAULT_WAVLM, "wavlm", "hub", DEFAULT_WAVLM, None, "WavLM-Large encoder (layers 1-6 run)"),
    WeightsEntry(DEFAULT_VOCODER, "vocoder", "url", f"{_RELEASE}/prematch_g_02500000.pt",
                 "prematch_g_02500000.pt", "HiFi-GAN trained on prematched layer-6 features (default)"),
    WeightsEntry("regular", "vocoder", "url", f"{_RELEASE}/g_02500000.pt", "g_02500000.pt",
                 "HiFi-GAN trained on plain layer-6 features"),
)
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}
ALIASES: dict[str, str] = {"wavlm-large": DEFAULT_WAVLM}


def cache_dir() -> Path:
    """``$KNNVC_CACHE``, else ``$XDG_CACHE_HOME/knnvc``, else ``~/.cache/knnvc``. Not created here."""
    if os.environ.get("KNNVC_CACHE"):
        return Path(os.environ["KNNVC_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "knnvc"
    return Path.home() / ".cache" / "knnvc"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (as huggingface_hub would)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_offline(offline: bool | None = None) -> bool:
    """An explicit ``offline`` wins; else ``KNNVC_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes."""
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("KNNVC_OFFLINE", "HF_HUB_OFFLINE"))


LOCAL_DEFAULTS = {DEFAULT_WAVLM: "KNNVC_WAVLM", DEFAULT_VOCODER: "KNNVC_VOCODER"}
"""Environment variables that put local weights (a path, or another name) in place of the default ones."""


def with_local_default(name: str | Path) -> str | Path:
    """``name``, unless it is a default (``microsoft/wavlm-large``, ``prematched``) that ``$KNNVC_WAVLM`` or
    ``$KNNVC_VOCODER`` replaces: then that variable's value. For machines without the Hub: set them once."""
    if isinstance(name, str):
        key = ALIASES.get(name.lower(), name.lower())
        for default, variable in LOCAL_DEFAULTS.items():
            if key == default.lower() and os.environ.get(variable):
                return os.environ[variable]
    return name


def get_entry(name: str, kind: str | None = None) -> WeightsEntry:
    """The registry entry for a name or alias (case-insensitive), of ``kind`` when given."""
    key = ALIASES.get(name.lower(), name.lower())
    entry = next((e for n, e in REGISTRY.items() if n.lower() == key), None)
    if entry is None or (kind is not None and entry.kind != kind):
        valid = sorted(n for n, e in REGISTRY.items() if kind is None or e.kind == kind)
        what = f"{kind} " if kind else ""
        raise WeightsError(f"unknown {what}weights {name!r} (not a local path); valid: {', '.join(valid)}")
    return entry


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(path: Path, sha256: str | None = None) -> str | None:
    """Why ``path`` is not a loadable zip-format torch checkpoint (cheap: zip directory only), or None."""
    try:
        if not zipfile.is_zipfile(path):
            return "not a zip-format torch checkpoint (truncated or not a checkpoint)"
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError) as exc:
        return f"unreadable zip archive ({exc})"
    if not infos or max(i.header_offset + i.compress_size for i in infos) > size:
        return "archive members extend past the end of the file (truncated)"
    if sha256 is not None and sha256_of(path).lower() != sha256.lower():
        return "sha256 does not match the registry"
    return None


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: OnProgress | None = None,
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Stream ``url`` into ``dest`` atomically: a temp file beside it; Content-Length, ``sha256`` and
    ``check`` (returns a problem or None) verified; fsync; ``os.replace``. A failure leaves no ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, progress, dest.name)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest != sha256.lower():
            raise WeightsError(f"sha256 mismatch for {url}: expected {sha256}, got {digest}")
        problem = check(tmp) if check is not None else None
        if problem is not None:
            raise WeightsError(f"downloaded {url} is not a valid checkpoint: {problem}")
        os.replace(tmp, dest)
    except OSError as exc:
        raise WeightsError(f"cannot write {dest} while downloading {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)
    logger.info("downloaded %s to %s", url, dest)
    return dest


def _stream(url: str, out: Any, progress: OnProgress | None, name: str) -> str:
    """Copy the body of ``url`` into ``out`` in chunks; return its sha256. Network errors -> WeightsError."""
    request = urllib.request.Request(url, headers={"User-Agent": "knnvc"})
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            report(progress, Progress("download", 0, total, name=name))
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                report(progress, Progress("download", done, total, name=name))
    except urllib.error.HTTPError as exc:
        raise WeightsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise WeightsError(f"cannot reach {url}: {exc.reason}") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise WeightsError(f"download of {url} failed after {done} bytes: {exc!r}") from exc
    if total is not None and done != total:
        raise WeightsError(f"download of {url} truncated: got {done} of {total} bytes")
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it (the rename is atomic either way)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)


def _ensure_file(entry: WeightsEntry, offline: bool, progress: OnProgress | None) -> Path:
    """The cached file of a URL entry, verified; fetched (again, when corrupt) unless offline."""
    dest = cache_dir() / (entry.filename or entry.location.rsplit("/", 1)[-1])
    how = f"fetch {entry.location} or run `knnvc download` on a machine with internet, or pass a local path"
    if dest.is_file():
        problem = checkpoint_problem(dest, entry.sha256)
        if problem is None:
            return dest
        if offline:
            raise WeightsError(f"cached file {dest} is corrupt ({problem}); delete it, then {how}")
        logger.warning("cached file %s is corrupt (%s); downloading it again", dest, problem)
        dest.unlink(missing_ok=True)
    elif offline:
        raise WeightsError(f"{entry.name} weights are not cached ({dest}) and offline mode is on: {how}")
    return download_file(entry.location, dest, sha256=entry.sha256, progress=progress,
                         check=checkpoint_problem)


def _step(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def pick_generator(folder: Path) -> Path:
    """The generator checkpoint in a folder of ``*.pt`` files (not recursive).

    Rule: a single ``.pt`` is taken. Otherwise the candidates are generator files (``g_*``, ``*_g_*``) and
    ``*best*`` files (``do_*`` optimiser/discriminator states are never taken); a ``*best*`` file wins, else
    the highest step number in the name (``g_02500000``), then the newest file.
    """
    files = sorted(p for p in folder.glob("*.pt") if p.is_file())
    if len(files) == 1:
        return files[0]
    gens = [p for p in files if re.match(r"(.*_)?g_", p.name) or "best" in p.name.lower()]
    if not gens:
        raise WeightsError(f"no generator checkpoint (g_*.pt or *best*.pt) in {folder}")
    best = [p for p in gens if "best" in p.name.lower()]
    return max(best or gens, key=lambda p: (_step(p), p.stat().st_mtime))


def resolve_vocoder(
    name_or_path: str | Path, *, offline: bool | None = None, progress: OnProgress | None = None
) -> Path:
    """A local ``.pt`` file or folder (see :func:`pick_generator`), or a registry name, fetched if missing."""
    name_or_path = with_local_default(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return pick_generator(path)
    if path.is_file():
        return path
    return _ensure_file(get_entry(str(name_or_path), "vocoder"), is_offline(offline), progress)


def _weights_in(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or text.endswith((".pt", ".pth", ".bin", ".ckpt"))


def resolve_wavlm(id_or_path: str | Path, *, offline: bool | None = None) -> Path:
    """A local original-format ``.pt`` file, a local HF folder, or a hub id's snapshot."""
    id_or_path = with_local_default(id_or_path)
    path = Path(id_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / "config.json").is_file() or not _weights_in(path):
            raise WeightsError(f"{path} is not a Hugging Face model folder (needs config.json and weights)")
        return path
    text = str(id_or_path)
    if isinstance(id_or_path, Path) or _looks_like_path(text):
        raise WeightsError(f"WavLM weights {text}: no such file or folder")
    repo_id = ALIASES.get(text.lower(), text)
    return _hub_snapshot(repo_id, is_offline(offline))


def _hub_snapshot(repo_id: str, offline: bool) -> Path:
    """The cached snapshot folder of ``repo_id`` with config.json and weights (safetensors preferred)."""
    folder = _snapshot(repo_id, _SAFETENSORS, offline)
    if not any(folder.glob("*.safetensors")) and not offline:
        folder = _snapshot(repo_id, _PYTORCH_BIN, offline)
    if not (folder / "config.json").is_file() or not _weights_in(folder):
        how = "run `knnvc download` with internet" if offline else "it has no config.json and weights"
        raise WeightsError(f"hub snapshot of {repo_id} in {folder} is incomplete: {how}")
    return folder


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection errors, plus those of whichever HTTP client huggingface_hub uses (imported by then)."""
    libs = [getattr(sys.modules[m], n, None) for m, n in _HTTP_CLIENT_ERRORS if m in sys.modules]
    return (ConnectionError, TimeoutError, *(e for e in libs if isinstance(e, type)))


def _snapshot(repo_id: str, patterns: list[str], offline: bool) -> Path:
    import huggingface_hub
    from huggingface_hub import utils as hf

    where = hf_cache_dir()
    how = f"run `knnvc download` on a machine with internet, or pass a local WavLM path (cache: {where})"
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, cache_dir=where, allow_patterns=patterns, local_files_only=offline
        )
    except hf.HFValidationError as exc:
        raise WeightsError(f"WavLM {repo_id!r} is neither a local path nor a valid hub id: {exc}") from exc
    except (hf.RepositoryNotFoundError, hf.GatedRepoError) as exc:
        raise WeightsError(f"hub repo {repo_id} not found or not accessible (gated/private)") from exc
    except hf.RevisionNotFoundError as exc:
        raise WeightsError(f"hub repo {repo_id} has no such revision: {exc}") from exc
    except hf.LocalEntryNotFoundError as exc:
        state = "offline mode is on" if offline else "the Hub could not be reached"
        raise WeightsError(f"{repo_id} is not (fully) in the Hugging Face cache and {state}: {how}") from exc
    except hf.HfHubHTTPError as exc:
        raise WeightsError(f"Hugging Face Hub error for {repo_id}: {exc}") from exc
    except _network_errors() as exc:
        raise WeightsError(f"cannot reach the Hugging Face Hub for {repo_id} ({exc!r}): {how}") from exc
    return Path(folder)


def download_all(
    *,
    names: Iterable[str] | None = None,
    progress: OnProgress | None = None,
) -> dict[str, Path | str]:
    """Fetch every registry entry (or ``names``) into its cache; returns name -> local location.

    ``progress`` gets ``download`` events naming each file as its bytes arrive.
    """
    entries = [get_entry(n) for n in names] if names is not None else list(REGISTRY.values())
    done: dict[str, Path | str] = {}
    for entry in entries:
        if entry.source == "hub":
            done[entry.name] = _hub_snapshot(entry.location, offline=False)
        else:
            done[entry.name] = _ensure_file(entry, offline=False, progress=progress)
    return done


def cached_status() -> list[tuple[WeightsEntry, bool, Path | None]]:
    """For each registry entry: is it cached (and readable), and where. Never touches the network."""
    status: list[tuple[WeightsEntry, bool, Path | None]] = []
    for entry in REGISTRY.values():
        where: Path | None = None
        if entry.source == "hub":
            with contextlib.suppress(WeightsError):
                where = _hub_snapshot(entry.location, offline=True)
        elif entry.filename is not None and checkpoint_problem(cache_dir() / entry.filename) is None:
            where = cache_dir() / entry.filename
        status.append((entry, where is not None, where))
    return status


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` on CPU; the only place knnvc unpickles anything."""
    import torch

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused to load: it holds pickled code, not only tensors, or is corrupt "
            f"({_first_line(exc)}); use a checkpoint of plain tensors from a source you trust"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path}: not a readable torch checkpoint, truncated or corrupt ({_first_line(exc)}); "
            "download it again (delete the file first)"
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(state).__name__}; check the file")
    return state


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's are paragraphs)."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
