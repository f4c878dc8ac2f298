"""From a name to verified weights on disk: the registry of published weights, their caches, downloads and checks.

Vocoders (and the original-format ``WavLM-Large.pt``) are single ``.pt`` files from kNN-VC's release, cached under
:func:`cache_dir`; WavLM comes from the Hugging Face Hub (``huggingface_hub``) into its own cache. Every name also
accepts a local path. Turning files into models is ``knnvc.weights.formats``. Nothing here runs at import time.

Release files are fetched by ``pooch``'s ``HTTPDownloader`` (requests: a timeout, and a connection that breaks off
mid-file is an error) straight into the one atomic writer, ``vocoder.atomic.write_atomically``, whose check verifies
the sha256 before the file takes its final name: a failed or mismatching download leaves nothing. Every download
(release files and Hub snapshots) is tried again after a transient failure (see ``_transient``).

Each verified file gets a sidecar ``<file>.sha256`` in ``sha256sum`` format, whose modification time is set to the
file's: while the file keeps that time, the sidecar vouches for it and a 1.2 GB WavLM is not hashed again at every
start. For ``regular`` (``g_02500000.pt``), which has no published hash, that sidecar is also the record of the hash
seen at its first download (trust on first use), which every later use and download is checked against.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

from knnvc import files
from knnvc.errors import WeightsError
from knnvc.options import DEFAULT_VOCODER, DEFAULT_WAVLM
from knnvc.progress import OnProgress, Progress, report
from vocoder import atomic

logger = logging.getLogger(__name__)

_RELEASE = "https://github.com/bshall/knn-vc/releases/download/v0.1"
_TRUTHY = {"1", "true", "yes", "on"}
_SAFETENSORS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_PYTORCH_BIN = ["config.json", "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
RETRY_WAITS_S: tuple[float, ...] = (1.0, 4.0)
"""Seconds waited before each new try of a download that failed transiently: three tries in all."""


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint. ``location`` is a hub repo id (source "hub") or a URL (source "url").

    ``sha256`` is the published hash of a URL file (None: unpinned, recorded at its first download instead);
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


# -- where things live ----------------------------------------------------------------------------------------


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

_LOCAL_KINDS = {"wavlm": "WavLM (an HF model folder or WavLM-Large.pt)", "vocoder": "generator checkpoint"}


def _default_variable(name: str) -> str | None:
    """The variable that replaces ``name`` when ``name`` is a default (``microsoft/wavlm-large``, ``prematched``)."""
    key = ALIASES.get(name.lower(), name.lower())
    return next((v for default, v in LOCAL_DEFAULTS.items() if key == default.lower()), None)


def local_default(name: str) -> tuple[str, str] | None:
    """``(value, variable)`` when ``name`` is a default that ``$KNNVC_WAVLM`` or ``$KNNVC_VOCODER`` replaces now
    (read at each call), else None."""
    variable = _default_variable(name)
    return (os.environ[variable], variable) if variable and os.environ.get(variable) else None


def with_local_default(name: str | Path) -> str | Path:
    """``name``, unless it is a default (``microsoft/wavlm-large``, ``prematched``) that ``$KNNVC_WAVLM`` or
    ``$KNNVC_VOCODER`` replaces: then that variable's value. For machines without the Hub: set them once."""
    found = local_default(name) if isinstance(name, str) else None
    return found[0] if found else name


def _local_ways(kind: str, name: str) -> str:
    """How to use local ``kind`` weights in place of ``name`` (docs/weights.md): the variable that replaces it
    when it is a default, or a path given directly (``wavlm=PATH``; the CLI shows ``--wavlm PATH``)."""
    what = _LOCAL_KINDS[kind]
    variable = _default_variable(name)
    if variable is None:
        return f"or pass a local {what} ({kind}=PATH)"
    return f"set {variable} to a local {what}, or pass one ({kind}=PATH)"


def get_entry(name: str, kind: str | None = None) -> WeightsEntry:
    """The registry entry for a name or alias (case-insensitive), of ``kind`` when given."""
    key = ALIASES.get(name.lower(), name.lower())
    entry = next((e for n, e in REGISTRY.items() if n.lower() == key), None)
    if entry is None or (kind is not None and entry.kind != kind):
        valid = sorted(n for n, e in REGISTRY.items() if kind is None or e.kind == kind)
        what = f"{kind} " if kind else ""
        raise WeightsError(f"unknown {what}weights {name!r} (not a local path); valid: {', '.join(valid)}")
    return entry


