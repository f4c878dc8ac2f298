"""Faults in weights and voices, end to end through ``knnvc convert``: exit 4 (weights) and 5 (voices).

``tests/test_weights.py`` covers the registry layer itself against a real local HTTP server: a truncated or
corrupt cached download is fetched again online and refused offline (``test_corrupt_cache_refetched_online_
refused_offline``), a sha256 mismatch is refused (``test_sha256_checked_for_cached_file``), a download that breaks
off leaves nothing behind (``test_truncated_download_leaves_nothing``), transient failures are tried again while a
404 or a mismatch is not (``test_transient_failures_are_tried_again``, ``test_http_error_and_unreachable_name_the_url``,
``test_sha256_mismatch_leaves_nothing_and_is_not_tried_again``), and pickled code is refused by ``load_checkpoint``
(``test_load_checkpoint_refuses_pickled_code``). Here the same faults go through the command, with the tiny fixture
models, and voices from another encoder or damaged voices are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from knnvc.errors import VoiceError, WeightsError
from knnvc.voice import Voice
from knnvc.weights import hub, loaded
from tests.conftest import REF_DIR, TINY_VOCODER, TINY_VOCODER_CONFIG, TINY_WAVLM
from tests.fault_tools import FAST, cli, json_summary, one_line, write_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Evil:
    """Pickled as a class reference: ``torch.load(weights_only=True)`` must refuse to import it."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audio(tmp_path_factory.mktemp("src") / "source.wav", 0.5)


def run(
    source: Path, reference: Path, out: Path, *extra: object, wavlm: object = TINY_WAVLM,
    vocoder: object = TINY_VOCODER, env: dict[str, str] | None = None,
) -> Any:  # fmt: skip
    """``knnvc convert`` with the tiny models (or the given ones) on CPU, in process."""
    return cli("convert", source, reference, "-o", out, "--wavlm", wavlm, "--vocoder", vocoder, *FAST[4:], *extra,
               env=env)  # fmt: skip


# -- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["--vocoder", "--wavlm"])
@pytest.mark.parametrize("damage", ["truncated", "pickled_code", "not_a_checkpoint"])
def test_bad_checkpoints_are_refused(tmp_path: Path, source: Path, voice: Path, which: str, damage: str) -> None:
    path = tmp_path / f"{damage}.pt"
    original = TINY_VOCODER if which == "--vocoder" else TINY_WAVLM
    if damage == "truncated":
        path.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    elif damage == "pickled_code":
        payload = torch.load(original, weights_only=True)
        payload["generator" if which == "--vocoder" else "cfg"] = Evil()
        torch.save(payload, path)
    else:
        path.write_text("<html>404 page saved as a checkpoint</html>")
    result = run(source, voice, tmp_path / "out.wav", **{which.lstrip("-"): path})
    assert result.exit_code == WeightsError.exit_code
    line = one_line(result)
    assert str(path) in line and ";" in line, line  # names the file, then says what to do
    if damage == "pickled_code":
        assert "pickled code" in line
    assert not (tmp_path / "out.wav").exists()


