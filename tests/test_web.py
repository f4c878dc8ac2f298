"""``knnvc serve`` for real: a server process on a free localhost port with the tiny models, driven over HTTP
(httpx), through the page's API (``gradio_client``) and in a real browser (Debian's chromium through Playwright).

The browser test takes the page's screenshot into its temp folder; ``KNNVC_SCREENSHOT_UPDATE=1 python -m pytest
tests/test_web.py`` writes it to ``docs/web.png`` instead (the picture in docs/web.md).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from knnvc.web.controls import controls
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_VOCODER, TINY_WAVLM
from tests.test_web_methods import PAIR_NAME, save_tiny_pair

httpx = pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
from gradio_client import Client, handle_file  # noqa: E402  (ships with gradio)

pytestmark = pytest.mark.slow  # every test needs a real `knnvc serve` process: ~8 s to start on 2 cores

CHROMIUM = Path(os.environ.get("KNNVC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a microphone that beeps
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "web.png"  # written with KNNVC_SCREENSHOT_UPDATE=1
LIMIT_MB = 1.0  # the test server's upload limit
REFS = sorted(REF_DIR.glob("*.wav"))
CONTROLS = [c.name for c in controls()]  # the ConvertOptions fields: form fields of /api/convert, page parameters


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    temp: Path  # the server's TMPDIR: its workspace lives here
    voices: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``knnvc serve`` with the tiny models, one torch thread and a 1 MB upload limit; stopped with SIGTERM."""
    root = tmp_path_factory.mktemp("serve")
    temp, voices = root / "tmp", root / "voices"
    temp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--port", str(port), "--wavlm", str(TINY_WAVLM), "--vocoder", str(TINY_VOCODER), "--device", "cpu",
            "--voices", str(voices), "--max-upload-mb", str(LIMIT_MB), "--max-seconds", "30"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "knnvc", "serve", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"knnvc serve exited: {process.stderr.read() if process.stderr else ''}"
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "knnvc serve did not answer within 120 s"
        time.sleep(0.5)
    yield Server(url, process, temp, voices)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "warning:" not in stderr  # localhost: no exposure warning
    assert not list(temp.glob("knnvc-serve-*")), "the server left its temp folder behind"


@pytest.fixture(scope="module")
def saved_pair(server: Server) -> Path:
    """A LinearVC pair for the tiny encoder saved in the server's voices folder (offered by name; a page loaded
    after this offers it in its pair pickers)."""
    return save_tiny_pair(server.voices)


def _convert(server: Server, **files: object) -> httpx.Response:
    return httpx.post(f"{server.url}/api/convert", timeout=120, **files)  # type: ignore[arg-type]


def _refs() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("reference", (p.name, p.read_bytes(), "audio/wav")) for p in REFS]


def _jobs(server: Server) -> list[Path]:
    return [p for p in server.temp.glob("knnvc-serve-*/jobs/*")]