def _filename(entry: WeightsEntry) -> str:
    return entry.filename or entry.location.rsplit("/", 1)[-1]


# -- checks: published or recorded sha256, the sidecar memo, the zip structure ---------------------------------


def sidecar(path: Path) -> Path:
    """The ``<file>.sha256`` beside ``path``: its verified hash (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def _sidecar_digest(path: Path) -> str | None:
    try:
        words = sidecar(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0].lower() if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]) else None


def _vouch(path: Path, digest: str) -> None:
    """Write the sidecar of ``path`` (whose sha256 was just computed) and give it the file's modification time.

    Best effort: a cache that cannot keep it only costs a new hash next time (and, for an unpinned file, its
    record: the next download is trusted anew).
    """
    try:
        mtime = path.stat().st_mtime_ns
        atomic.write_atomically(sidecar(path), f"{digest}  {path.name}\n".encode())
        os.utime(sidecar(path), ns=(mtime, mtime))
    except OSError as exc:
        logger.warning("cannot write %s (%s); the file will be hashed again next time", sidecar(path), exc)


def _vouched(path: Path, expected: str) -> bool:
    """Whether the sidecar vouches for ``path`` as it is now: same hash, and the file's time unchanged since."""
    try:
        same_time = path.stat().st_mtime_ns == sidecar(path).stat().st_mtime_ns
    except OSError:
        return False
    return same_time and _sidecar_digest(path) == expected


def known_sha256(entry: WeightsEntry) -> tuple[str | None, str]:
    """The sha256 a registry file must have, and how it is known: "published" (pinned here), "recorded" (unpinned:
    the hash seen at its first download here, in its ``.sha256`` sidecar) or "" (unpinned, never downloaded here)."""
    if entry.sha256 is not None:
        return entry.sha256.lower(), "published"
    recorded = _sidecar_digest(cache_dir() / _filename(entry))
    return (recorded, "recorded") if recorded else (None, "")


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact zip-format torch checkpoint (cheap: the zip directory only), or None."""
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
    return None


def _problem(path: Path, expected: str | None) -> str | None:
    """Why the cached ``path`` is not the file expected, or None: its sha256 against ``expected`` when known (not
    hashed again while its sidecar vouches for it), else its zip structure."""
    if expected is None:
        return _zip_problem(path)
    if _vouched(path, expected):
        return None
    try:
        got = files.sha256(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if got != expected:
        return f"its sha256 is {got}, not the expected {expected}"
    _vouch(path, got)
    return None


# -- downloads ------------------------------------------------------------------------------------------------

T = TypeVar("T")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures and timeouts: the built-in ones and those of the HTTP clients in use (imported by then:
    requests for pooch; httpx or httpx2 for huggingface_hub, by version)."""
    names = (("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout"),
             ("requests.exceptions", "ChunkedEncodingError"), ("httpx", "TransportError"),
             ("httpx2", "TransportError"))  # fmt: skip
    found = [getattr(sys.modules[m], n, None) for m, n in names if m in sys.modules]
    return (ConnectionError, TimeoutError, *(e for e in found if isinstance(e, type)))


def _transient(exc: BaseException) -> bool:
    """Whether a failed download is worth another try: a connection refused, reset, broken off or timed out, or an
    HTTP 5xx (or 408/429), itself or as the cause of a library's error. Never a 404, a hash mismatch, offline mode
    or a local problem."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "OfflineModeIsEnabled":  # huggingface_hub's refusal: a ConnectionError
            return False
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(status, int):
            return status >= 500 or status in (408, 429)
        if isinstance(cause, _network_errors()):
            return True
        cause = cause.__cause__
    return False


def _with_retries(attempt: Callable[[], T], what: str) -> T:
    """``attempt()``, tried again after each wait of ``RETRY_WAITS_S`` while it fails transiently."""
    waits = list(RETRY_WAITS_S)
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not waits or not _transient(exc):
                raise
            wait = waits.pop(0)
            logger.warning("%s failed (%s); trying again in %g s", what, _reason(exc), wait)
            time.sleep(wait)


def _reason(exc: BaseException) -> str:
    """One line on a network failure."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(response, 'reason', '') or ''}".strip()
    if type(exc).__name__ == "ChunkedEncodingError":
        return "the connection broke off mid-file: truncated"
    return " ".join(str(exc).split()) or type(exc).__name__


