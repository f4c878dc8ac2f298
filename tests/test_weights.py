"""The weights registry: cache folder, real HTTP downloads (and retries) from a local server, integrity, offline use."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from knnvc.errors import WeightsError
from knnvc.progress import Progress
from knnvc.weights import hub
from knnvc.weights.formats import load_checkpoint


def _checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.manual_seed(0)
    torch.save({"generator": {"conv.weight": torch.randn(64, 32), "conv.bias": torch.randn(64)}}, buf)
    return buf.getvalue()


BODY = _checkpoint_bytes()


class _Server:
    """A local HTTP server serving ``body``, counting requests.

    ``truncate`` sends half of it under the full Content-Length; ``failures`` scripts the first answers: an HTTP
    status (503), ``"truncate"`` (half the body), or ``"drop"`` (the connection closed without an answer).
    """

    def __init__(self) -> None:
        self.body = BODY
        self.truncate = False
        self.failures: list[int | str] = []
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits += 1
                failure = server.failures.pop(0) if server.failures else None
                if self.path != "/ckpt.pt":
                    self.send_error(404)
                    return
                if isinstance(failure, int):
                    self.send_error(failure)
                    return
                if failure == "drop":
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                cut = server.truncate or failure == "truncate"
                self.wfile.write(server.body[: len(server.body) // 2] if cut else server.body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}/ckpt.pt"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(hub, "RETRY_WAITS_S", (0.0, 0.0))  # three tries, without waiting between them
    cache = tmp_path / "knnvc-cache"
    monkeypatch.setenv("KNNVC_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for var in ("KNNVC_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def local_entry(monkeypatch: pytest.MonkeyPatch, server: _Server) -> hub.WeightsEntry:
    """The 'prematched' entry served locally; its published hash is that of the served body."""
    digest = hashlib.sha256(BODY).hexdigest()
    entry = dataclasses.replace(hub.REGISTRY["prematched"], location=server.url, sha256=digest)
    monkeypatch.setitem(hub.REGISTRY, "prematched", entry)
    return entry


def test_registry_names_every_published_checkpoint() -> None:
    assert hub.REGISTRY["microsoft/wavlm-large"].kind == "wavlm"
    assert hub.get_entry("wavlm-large").name == "microsoft/wavlm-large"
    assert hub.REGISTRY["prematched"].location.endswith("/v0.1/prematch_g_02500000.pt")
    assert hub.REGISTRY["regular"].location.endswith("/v0.1/g_02500000.pt")


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "knnvc-cache"
    monkeypatch.delenv("KNNVC_CACHE")
    assert hub.cache_dir() == tmp_path / "xdg" / "knnvc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "knnvc"
    assert not (tmp_path / "home").exists()


def test_is_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert hub.is_offline()
    assert not hub.is_offline(False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("KNNVC_OFFLINE", "TRUE")
    assert hub.is_offline()


def test_download_into_cache_with_progress_then_cache_hit(
    server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    calls: list[tuple[int, int | None]] = []
    path = hub.resolve_vocoder("prematched", progress=lambda e: calls.append((e.index, e.total)))
    assert path == env / "prematch_g_02500000.pt"
    assert path.read_bytes() == BODY
    assert calls[0] == (0, None) and calls[-1] == (len(BODY), len(BODY))  # its start, then its end
    assert all(total in (None, len(BODY)) for _, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # no temp file left behind; the sidecar holds the verified hash, as `sha256sum -c` reads it
    assert sorted(p.name for p in env.iterdir()) == [path.name, path.name + ".sha256"]
    assert hub.sidecar(path).read_text() == f"{hashlib.sha256(BODY).hexdigest()}  {path.name}\n"
    assert load_checkpoint(path)["generator"]["conv.bias"].shape == (64,)

    assert hub.resolve_vocoder("prematched") == path
    assert hub.resolve_vocoder("PREMATCHED", offline=True) == path
    assert server.hits == 1


def test_truncated_download_leaves_nothing(
    server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    server.truncate = True
    with pytest.raises(WeightsError, match="truncated") as info:
        hub.resolve_vocoder("prematched")
    assert "tried 3 times" in str(info.value) and "\n" not in str(info.value)
    assert server.hits == 3  # a connection broken off mid-file is transient: tried again, twice
    assert not env.exists() or list(env.iterdir()) == []


@pytest.mark.parametrize("failures", [[503], ["drop"], ["truncate", 502]])
def test_transient_failures_are_tried_again(
    server: _Server, local_entry: hub.WeightsEntry, env: Path, failures: list[int | str]
) -> None:
    server.failures = list(failures)
    events: list[Progress] = []
    path = hub.resolve_vocoder("prematched", progress=events.append)
    assert path.read_bytes() == BODY and server.hits == len(failures) + 1
    assert events[-1].index == events[-1].total == len(BODY)
    assert sorted(p.name for p in env.iterdir()) == [path.name, path.name + ".sha256"]


def test_persistent_server_errors_give_up_after_three_tries(
    server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    server.failures = [503, 503, 503, 503]
    with pytest.raises(WeightsError, match="HTTP 503") as info:
        hub.resolve_vocoder("prematched")
    assert server.hits == 3 and server.url in str(info.value) and "tried 3 times" in str(info.value)
    assert not env.exists() or list(env.iterdir()) == []


def test_sha256_mismatch_leaves_nothing_and_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch, server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    monkeypatch.setitem(hub.REGISTRY, "prematched", dataclasses.replace(local_entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        hub.resolve_vocoder("prematched")
    assert server.hits == 1 and (not env.exists() or list(env.iterdir()) == [])
    monkeypatch.setitem(hub.REGISTRY, "prematched", local_entry)
    assert hub.resolve_vocoder("prematched").read_bytes() == BODY


def test_http_error_and_unreachable_name_the_url(
    monkeypatch: pytest.MonkeyPatch, server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    missing = server.url + ".missing"
    monkeypatch.setitem(hub.REGISTRY, "prematched", dataclasses.replace(local_entry, location=missing))
    with pytest.raises(WeightsError, match="HTTP 404") as info:
        hub.resolve_vocoder("prematched")
    assert missing in str(info.value) and server.hits == 1  # a 404 is not tried again
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = f"http://127.0.0.1:{port}/x.pt"
    monkeypatch.setitem(hub.REGISTRY, "prematched", dataclasses.replace(local_entry, location=nowhere))
    with pytest.raises(WeightsError, match=f"127.0.0.1:{port}") as info:
        hub.resolve_vocoder("prematched")
    assert "tried 3 times" in str(info.value) and "\n" not in str(info.value)
    assert not env.exists() or list(env.iterdir()) == []


def test_corrupt_cache_refetched_online_refused_offline(
    server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    env.mkdir(parents=True)
    cached = env / "prematch_g_02500000.pt"
    cached.write_bytes(BODY[: len(BODY) - 100])
    with pytest.raises(WeightsError, match="corrupt") as info:
        hub.resolve_vocoder("prematched", offline=True)
    assert str(cached) in str(info.value) and "knnvc download" in str(info.value)
    assert server.hits == 0
    assert hub.resolve_vocoder("prematched") == cached
    assert cached.read_bytes() == BODY and server.hits == 1


def test_sha256_checked_for_cached_file(
    monkeypatch: pytest.MonkeyPatch, local_entry: hub.WeightsEntry, env: Path, server: _Server
) -> None:
    good = dataclasses.replace(local_entry, sha256=hashlib.sha256(BODY).hexdigest())
    monkeypatch.setitem(hub.REGISTRY, "prematched", good)
    path = hub.resolve_vocoder("prematched")
    monkeypatch.setitem(hub.REGISTRY, "prematched", dataclasses.replace(good, sha256="f" * 64))
    with pytest.raises(WeightsError, match="corrupt.*sha256.*deleted"):
        hub.resolve_vocoder("prematched", offline=True)
    assert not path.exists()  # a file that fails its hash is not kept


def test_offline_missing_names_url_and_download_command(env: Path, no_network: None) -> None:
    with pytest.raises(WeightsError) as info:
        hub.resolve_vocoder("regular", offline=True)
    message = str(info.value)
    assert hub.REGISTRY["regular"].location in message
    assert "knnvc download" in message and str(env / "g_02500000.pt") in message


def test_local_vocoder_paths_pass_through(tmp_path: Path) -> None:
    single = tmp_path / "one"
    single.mkdir()
    (single / "model.pt").write_bytes(BODY)
    assert hub.resolve_vocoder(single / "model.pt") == single / "model.pt"
    assert hub.resolve_vocoder(str(single)) == single / "model.pt"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("g_00100000.pt", "g_02500000.pt", "do_02500000.pt"):
        (run / name).write_bytes(BODY)
    assert hub.resolve_vocoder(run) == run / "g_02500000.pt"
    (run / "best_g.pt").write_bytes(BODY)
    assert hub.resolve_vocoder(run) == run / "best_g.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no generator"):
        hub.resolve_vocoder(empty)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(WeightsError, match="prematched, regular"):
        hub.resolve_vocoder("nope")
    with pytest.raises(WeightsError, match="valid"):
        hub.resolve_vocoder("microsoft/wavlm-large")  # a WavLM is not a vocoder


def _hf_folder(folder: Path, weights_file: str = "pytorch_model.bin") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / weights_file).write_bytes(b"x")
    return folder


def test_local_wavlm_paths(tmp_path: Path, no_network: None) -> None:
    original = tmp_path / "WavLM-Large.pt"
    original.write_bytes(BODY)
    assert hub.resolve_wavlm(original) == original
    hf = _hf_folder(tmp_path / "hf-model")
    assert hub.resolve_wavlm(str(hf)) == hf
    (hf / "config.json").unlink()
    with pytest.raises(WeightsError, match="config.json"):
        hub.resolve_wavlm(hf)
    with pytest.raises(WeightsError, match="no such file"):
        hub.resolve_wavlm(tmp_path / "missing.pt")


def test_offline_hub_id_not_cached(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    with pytest.raises(WeightsError, match="knnvc download"):
        hub.resolve_wavlm("microsoft/wavlm-large", offline=True)
    monkeypatch.setenv("KNNVC_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not .*in the Hugging Face cache"):
        hub.resolve_wavlm("wavlm-large")


def _fake_hub_cache(tmp_path: Path, files: list[str]) -> Path:
    repo = tmp_path / "hf" / "hub" / "models--microsoft--wavlm-large"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_bytes(b"{}")
    return snapshot


def test_cached_hub_snapshot_and_status(tmp_path: Path, env: Path, no_network: None) -> None:
    assert [cached for _, cached, _ in hub.cached_status()] == [False, False, False, False]
    snapshot = _fake_hub_cache(tmp_path, ["config.json", "pytorch_model.bin"])
    assert hub.resolve_wavlm("microsoft/wavlm-large", offline=True) == snapshot
    env.mkdir()
    (env / "g_02500000.pt").write_bytes(BODY)
    status = {entry.name: (cached, where) for entry, cached, where in hub.cached_status()}
    assert status == {
        "microsoft/wavlm-large": (True, snapshot),
        "wavlm-original": (False, None),
        "prematched": (False, None),
        "regular": (True, env / "g_02500000.pt"),
    }


def test_incomplete_hub_snapshot_offline(tmp_path: Path, no_network: None) -> None:
    _fake_hub_cache(tmp_path, ["config.json"])
    with pytest.raises(WeightsError, match="incomplete"):
        hub.resolve_wavlm("microsoft/wavlm-large", offline=True)


def test_hub_prefers_safetensors_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[list[str]] = []
    has_safetensors = {"value": True}

    def fake(repo_id: str, **kwargs: Any) -> str:
        calls.append(list(kwargs["allow_patterns"]))
        assert kwargs["local_files_only"] is False and kwargs["cache_dir"] == tmp_path / "hf" / "hub"
        folder = tmp_path / f"snap{len(calls)}"
        use_st = has_safetensors["value"] and "*.safetensors" in kwargs["allow_patterns"]
        if not use_st and "pytorch_model.bin" not in kwargs["allow_patterns"]:
            folder.mkdir()
            (folder / "config.json").write_text("{}")
            return str(folder)
        return str(_hf_folder(folder, "model.safetensors" if use_st else "pytorch_model.bin"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert hub.resolve_wavlm("microsoft/wavlm-large") == tmp_path / "snap1"
    assert len(calls) == 1 and "*.safetensors" in calls[0]
    has_safetensors["value"] = False
    assert hub.resolve_wavlm("microsoft/wavlm-large") == tmp_path / "snap3"
    assert "pytorch_model.bin" in calls[-1] and len(calls) == 3


def test_hub_errors_become_weights_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(repo_id: str, **kwargs: Any) -> str:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(WeightsError, match="cannot reach the Hugging Face Hub"):
        hub.resolve_wavlm("microsoft/wavlm-large")
    with pytest.raises(WeightsError, match="no such file"):
        hub.resolve_wavlm("./not-here")


def test_hub_snapshots_are_tried_again_after_a_transient_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub
    from huggingface_hub import utils as hf

    snapshot = _fake_hub_cache(tmp_path, ["config.json", "model.safetensors"])

    def caused_by(cause: BaseException) -> BaseException:
        """What huggingface_hub raises when a Hub call fails and the snapshot is not cached: the failure as cause."""
        error = hf.LocalEntryNotFoundError("cannot find the snapshot folder; check your internet connection")
        error.__cause__ = cause
        return error

    failures = [caused_by(ConnectionError("reset by peer")), TimeoutError("read timed out")]

    def flaky(repo_id: str, **kwargs: Any) -> str:
        if failures:
            raise failures.pop(0)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", flaky)
    assert hub.download_all(["microsoft/wavlm-large"]) == {"microsoft/wavlm-large": snapshot}
    assert failures == []

    def refused(repo_id: str, **kwargs: Any) -> str:
        failures.append(caused_by(hf.OfflineModeIsEnabled("HF_HUB_OFFLINE=1")))
        raise failures[-1]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(WeightsError, match="the Hub could not be reached"):
        hub.resolve_wavlm("microsoft/wavlm-large", offline=False)
    assert len(failures) == 1  # huggingface_hub's own offline mode is not tried again


def test_download_all(
    monkeypatch: pytest.MonkeyPatch, server: _Server, local_entry: hub.WeightsEntry, tmp_path: Path
) -> None:
    regular = dataclasses.replace(hub.REGISTRY["regular"], location=server.url)
    monkeypatch.setitem(hub.REGISTRY, "regular", regular)
    snapshot = _fake_hub_cache(tmp_path, ["config.json", "model.safetensors"])
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(snapshot))
    seen: list[str] = []

    def on_progress(event: Progress) -> None:
        assert event.stage == "download" and event.total in (None, len(BODY))
        if event.index == 0:
            seen.append(event.name)

    got = hub.download_all(progress=on_progress)
    assert got["microsoft/wavlm-large"] == snapshot
    assert Path(got["regular"]).read_bytes() == BODY and Path(got["prematched"]).read_bytes() == BODY
    assert seen == ["prematch_g_02500000.pt", "g_02500000.pt"] and server.hits == 2
    assert hub.download_all(names=["regular"]) == {"regular": got["regular"]}
    assert server.hits == 2


class Evil:
    pass


def test_load_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"generator": Evil()}, path)
    with pytest.raises(WeightsError, match="evil.pt"):
        load_checkpoint(path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(BODY[: len(BODY) // 2])
    with pytest.raises(WeightsError, match="truncated.pt"):
        load_checkpoint(truncated)
    with pytest.raises(WeightsError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


# -- pinned hashes, recorded hashes, and errors that say what to do --------------------------------------------


def test_published_hashes_are_pinned() -> None:
    assert hub.REGISTRY["prematched"].sha256 == "f924c7632c6eaf99004386d62293e124419e33582573552a6ae976eb88ed2dd5"
    original = hub.get_entry("wavlm-original")
    assert original.location.endswith("/v0.1/WavLM-Large.pt") and original.kind == "wavlm"
    assert original.sha256 == "6fb4b3c3e6aa567f0a997b30855859cb81528ee8078802af439f7b2da0bf100f"
    assert hub.known_sha256(hub.REGISTRY["prematched"]) == (hub.REGISTRY["prematched"].sha256, "published")


def test_a_download_that_fails_its_published_hash_is_deleted(
    monkeypatch: pytest.MonkeyPatch, server: _Server, env: Path
) -> None:
    """The real pinned hash of prematch_g_02500000.pt against other bytes served by a real HTTP server."""
    entry = dataclasses.replace(hub.REGISTRY["prematched"], location=server.url)
    monkeypatch.setitem(hub.REGISTRY, "prematched", entry)
    with pytest.raises(WeightsError) as info:
        hub.resolve_vocoder("prematched")
    message = str(info.value)
    assert "sha256 mismatch" in message and entry.sha256 in message and hashlib.sha256(BODY).hexdigest() in message
    assert "deleted" in message and "\n" not in message
    assert not env.exists() or list(env.iterdir()) == []  # neither the file nor a temporary one is left


def test_unknown_hash_is_recorded_at_first_download_then_enforced_and_shown(
    monkeypatch: pytest.MonkeyPatch, server: _Server, env: Path
) -> None:
    from typer.testing import CliRunner

    from knnvc.cli import app
    from knnvc.cli.sysinfo import system_info

    entry = dataclasses.replace(hub.REGISTRY["regular"], location=server.url)
    monkeypatch.setitem(hub.REGISTRY, "regular", entry)
    assert entry.sha256 is None and hub.known_sha256(entry) == (None, "")
    shown = CliRunner().invoke(app, ["info"], env={"COLUMNS": "250"}).stdout
    assert next(line for line in shown.splitlines() if "regular" in line).rstrip(" │").endswith("unpinned")
    path = hub.resolve_vocoder("regular")
    digest = hashlib.sha256(BODY).hexdigest()
    assert hub.known_sha256(entry) == (digest, "recorded")
    assert hub.sidecar(path).read_text() == f"{digest}  g_02500000.pt\n"  # the record: a sha256sum file
    row = next(r for r in system_info("cpu")["weights"] if r["name"] == "regular")
    assert (row["sha256"], row["sha256_from"], row["cached"], row["pinned"]) == (digest, "recorded", True, False)
    shown = CliRunner().invoke(app, ["info"], env={"COLUMNS": "250"}).stdout
    assert f"unpinned (recorded at first download: {digest[:16]})" in shown
    path.write_bytes(_checkpoint_bytes()[:-1] + b"\x01")  # a later change of the file is caught
    with pytest.raises(WeightsError, match="corrupt"):
        hub.resolve_vocoder("regular", offline=True)
    assert hub.resolve_vocoder("regular") == path and path.read_bytes() == BODY  # fetched again online
    path.unlink()
    server.body = _checkpoint_bytes()[:-1] + b"\x02"  # the address now serves other bytes: the record holds
    with pytest.raises(WeightsError, match=f"sha256 mismatch .*expected {digest}"):
        hub.resolve_vocoder("regular")
    assert not path.exists() and hub.known_sha256(entry) == (digest, "recorded")


def test_first_download_of_an_unpinned_file_must_be_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch, server: _Server, env: Path
) -> None:
    monkeypatch.setitem(hub.REGISTRY, "regular", dataclasses.replace(hub.REGISTRY["regular"], location=server.url))
    server.body = b"<html>an error page served with 200</html>"
    with pytest.raises(WeightsError, match="not a valid checkpoint"):
        hub.resolve_vocoder("regular")
    assert list(env.iterdir()) == [] and hub.known_sha256(hub.REGISTRY["regular"]) == (None, "")


def test_download_all_takes_the_readme_call(
    monkeypatch: pytest.MonkeyPatch, server: _Server, local_entry: hub.WeightsEntry, env: Path
) -> None:
    assert hub.download_all(["prematched"]) == {"prematched": env / "prematch_g_02500000.pt"}  # docs/weights.md
    assert hub.download_all("prematched") == {"prematched": env / "prematch_g_02500000.pt"}
    assert server.hits == 1


def test_offline_download_says_how_to_get_online(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from typer.testing import CliRunner

    from knnvc.cli import app

    monkeypatch.setenv("KNNVC_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        hub.download_all(["prematched"])
    assert "offline mode is on (KNNVC_OFFLINE)" in str(info.value) and "unset it" in str(info.value)
    result = CliRunner().invoke(app, ["download", "prematched"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == WeightsError.exit_code and len(errors) == 1
    assert "unset it" in errors[0] and "knnvc download" not in errors[0]  # not "run the command you just ran"


def test_failed_vocoder_download_gives_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/prematch_g_02500000.pt"
    entry = dataclasses.replace(hub.REGISTRY["prematched"], location=url)
    monkeypatch.setitem(hub.REGISTRY, "prematched", entry)
    with pytest.raises(WeightsError) as info:
        hub.resolve_vocoder("prematched")
    message = str(info.value)
    assert url in message and "check the internet connection" in message
    assert f"save it as {env / 'prematch_g_02500000.pt'}" in message and "knnvc download" not in message


def test_hub_unreachable_online_does_not_send_you_to_knnvc_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(repo_id: str, **kwargs: Any) -> str:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(WeightsError) as info:
        hub.download_all(["microsoft/wavlm-large"])
    assert "check the internet connection" in str(info.value) and "knnvc download" not in str(info.value)


def test_original_wavlm_comes_from_the_registry_with_its_hash(
    monkeypatch: pytest.MonkeyPatch, server: _Server, env: Path
) -> None:
    entry = dataclasses.replace(hub.get_entry("wavlm-original"), location=server.url,
                                sha256=hashlib.sha256(BODY).hexdigest())
    monkeypatch.setitem(hub.REGISTRY, "wavlm-original", entry)
    assert hub.resolve_wavlm("wavlm-original") == env / "WavLM-Large.pt"


def test_a_checked_file_is_not_hashed_again_until_it_changes(
    server: _Server, local_entry: hub.WeightsEntry
) -> None:
    """A 1.2 GB WavLM would cost seconds per start: its sidecar, given the file's modification time, vouches for it
    until that time changes. Shown here by other bytes slipped in under the old time: they go unnoticed (not
    hashed), while the same bytes with a new time are hashed and caught."""
    path = hub.resolve_vocoder("prematched")
    stamp = path.stat().st_mtime_ns
    tampered = BODY[:-1] + bytes([BODY[-1] ^ 1])
    path.write_bytes(tampered)
    os.utime(path, ns=(stamp, stamp))
    assert hub.resolve_vocoder("prematched", offline=True) == path and path.read_bytes() == tampered
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # any real change moves the time
    with pytest.raises(WeightsError, match="corrupt"):
        hub.resolve_vocoder("prematched", offline=True)
    assert hub.resolve_vocoder("prematched") == path and path.read_bytes() == BODY  # fetched again, vouched again
    path.write_bytes(BODY)
    os.utime(path, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))  # same bytes, new time: hashed once, vouched again
    assert hub.resolve_vocoder("prematched", offline=True) == path
    assert path.stat().st_mtime_ns == hub.sidecar(path).stat().st_mtime_ns
    assert server.hits == 2


def test_checkpoints_readme_names_every_registry_entry() -> None:
    """checkpoints/README.md is where a user looks for the weights' names: every registry name is in its table."""
    text = (Path(__file__).parents[1] / "checkpoints" / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert rows == set(hub.REGISTRY)