def test_api_converts_refuses_bad_input_and_keeps_serving(server: Server) -> None:
    source = ("source", (SOURCE_WAV.name, SOURCE_WAV.read_bytes(), "audio/wav"))
    ok = _convert(server, files=[source, *_refs()], data={"k": "4"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["content-type"] == "audio/wav"
    wav, rate = sf.read(io.BytesIO(ok.content), dtype="float32")
    assert rate == 16_000 and wav.ndim == 1
    assert abs(len(wav) - sf.info(SOURCE_WAV).frames) <= 320 and np.abs(wav).max() > 0.01

    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, np.float32), 16_000, format="WAV")
    bad = {
        "a text file sent as audio": [("source", ("speech.wav", b"hello, this is text\n" * 50, "audio/wav"))],
        "an empty recording": [("source", ("recording.wav", empty.getvalue(), "audio/wav"))],
        "a zero-byte recording": [("source", ("blob.webm", b"", "audio/webm"))],
        "an upload over the limit": [("source", ("long.wav", b"\0" * int(LIMIT_MB * 1e6 + 2e5), "audio/wav"))],
    }
    codes = {}
    for what, upload in bad.items():
        response = _convert(server, files=upload + _refs())
        body = response.json()
        assert 400 <= response.status_code < 500, (what, response.status_code, body)
        assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], (what, body)
        assert "/tmp" not in body["error"] and str(server.temp) not in body["error"], body  # names, not temp paths
        codes[what] = (response.status_code, body["error"])
    assert codes["an upload over the limit"][0] == 413
    assert "speech.wav" in codes["a text file sent as audio"][1]
    assert "no audio samples" in codes["an empty recording"][1]
    assert "empty" in codes["a zero-byte recording"][1]

    usage = {
        "no source": ({}, "'source'"),
        "a bad k": ({"k": "0"}, "k must be at least 1"),
        "a control that does not exist": ({"nonsense": "1"}, "unknown field 'nonsense'"),
        "an unknown voice": ({"voice": "nobody"}, "no saved voice named 'nobody'"),
    }
    for what, (data, expected) in usage.items():
        files = [source] if what in ("an unknown voice", "a bad k", "a control that does not exist") else []
        response = _convert(server, files=files + ([] if what == "an unknown voice" else _refs()), data=data)
        assert 400 <= response.status_code < 500 and expected in response.json()["error"], (what, response.text)

    again = _convert(server, files=[source, *_refs()], data={"output_sample_rate": "24000", "loudness": "none"})
    assert again.status_code == 200, again.text
    assert sf.info(io.BytesIO(again.content)).samplerate == 24_000
    assert httpx.get(f"{server.url}/api/health").json()["status"] == "ok"
    assert not _jobs(server), "request folders were not removed"


def test_api_queues_concurrent_requests(server: Server) -> None:
    """Three requests at once: each waits its turn and gets its audio; none disturbs another."""
    source = ("source", (SOURCE_WAV.name, SOURCE_WAV.read_bytes(), "audio/wav"))
    results: list[int] = []

    def one() -> None:
        results.append(_convert(server, files=[source, *_refs()]).status_code)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [200, 200, 200]


PAGE_ENDPOINTS = {  # what a gradio_client sees: each endpoint's parameters, by name, and what it returns
    "/convert": (["source", "references", "voice", "pair", *CONTROLS], ["Result", "Status"]),
    "/convert_batch": (
        ["archive", "references", "voice", "pair", "format", *CONTROLS],
        ["Results (.zip, with report.json)", "Status"],
    ),
    "/build_voice": (["references", "name", "trim"], ["Voice file", "Status"]),
}


