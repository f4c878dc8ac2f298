"""The one registry of published weights: where each lives, where it is cached, how it is fetched and checked.

Vocoders (and the original-format ``WavLM-Large.pt``) are single ``.pt`` files cached under :func:`cache_dir`,
checked against their published sha256, or against the one recorded at their first download where none is
published; WavLM comes from the Hugging Face Hub and is cached in the Hugging Face cache. Every name also
accepts a local path. The transfers themselves are ``knnvc.weights.fetch``; turning files into models is
``knnvc.weights.formats``. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from knnvc.errors import WeightsError
from knnvc.options import DEFAULT_VOCODER, DEFAULT_WAVLM
from knnvc.progress import OnProgress
from knnvc.weights import fetch, integrity

logger = logging.getLogger(__name__)

_RELEASE = "https://github.com/bshall/knn-vc/releases/download/v0.1"
_TRUTHY = {"1", "true", "yes", "on"}
_SAFETENSORS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_PYTORCH_BIN = ["config.json", "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint. ``location`` is a hub repo id (source "hub") or a URL (source "url").

    ``sha256`` is the published hash of a URL file (None: recorded at its first download instead);
    ``default``: fetched by ``download_all()`` when no names are given.
    """

    name: str
    kind: Literal["wavlm", "vocoder"]
    source: Literal["hub", "url"]
    location: str
    filename: str | None
    description: str
    sha256: str | None = None
    default: bool = True


# Published sha256 values: those of kNN-VC's own release (v0.1), as its code pins them.
_ENTRIES = (
    WeightsEntry(DEFAULT_WAVLM, "wavlm", "hub", DEFAULT_WAVLM, None, "WavLM-Large encoder (layers 1-6 run)"),
    WeightsEntry("wavlm-original", "wavlm", "url", f"{_RELEASE}/WavLM-Large.pt", "WavLM-Large.pt",
                 "WavLM-Large in the original format, as kNN-VC publishes it (same weights as the hub's)",
                 "6fb4b3c3e6aa567f0a997b30855859cb81528ee8078802af439f7b2da0bf100f", default=False),
    WeightsEntry(DEFAULT_VOCODER, "vocoder", "url", f"{_RELEASE}/prematch_g_02500000.pt",
                 "prematch_g_02500000.pt", "HiFi-GAN trained on prematched layer-6 features (default)",
                 "f924c7632c6eaf99004386d62293e124419e33582573552a6ae976eb88ed2dd5"),
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


def checkpoint_problem(path: Path, sha256: str | None = None) -> str | None:
    """Why ``path`` is not the expected checkpoint: its sha256 when given, else its zip structure; or None."""
    return integrity.problem(path, sha256)


def known_sha256(entry: WeightsEntry) -> tuple[str | None, str]:
    """The sha256 a registry file must have, and how it is known: "published", "recorded" (at its first
    download here; see ``knnvc.weights.integrity``) or "" (never downloaded here, nothing published)."""
    if entry.sha256 is not None:
        return entry.sha256.lower(), "published"
    recorded = integrity.recorded(cache_dir(), _filename(entry))
    return (recorded, "recorded") if recorded else (None, "")


def _filename(entry: WeightsEntry) -> str:
    return entry.filename or entry.location.rsplit("/", 1)[-1]


def _ensure_file(entry: WeightsEntry, offline: bool, progress: OnProgress | None) -> Path:
    """The cached file of a URL entry, verified (sha256 when known); fetched (again, when bad) unless offline."""
    dest = cache_dir() / _filename(entry)
    expected, _ = known_sha256(entry)
    how = (f"run `knnvc download {entry.name}` on a machine with internet and copy {dest} here, "
           f"or pass a local path")
    if dest.is_file():
        problem = checkpoint_problem(dest, expected)
        if problem is None:
            return dest
        dest.unlink(missing_ok=True)
        if offline:
            raise WeightsError(f"cached file {dest} was corrupt ({problem}) and is deleted; offline mode is on: {how}")
        logger.warning("cached file %s was corrupt (%s); deleted it, downloading it again", dest, problem)
    elif offline:
        raise WeightsError(f"{entry.name} weights are not cached ({dest}) and offline mode is on: {how} "
                           f"(the file is at {entry.location})")
    # With a hash known, the hash is the check; otherwise the zip structure, and the hash is recorded.
    check = None if expected else integrity.zip_problem
    path = fetch.download_file(entry.location, dest, sha256=expected, progress=progress, check=check)
    if expected is None:
        integrity.record(path)
    else:
        integrity.checked(path, expected)
    return path


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
    entry = _url_entry(text, "wavlm")
    if entry is not None:
        return _ensure_file(entry, is_offline(offline), None)
    repo_id = ALIASES.get(text.lower(), text)
    return _hub_snapshot(repo_id, is_offline(offline))


def _url_entry(name: str, kind: str) -> WeightsEntry | None:
    """The registry's URL-sourced entry of ``kind`` called ``name`` (case-insensitive), or None."""
    entry = REGISTRY.get(ALIASES.get(name.lower(), name.lower()))
    return entry if entry is not None and entry.kind == kind and entry.source == "url" else None


def _hub_snapshot(repo_id: str, offline: bool) -> Path:
    """The cached snapshot folder of ``repo_id`` with config.json and weights (safetensors preferred)."""
    folder = fetch.snapshot(repo_id, _SAFETENSORS, offline, hf_cache_dir())
    if not any(folder.glob("*.safetensors")) and not offline:
        folder = fetch.snapshot(repo_id, _PYTORCH_BIN, offline, hf_cache_dir())
    if not (folder / "config.json").is_file() or not _weights_in(folder):
        how = "run `knnvc download` with internet" if offline else "it has no config.json and weights; retry"
        raise WeightsError(f"hub snapshot of {repo_id} in {folder} is incomplete: {how}")
    return folder


def download_all(
    names: str | Iterable[str] | None = None,
    *,
    progress: OnProgress | None = None,
) -> dict[str, Path | str]:
    """Fetch registry entries into their caches; returns name -> local location. ``progress`` gets ``download``
    events naming each file as its bytes arrive.

    ``names``: one name, several, or None for every entry fetched by default (all but ``wavlm-original``,
    a second copy of the hub's WavLM). ``download_all(["prematched"])`` fetches the default vocoder.

    Raises:
        WeightsError: an unknown name, offline mode on (``KNNVC_OFFLINE``/``HF_HUB_OFFLINE``), or a failed
            download (with what to do about it).
    """
    if isinstance(names, str):
        names = [names]
    entries = [get_entry(n) for n in names] if names is not None else [e for e in REGISTRY.values() if e.default]
    if is_offline():
        flags = [v for v in ("KNNVC_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").strip().lower() in _TRUTHY]
        raise WeightsError(
            f"downloading needs the network, but offline mode is on ({', '.join(flags)}): unset it and retry, "
            f"or copy {cache_dir()} and {hf_cache_dir()} from a machine that has the weights"
        )
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
        elif checkpoint_problem(cache_dir() / _filename(entry), known_sha256(entry)[0]) is None:
            where = cache_dir() / _filename(entry)
        status.append((entry, where is not None, where))
    return status