class _Events:
    """The progress bar that pooch's ``HTTPDownloader`` drives (it sets ``total``, calls ``update`` per chunk, then
    ``reset`` and ``update(total)`` to fill it, then ``close``), as ``download`` events for ``name``."""

    def __init__(self, progress: OnProgress, name: str) -> None:
        self.progress, self.name, self.total, self.done = progress, name, 0, 0

    def update(self, n: int) -> None:
        """``n`` more bytes arrived (pooch counts whole chunks: capped at the length announced)."""
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if n:
            report(self.progress, Progress("download", self.done, self.total or None, name=self.name))

    def reset(self) -> None:
        """Pooch's refill at the end: the next ``update`` brings the total."""
        if self.total:
            self.done = 0

    def close(self) -> None:
        """Nothing to release."""


def _download(url: str, dest: Path, expected: str | None, progress: OnProgress | None, local: str) -> str:
    """Fetch ``url`` into ``dest``, checked (``expected`` sha256, else an intact zip) before it takes that name;
    retried on transient failures. Returns the sha256 of the bytes kept. ``local``: how to use local weights
    instead (``_local_ways``), said when the download fails.

    Raises:
        WeightsError: a failure (after the retries), a mismatch, or a cache that cannot be written; ``dest`` is
            then left as it was.
    """
    import pooch
    import requests

    digest = ""

    def fetch(out: BinaryIO) -> None:
        report(progress, Progress("download", 0, None, name=dest.name))
        bar = _Events(progress, dest.name) if progress is not None else False
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=_TIMEOUT_S,
                                          headers={"User-Agent": "knnvc"})  # fmt: skip
        downloader(url, out, None)

    def verify(tmp: Path) -> None:
        nonlocal digest
        digest = files.sha256(tmp)
        if expected is not None and digest != expected:
            raise WeightsError(
                f"sha256 mismatch for {url}: expected {expected}, got {digest}; the download was deleted. "
                "Retry; if it happens again the file at that address has changed: use a local copy you trust"
            )
        if expected is None and (problem := _zip_problem(tmp)) is not None:
            raise WeightsError(f"downloaded {url} is not a valid checkpoint ({problem}) and was deleted; retry")

    try:
        _with_retries(lambda: atomic.write_atomically(dest, fetch, check=verify), f"download of {url}")
    except requests.RequestException as exc:  # before OSError, which it is
        tries = f" (tried {len(RETRY_WAITS_S) + 1} times)" if _transient(exc) else ""
        raise WeightsError(
            f"download of {url} failed{tries}: {_reason(exc)}; check the internet connection (or proxy: "
            f"HTTPS_PROXY) and retry, fetch {url} yourself and save it as {dest}, {local}"
        ) from exc
    except OSError as exc:
        why = files.write_error(dest, exc, "save the download as")
        raise WeightsError(f"{why} (the cache folder is $KNNVC_CACHE, else ~/.cache/knnvc)") from exc
    logger.info("downloaded %s to %s", url, dest)
    report(progress, Progress("download", dest.stat().st_size, dest.stat().st_size, name=dest.name))
    return digest


def _snapshot(repo_id: str, patterns: list[str], offline: bool) -> Path:
    """The snapshot folder of ``repo_id`` (files matching ``patterns``) in the hub cache; online, retried on
    transient failures (huggingface_hub keeps the files already fetched, so a new try resumes)."""
    import huggingface_hub
    from huggingface_hub import utils as hf

    where = hf_cache_dir()
    local = _local_ways("wavlm", repo_id)
    if offline:
        entry = REGISTRY.get(ALIASES.get(repo_id.lower(), repo_id.lower()))
        fetch = f"run `knnvc download {entry.name}`" if entry is not None else "run it once"
        how = f"{fetch} with internet (cache: {where}), {local}"
    else:
        how = f"check the internet connection (or proxy: HTTPS_PROXY) and retry, {local}; cache: {where}"

    def attempt() -> str:
        return huggingface_hub.snapshot_download(
            repo_id, cache_dir=where, allow_patterns=patterns, local_files_only=offline
        )

    try:
        folder = attempt() if offline else _with_retries(attempt, f"fetching {repo_id} from the Hugging Face Hub")
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
        raise WeightsError(f"Hugging Face Hub error for {repo_id}: {' '.join(str(exc).split())}") from exc
    except _network_errors() as exc:
        raise WeightsError(f"cannot reach the Hugging Face Hub for {repo_id} ({exc!r}): {how}") from exc
    return Path(folder)