def test_gradio_client_sees_named_endpoints_and_converts(server: Server, saved_pair: Path, tmp_path: Path) -> None:
    """The page's API through ``gradio_client``: three named endpoints with named parameters; a conversion from
    references, a voice built and then used by name, a saved pair by name (with a method that does not fit it, one
    status line), and a bad upload answered with one status line."""
    client = Client(server.url + "/", verbose=False, analytics_enabled=False, download_files=str(tmp_path / "got"))
    api = client.view_api(print_info=False, return_format="dict")
    assert isinstance(api, dict) and not api["unnamed_endpoints"], api
    seen = {
        endpoint: ([p["parameter_name"] for p in info["parameters"]], [r["label"] for r in info["returns"]])
        for endpoint, info in api["named_endpoints"].items()
    }
    assert seen == PAGE_ENDPOINTS

    source, refs = handle_file(str(SOURCE_WAV)), [handle_file(str(p)) for p in REFS]
    path, status = client.predict(source=source, references=refs, k=4, api_name="/convert")
    assert status.startswith("done: "), status
    wav, rate = sf.read(path, dtype="float32")
    assert rate == 16_000 and abs(len(wav) - sf.info(SOURCE_WAV).frames) <= 320 and np.abs(wav).max() > 0.01

    voice_file, said = client.predict(references=refs, name="erin", api_name="/build_voice")
    assert said.startswith("built 'erin'") and Path(voice_file).name == "erin.voice", said
    path, status = client.predict(source=source, voice="erin", output_sample_rate=24_000, api_name="/convert")
    assert status.startswith("done: ") and sf.info(path).samplerate == 24_000, status

    path, status = client.predict(source=source, pair=PAIR_NAME, loudness="none", api_name="/convert")
    assert status.startswith("done: "), status
    assert len(sf.read(path)[0]) == sf.info(SOURCE_WAV).frames  # the pair's audio itself: tests/test_web_methods.py
    nothing, said = client.predict(source=source, pair=PAIR_NAME, method="mkl", api_name="/convert")
    assert nothing is None and said.startswith("error: pair ") and "holds a fixed map" in said, said
    assert str(server.voices) not in said  # the pair named, not the server's folder

    text = tmp_path / "speech.wav"
    text.write_text("hello, this is text\n" * 50)
    nothing, said = client.predict(source=handle_file(str(text)), voice="erin", api_name="/convert")
    assert nothing is None and said.startswith("error: ") and "speech.wav" in said and "\n" not in said, said


def _browser_or_skip() -> object:
    """Playwright's chromium launcher on Debian's chromium, or a skip that prints why it is missing."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium); the browser test cannot run"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[web]')"
    if reason:
        warnings.warn(reason, stacklevel=2)  # shown in pytest's warnings summary, skip or not
        pytest.skip(reason)
    return sync_playwright


INIT_SCRIPT = """(() => {
    window.__media = [];  // every audio element the page plays, attached to the document or not
    const play = HTMLMediaElement.prototype.play;
    HTMLMediaElement.prototype.play = function () { window.__media.push(this); return play.apply(this, arguments); };
})()"""


def test_browser_converts_and_plays(server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as pw:  # type: ignore[operator]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.add_init_script(INIT_SCRIPT)
            page.goto(server.url + "/")
            status = page.locator("#convert-status textarea, #convert-status input").first

            page.click("#convert-button")  # nothing given: one line in the page, no trace
            page.wait_for_function("s => s.value.startsWith('error:')", arg=status.element_handle(), timeout=30_000)
            assert status.input_value() == "error: give the source speech: upload a file or record"

            page.set_input_files("#source input[type=file]", str(SOURCE_WAV))
            page.set_input_files("#convert-references input[type=file]", [str(p) for p in REFS])
            page.wait_for_function(f"document.querySelectorAll('#convert-references tr').length === {len(REFS)}")
            page.wait_for_selector("#source [data-testid=download-link]")  # the source is uploaded
            page.click("#convert-button")
            page.wait_for_function("s => s.value.startsWith('done')", arg=status.element_handle(), timeout=60_000)
            assert status.input_value().startswith("done: 3.9 s at 16000 Hz"), status.input_value()

            link = page.wait_for_selector("#result a[data-testid=download-link]")
            assert link is not None
            href = link.get_attribute("href")
            assert href
            wav, rate = sf.read(io.BytesIO(httpx.get(href, timeout=30).content), dtype="float32")
            assert rate == 16_000 and abs(len(wav) - sf.info(SOURCE_WAV).frames) <= 320

            page.click("#result button[aria-label=Play]")  # the browser itself must decode and play it
            page.wait_for_function("window.__media.some(a => a.currentTime > 0.2 && !a.error)", timeout=15_000)
            played = page.evaluate("window.__media.map(a => ({rs: a.readyState, d: a.duration}))")
            assert any(m["rs"] >= 2 and abs(m["d"] - len(wav) / rate) < 0.05 for m in played), played
            page.click("#result button[aria-label=Pause]")
            shot = SCREENSHOT if os.environ.get("KNNVC_SCREENSHOT_UPDATE") == "1" else tmp_path / "web.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            _record_and_convert(browser, server)
        finally:
            browser.close()


def _record_and_convert(browser: Any, server: Server) -> None:
    """The microphone route: record 2 s from chromium's fake microphone, convert it."""
    page = browser.new_context(permissions=["microphone"]).new_page()
    page.goto(server.url + "/")
    page.click("#source button[aria-label='Record audio']")
    page.get_by_role("button", name="Record", exact=True).first.click()
    page.wait_for_timeout(2000)
    page.get_by_role("button", name="Stop", exact=True).first.click()
    page.wait_for_selector("#source [data-testid=download-link]")  # the recording is uploaded
    page.set_input_files("#convert-references input[type=file]", [str(p) for p in REFS])
    page.wait_for_function(f"document.querySelectorAll('#convert-references tr').length === {len(REFS)}")
    page.click("#convert-button")
    status = page.locator("#convert-status textarea, #convert-status input").first
    page.wait_for_function("s => s.value.length > 0", arg=status.element_handle(), timeout=60_000)
    said = status.input_value()
    assert said.startswith("done: ") and 1.5 <= float(said.split()[1]) <= 8, said  # about the 2 s recorded


