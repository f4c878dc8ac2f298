"""``knnvc serve``: the page and the HTTP API, with the models loaded once at start."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.errors import UsageError
from knnvc.options import MAX_WAVLM_LAYERS, WAVLM_LAYER, Models
from knnvc.runtime.interrupt import sigterm_as_interrupt

LOCAL_HOSTS = frozenset({"localhost"})


@app.command()
@common.takes(common.pipeline)
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but localhost exposes the server.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
    voices: Annotated[
        Path | None, typer.Option("--voices", help="Saved .voice and .pair files, offered by name; new voices go here.")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Megabytes per request.")] = 200.0,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Seconds of audio per uploaded file.")] = 600.0,
    max_batch_files: Annotated[int, typer.Option("--max-batch-files", help="Files in one batch zip.")] = 500,
    max_waiting: Annotated[
        int, typer.Option("--max-waiting", help="Requests that may wait for the model; more get 'busy' (503).")
    ] = 16,
    max_match_layer: Annotated[
        int, typer.Option("--max-match-layer", min=1, max=MAX_WAVLM_LAYERS,
                          help="Deepest match layer offered; WavLM runs max(it, 6) layers.")  # fmt: skip
    ] = WAVLM_LAYER,
    *,
    pipeline: Models,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Serve a page and an HTTP API (POST /api/convert) for conversions; models load once, here."""
    with common.session(verbose, quiet):
        if not 1 <= port <= 65535:
            raise UsageError(f"--port must be 1-65535, got {port}")
        with common.needs_extra("knnvc serve", "web"):
            import uvicorn

            from knnvc.web.app import create_app
            from knnvc.web.service import Limits, Service
        if not _is_local(host):
            exposed = f"listening on {host}: anyone who can reach this machine can upload files and use its "
            common.say("warning:", "bold yellow", exposed + "CPU/GPU, with no login; --host 127.0.0.1 keeps it local")
        limits = Limits(max_upload_mb, max_seconds, max_batch_files, max_waiting)
        with _bind(host, port) as sock:  # before the models load: a port in use fails at once
            with common.err.status("loading models", spinner="dots") if not quiet else common.nothing():
                from knnvc.pipeline import KnnVC

                vc = KnnVC.from_pretrained(pipeline, match_layer=max_match_layer)
                vc.load_vocoder()  # the page's first request would wait for it, or fail
            service = Service(vc, voices=voices, limits=limits)
            try:
                config = uvicorn.Config(create_app(service), log_level="info" if verbose else "warning")
                if not quiet:
                    shown = f"[{host}]" if ":" in host else host
                    common.say("serving", "green", f"http://{shown}:{port}/ (API: POST /api/convert); Ctrl-C stops")
                with sigterm_as_interrupt():  # uvicorn stops gracefully, then re-raises the signal: caught here
                    uvicorn.Server(config).run(sockets=[sock])
            except KeyboardInterrupt:
                pass
            finally:
                service.close()
            if not quiet:
                common.say("stopped;", "green", "uploads and results removed")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``UsageError`` saying why not (in use, no such address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
        ) from exc
    sock.set_inheritable(True)
    return sock


def _is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