class _Server:
    """Serves ``body`` at /prematch.pt on 127.0.0.1, counting requests; ``failures``: HTTP errors answered first."""

    def __init__(self, body: bytes) -> None:
        self.body, self.hits = body, 0
        self.failures: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits += 1
                if server.failures:
                    self.send_error(server.failures.pop(0))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}/prematch.pt"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    """The 'prematched' registry entry served locally (the tiny vocoder), with a fresh knnvc cache."""
    srv = _Server(TINY_VOCODER.read_bytes())
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    digest = hashlib.sha256(srv.body).hexdigest()  # the tiny vocoder stands in: its hash is the published one
    monkeypatch.setitem(hub.REGISTRY, "prematched", dataclasses.replace(hub.REGISTRY["prematched"],
                                                                          location=srv.url, sha256=digest))  # fmt: skip
    # knnvc.weights.loaded keeps loaded models by name for the process: forget any "prematched" loaded by another test
    monkeypatch.setattr(loaded, "_CACHE", {k: v for k, v in loaded._CACHE.items() if k[1] != "prematched"})
    monkeypatch.setattr(hub, "RETRY_WAITS_S", (0.0, 0.0))  # three tries, without waiting between them
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(TINY_VOCODER_CONFIG, cache / "config.json")  # the tiny vocoder's shape, beside the download
    monkeypatch.setenv("KNNVC_CACHE", str(cache))
    yield srv, cache / "prematch_g_02500000.pt"
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_corrupt_cached_download_refused_offline_then_fetched_again(
    tmp_path: Path, source: Path, voice: Path, registry: tuple[_Server, Path]
) -> None:
    server, cached = registry
    cached.write_bytes(server.body[: len(server.body) - 1000])  # an interrupted download
    result = run(source, voice, tmp_path / "out.wav", vocoder="prematched")  # offline (KNNVC_OFFLINE=1)
    assert result.exit_code == WeightsError.exit_code
    line = one_line(result)
    assert str(cached) in line and "corrupt" in line and "deleted" in line and "knnvc download" in line
    assert server.hits == 0 and not cached.exists()  # the bad file is not kept
    cached.write_bytes(server.body[: len(server.body) - 1000])
    online = run(source, voice, tmp_path / "out.wav", "--json", vocoder="prematched", env={"KNNVC_OFFLINE": ""})
    assert json_summary(online)["converted"] == 1 and "downloading it again" in online.stderr
    assert server.hits == 1 and cached.read_bytes() == server.body


def test_a_download_that_fails_at_first_is_tried_again(
    tmp_path: Path, source: Path, voice: Path, registry: tuple[_Server, Path]
) -> None:
    server, cached = registry
    server.failures = [503, 502]  # the release server hiccups twice, then serves the file
    online = run(source, voice, tmp_path / "out.wav", "--json", vocoder="prematched", env={"KNNVC_OFFLINE": ""})
    assert json_summary(online)["converted"] == 1 and "HTTP 503" in online.stderr and "trying again" in online.stderr
    assert server.hits == 3 and cached.read_bytes() == server.body


def test_missing_registry_weights_offline(tmp_path: Path, source: Path, voice: Path, registry: Any) -> None:
    result = run(source, voice, tmp_path / "out.wav", vocoder="prematched")
    assert result.exit_code == WeightsError.exit_code
    assert "not cached" in one_line(result) and "knnvc download" in one_line(result)


# -- voices ---------------------------------------------------------------------------------------------------


def _voice_variant(path: Path, kind: str, good: Voice) -> Path:
    frames = good.frames
    meta = good.metadata()
    if kind == "other_encoder":
        dataclasses.replace(good, encoder="microsoft/wavlm-large", encoder_fingerprint="0123456789abcdef").save(path)
        return path
    if kind == "truncated":
        good.save(path)
        path.write_bytes(path.read_bytes()[:200])
        return path
    if kind == "torch_pickle":
        torch.save({"frames": frames}, path)
        return path
    if kind == "nan_frames":
        frames = frames.clone()
        frames[0, 0] = float("nan")
    elif kind == "bad_metadata":
        meta = {**meta, "sources": [{"unexpected": 1}]}
    elif kind == "other_format":
        meta = {**meta, "format": "somebody-else/2"}
    elif kind == "one_dimensional":
        frames = frames[:, 0].contiguous()
    save_file({"frames": frames}, str(path), metadata={"knnvc": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("other_encoder", "was built with encoder"),
        ("truncated", "not a knnvc voice file"),
        ("torch_pickle", "not a knnvc voice file"),
        ("nan_frames", "NaN"),
        ("bad_metadata", "damaged voice metadata"),
        ("other_format", "somebody-else/2"),
        ("one_dimensional", "damaged voice"),
    ],
)
def test_bad_voices_are_refused(tmp_path: Path, source: Path, voice: Path, kind: str, words: str) -> None:
    path = _voice_variant(tmp_path / f"{kind}.voice", kind, Voice.load(voice))
    result = run(source, path, tmp_path / "out.wav")
    assert result.exit_code == VoiceError.exit_code
    line = one_line(result)
    assert str(path) in line and words in line and "rebuild" in line, line
    assert not (tmp_path / "out.wav").exists()


def test_voice_folder_and_references_still_work(tmp_path: Path, source: Path) -> None:
    (tmp_path / "a.voice").mkdir()
    result = run(source, tmp_path / "a.voice", tmp_path / "out.wav")
    assert result.exit_code == VoiceError.exit_code and "is a folder" in one_line(result)
    summary = json_summary(cli("convert", source, REF_DIR, "-o", tmp_path / "out.wav", *FAST, "--json"))
    assert summary["converted"] == 1


@pytest.mark.parametrize("rate", [None, 22_050])
def test_missing_vocoder_stops_a_batch_once_before_any_file(tmp_path: Path, voice: Path, rate: int | None) -> None:
    """The pipeline loads its vocoder on first use; a batch (and a one-call conversion) asks for it before any file
    is encoded, so missing weights stop the whole run with one error, whatever the output rate."""
    import knnvc
    from knnvc.batch import plan, runner
    from knnvc.options import ConvertOptions, Models
    from knnvc.pipeline import KnnVC

    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        write_audio(src / f"{name}.wav", 1.0)
    missing = tmp_path / "nowhere" / "g_00000001.pt"
    vc = KnnVC.from_pretrained(Models(TINY_WAVLM, missing), device="cpu")
    jobs = plan.plan(src, tmp_path / "out", "v")
    with pytest.raises(WeightsError, match="nowhere"):
        runner.run(vc, jobs, Voice.load(voice), ConvertOptions(output_sample_rate=rate))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(WeightsError, match="nowhere"):
        knnvc.convert(src / "a.wav", voice, models=Models(TINY_WAVLM, missing), device="cpu", output_sample_rate=rate)