# -- from a name to a verified file -----------------------------------------------------------------------------


def _ensure_file(entry: WeightsEntry, offline: bool, progress: OnProgress | None) -> Path:
    """The cached file of a URL entry, verified; fetched (again, when bad) unless offline."""
    dest = cache_dir() / _filename(entry)
    expected, _ = known_sha256(entry)
    local = _local_ways(entry.kind, entry.name)
    how = f"run `knnvc download {entry.name}` with internet (or copy {dest} from a machine that has it), {local}"
    if dest.is_file():
        problem = _problem(dest, expected)
        if problem is None:
            return dest
        dest.unlink(missing_ok=True)  # the sidecar stays: for an unpinned file it is the record of its hash
        if offline:
            raise WeightsError(f"cached file {dest} was corrupt ({problem}) and is deleted; offline mode is on: {how}")
        logger.warning("cached file %s was corrupt (%s); deleted it, downloading it again", dest, problem)
    elif offline:
        raise WeightsError(f"{entry.name} weights are not cached ({dest}) and offline mode is on: {how} "
                           f"(the file is at {entry.location})")
    digest = _download(entry.location, dest, expected, progress, local)
    if expected is None:
        logger.info("recorded sha256 %s for %s (no published hash: unpinned)", digest, dest)
    _vouch(dest, digest)
    return dest


def _step(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def pick_generator(folder: Path) -> Path:
    """The generator checkpoint in a folder of ``*.pt`` files (not recursive).

    Rule: a single ``.pt`` is taken. Otherwise the candidates are generator files (``g_*``, ``*_g_*``) and
    ``*best*`` files (``do_*`` optimiser/discriminator states are never taken); a ``*best*`` file wins, else
    the highest step number in the name (``g_02500000``), then the newest file.
    """
    found = sorted(p for p in folder.glob("*.pt") if p.is_file())
    if len(found) == 1:
        return found[0]
    gens = [p for p in found if re.match(r"(.*_)?g_", p.name) or "best" in p.name.lower()]
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
    entry = REGISTRY.get(ALIASES.get(text.lower(), text.lower()))
    if entry is not None and entry.kind == "wavlm" and entry.source == "url":
        return _ensure_file(entry, is_offline(offline), None)
    return _hub_snapshot(ALIASES.get(text.lower(), text), is_offline(offline))


def _hub_snapshot(repo_id: str, offline: bool) -> Path:
    """The cached snapshot folder of ``repo_id`` with config.json and weights (safetensors preferred)."""
    folder = _snapshot(repo_id, _SAFETENSORS, offline)
    if not any(folder.glob("*.safetensors")) and not offline:
        folder = _snapshot(repo_id, _PYTORCH_BIN, offline)
    if not (folder / "config.json").is_file() or not _weights_in(folder):
        how = "run `knnvc download` with internet" if offline else "it has no config.json and weights; retry"
        local = _local_ways("wavlm", repo_id)
        raise WeightsError(f"hub snapshot of {repo_id} in {folder} is incomplete: {how}, {local}")
    return folder


def download_all(
    names: str | Iterable[str] | None = None,
    *,
    progress: OnProgress | None = None,
) -> dict[str, Path | str]:
    """Fetch registry entries into their caches; returns name -> local location. ``progress`` gets ``download``
    events naming each file: one at its start (0 bytes), then as its bytes arrive, and one at its end.

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
    """For each registry entry: is it cached (and verified), and where. Never touches the network."""
    status: list[tuple[WeightsEntry, bool, Path | None]] = []
    for entry in REGISTRY.values():
        where: Path | None = None
        if entry.source == "hub":
            with contextlib.suppress(WeightsError):
                where = _hub_snapshot(entry.location, offline=True)
        elif (path := cache_dir() / _filename(entry)).is_file() and _problem(path, known_sha256(entry)[0]) is None:
            where = path
        status.append((entry, where is not None, where))
    return status