def test_browser_picks_a_pair_builds_a_voice_and_converts_a_zip(
    server: Server, saved_pair: Path, tmp_path: Path
) -> None:
    sync_playwright = _browser_or_skip()
    speech = SOURCE_WAV.read_bytes()
    archive = tmp_path / "talks.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("day1/a.wav", speech)
        zf.writestr("b.wav", speech)
        zf.writestr("broken.wav", b"RIFF, but not really")
    with sync_playwright() as pw:  # type: ignore[operator]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server.url + "/")
            method = page.locator("#convert-method input").first
            assert method.input_value() == "knn"
            page.click("#convert-pair input")  # a saved pair is offered; choosing it makes the method LinearVC's
            page.get_by_role("option", name=PAIR_NAME, exact=True).click()
            page.wait_for_function("m => m.value === 'linear'", arg=method.element_handle(), timeout=15_000)

            page.get_by_role("tab", name="Voice").click()
            page.set_input_files("#voice-references input[type=file]", [str(p) for p in REFS])
            page.wait_for_function(f"document.querySelectorAll('#voice-references tr').length === {len(REFS)}")
            page.fill("#voice-name textarea, #voice-name input", "dora")
            page.click("#voice-button")
            status = page.locator("#voice-status textarea, #voice-status input").first
            page.wait_for_function("s => s.value.length > 0", arg=status.element_handle(), timeout=60_000)
            assert status.input_value().startswith("built 'dora'") and "saved as dora.voice" in status.input_value()
            assert (server.voices / "dora.voice").is_file()

            page.get_by_role("tab", name="Batch").click()
            page.set_input_files("#batch-zip input[type=file]", str(archive))
            page.wait_for_selector("#batch-zip [download]")
            page.click("#batch-voice input")  # the new voice is offered without a reload
            page.get_by_role("option", name="dora", exact=True).click()
            page.click("#batch-button")
            status = page.locator("#batch-status textarea, #batch-status input").first
            page.wait_for_function("s => s.value.length > 0", arg=status.element_handle(), timeout=60_000)
            assert status.input_value().startswith("converted 2 of 3 files"), status.input_value()
            assert "broken.wav" in status.input_value() and "\n" not in status.input_value()
            link = page.wait_for_selector("#batch-result [download]")
            assert link is not None
            href = link.get_attribute("href")
            assert href
            with zipfile.ZipFile(io.BytesIO(httpx.get(href, timeout=30).content)) as zf:
                assert sorted(zf.namelist()) == ["b.wav", "day1/a.wav", "report.json"]
                assert sf.info(io.BytesIO(zf.read("b.wav"))).samplerate == 16_000
        finally:
            browser.close()
