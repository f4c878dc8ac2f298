"""Moving bytes from the network into files: one verified, atomic HTTP download, and Hugging Face snapshots.

No registry knowledge here (``knnvc.weights.hub`` decides what to fetch and where it is cached); every failure is a
``WeightsError`` that says what to do next.
"""

from __future__ import annotations

import http.client
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from knnvc import files
from knnvc.errors import WeightsError
from knnvc.progress import OnProgress, Progress, report
from vocoder import atomic

logger = logging.getLogger(__name__)


_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_HTTP_CLIENT_ERRORS = (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx2", "HTTPError"))


class _DownloadFailed(Exception):
    """A network or HTTP failure while streaming; ``download_file`` adds what to do about it."""


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: OnProgress | None = None,
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Stream ``url`` into ``dest`` atomically (``knnvc.atomic.write_atomically``): Content-Length, ``sha256``
    and ``check`` (returns a problem or None) are verified on the temporary file before it is renamed into
    place, so a failed or mismatching download leaves no ``dest`` (the bad bytes are deleted).
    """
    dest = Path(dest)
    retry = (f"check the internet connection (or proxy: HTTPS_PROXY) and retry, or fetch {url} yourself "
             f"and save it as {dest}")

    def verify(tmp: Path) -> None:
        if sha256 is not None and (got := files.sha256(tmp)) != sha256.lower():
            raise WeightsError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}; the download was deleted. "
                "Retry; if it happens again the file at that address has changed: use a local copy you trust"
            )
        problem = check(tmp) if check is not None else None
        if problem is not None:
            raise WeightsError(f"downloaded {url} is not a valid checkpoint ({problem}) and was deleted; retry")

    try:
        atomic.write_atomically(dest, lambda out: _stream(url, out, progress, dest.name), check=verify)
    except _DownloadFailed as exc:
        raise WeightsError(f"{exc}: {retry}") from exc
    except OSError as exc:
        why = files.write_error(dest, exc, "save the download as")
        raise WeightsError(f"{why} (the cache folder is $KNNVC_CACHE, else ~/.cache/knnvc)") from exc
    logger.info("downloaded %s to %s", url, dest)
    return dest


def _stream(url: str, out: BinaryIO, progress: OnProgress | None, name: str) -> None:
    """Copy the body of ``url`` into ``out`` in chunks, reporting ``download`` events for ``name``. Network and
    HTTP errors -> ``_DownloadFailed``."""
    request = urllib.request.Request(url, headers={"User-Agent": "knnvc"})
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            report(progress, Progress("download", 0, total, name=name))
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                report(progress, Progress("download", done, total, name=name))
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _DownloadFailed(f"cannot reach {url} ({exc.reason})") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _DownloadFailed(f"download of {url} failed after {done} bytes ({exc!r})") from exc
    if total is not None and done != total:
        raise _DownloadFailed(f"download of {url} truncated: got {done} of {total} bytes")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection errors, plus those of whichever HTTP client huggingface_hub uses (imported by then)."""
    libs = [getattr(sys.modules[m], n, None) for m, n in _HTTP_CLIENT_ERRORS if m in sys.modules]
    return (ConnectionError, TimeoutError, *(e for e in libs if isinstance(e, type)))


def snapshot(repo_id: str, patterns: list[str], offline: bool, where: Path) -> Path:
    """The snapshot folder of ``repo_id`` (files matching ``patterns``) in the hub cache ``where``."""
    import huggingface_hub
    from huggingface_hub import utils as hf

    if offline:
        how = f"run `knnvc download` on a machine with internet (cache: {where}), or pass a local WavLM path"
    else:
        how = ("check the internet connection (or proxy: HTTPS_PROXY) and retry, or pass a local WavLM path "
               f"(an HF model folder or WavLM-Large.pt); cache: {where}")
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
