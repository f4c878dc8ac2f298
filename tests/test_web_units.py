"""The web layer's parts without a server: controls read from ``ConvertOptions``, the model queue, safe zips, the
``Service`` (voices, batches, temp folders) on the tiny models, and ``knnvc serve``'s refusals."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc.errors import AudioError, UsageError, VoiceError
from knnvc.options import ConvertOptions
from knnvc.pipeline import KnnVC
from knnvc.voice import Voice
from knnvc.web import zips
from knnvc.web.controls import controls, options_from_form, options_from_values
from knnvc.web.queue import BusyError, ModelQueue
from knnvc.web.service import Limits, Service, Target, TooLargeError
from tests.conftest import REF_DIR, SOURCE_WAV, TINY_WAVLM
from tests.fault_tools import cli, one_line, tiny_pipeline

REFS = sorted(REF_DIR.glob("*.wav"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- controls -------------------------------------------------------------------------------------------
def test_every_option_is_a_control_with_its_default_and_help() -> None:
    fields = [f for f in dataclasses.fields(ConvertOptions)]
    found = {c.name: c for c in controls()}
    assert list(found) == [f.name for f in fields]  # nothing missed, nothing invented, the dataclass's order
    for field in fields:
        assert found[field.name].default == field.default
        assert found[field.name].help, f"{field.name} has no help in ConvertOptions' docstring"
    assert found["k"].kind == "int" and found["k"].hint is not None
    assert found["output_sample_rate"].optional and found["trim"].kind == "bool"


def _no_voices(name: str) -> Voice:
    raise VoiceError(f"no saved voice named {name!r}")


def test_form_fields_become_options() -> None:
    form = {"k": "8", "loudness": "none", "trim": "false", "output_sample_rate": "44100"}
    assert options_from_form(form, _no_voices) == ConvertOptions(
        k=8, loudness=None, trim=False, output_sample_rate=44_100
    )
    assert options_from_form({}, _no_voices) == ConvertOptions()
    assert options_from_values(
        {"k": 6.0, "loudness": "-20", "trim": True, "output_sample_rate": ""}, _no_voices
    ) == ConvertOptions(k=6, loudness=-20.0, output_sample_rate=None)
    for form, message in [
        ({"k": "2.5"}, "k takes a whole number"),
        ({"k": "four"}, "k takes a whole number"),
        ({"trim": "maybe"}, "trim takes true or false"),
        ({"k": "0"}, "k must be at least 1"),
        ({"loudness": "5"}, "loudness must be"),
        ({"colour": "blue"}, "unknown field 'colour'"),
    ]:
        with pytest.raises(UsageError, match=message):
            options_from_form(form, _no_voices)


@dataclasses.dataclass(frozen=True)
class Fancy:
    """Options of the future.

    Attributes:
        mode: how to do it,
            over two lines.
        partner: a second voice to blend in.
        ratio: how much of it.
    """

    mode: Literal["near", "far"] = "near"
    partner: Voice | None = None
    ratio: float = 0.5


def test_choices_and_voice_fields(tmp_path: Path) -> None:
    found = {c.name: c for c in controls(Fancy)}
    assert found["mode"].kind == "choice" and found["mode"].choices == ("near", "far")
    assert found["mode"].help == "how to do it, over two lines."
    assert found["partner"].kind == "voice" and found["partner"].optional
    saved = {"bob": Voice(frames=torch.zeros(3, 4), encoder="e", encoder_fingerprint="f", layer=6, name="bob")}

    def lookup(name: str) -> Voice:
        if name not in saved:
            raise VoiceError(f"no saved voice named {name!r}")
        return saved[name]

    made = options_from_form({"mode": "far", "partner": "bob", "ratio": "0.25"}, lookup, cls=Fancy)
    assert made == Fancy("far", saved["bob"], 0.25)
    assert options_from_values({"partner": "", "mode": "near"}, lookup, cls=Fancy) == Fancy()
    with pytest.raises(UsageError, match="mode takes one of near, far"):
        options_from_form({"mode": "sideways"}, lookup, cls=Fancy)
    with pytest.raises(VoiceError, match="'carol'"):
        options_from_form({"partner": "carol"}, lookup, cls=Fancy)


# -- the queue ------------------------------------------------------------------------------------------
def test_queue_is_first_come_first_served_and_bounded() -> None:
    queue = ModelQueue(max_waiting=2)
    order: list[int] = []
    release = threading.Event()
    seen: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        with queue.turn(on_wait=lambda ahead: seen.setdefault(n, []).append(ahead)):
            order.append(n)
            release.wait(10)

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    while not order:
        time.sleep(0.01)
    others = []
    for n in (1, 2):
        others.append(threading.Thread(target=worker, args=(n,)))
        others[-1].start()
        while queue.waiting < n:
            time.sleep(0.01)
    with pytest.raises(BusyError, match="busy"), queue.turn():
        pass  # a fourth request: two already wait
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert order == [0, 1, 2] and seen[2][0] == 2 and queue.waiting == 0


def test_a_request_cancelled_while_waiting_leaves_the_line() -> None:
    queue = ModelQueue()
    with queue.turn():
        errors = []

        def impatient() -> None:
            def give_up(ahead: int) -> None:
                raise TimeoutError("client went away")

            try:
                with queue.turn(on_wait=give_up):
                    pass
            except TimeoutError as exc:
                errors.append(exc)

        thread = threading.Thread(target=impatient)
        thread.start()
        thread.join(5)
        assert errors and queue.waiting == 0
    with queue.turn():  # the line is free again
        pass


# -- zips -----------------------------------------------------------------------------------------------
def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_extraction_is_safe(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"a/b.wav": b"x", "__MACOSX/a/._b.wav": b"junk", "c.txt": b"y"})
    assert [
        p.relative_to(tmp_path / "out") for p in zips.extract(good, tmp_path / "out", max_bytes=10, max_files=5)
    ] == [
        Path("a/b.wav"),
        Path("c.txt"),
    ]
    for entries, message in [
        ({"../escape.wav": b"x"}, "outside the batch folder"),
        ({"/abs.wav": b"x"}, "outside the batch folder"),
        ({"big.wav": b"x" * 100}, "over"),
        ({f"{i}.wav": b"" for i in range(6)}, "at most 5"),
    ]:
        with pytest.raises(UsageError, match=message):
            zips.extract(_zip(tmp_path / "bad.zip", entries), tmp_path / "x", max_bytes=50, max_files=5)
    link = zipfile.ZipInfo("link.wav")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UsageError, match="is a link"):
        zips.extract(tmp_path / "link.zip", tmp_path / "y", max_bytes=50, max_files=5)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(UsageError, match="not a zip file"):
        zips.extract(tmp_path / "not.zip", tmp_path / "z", max_bytes=50, max_files=5)


# -- the service on the tiny models ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def vc() -> KnnVC:
    return tiny_pipeline()


@pytest.fixture
def service(vc: KnnVC, tmp_path: Path) -> Iterator[Service]:
    svc = Service(vc, voices=tmp_path / "voices", limits=Limits(max_seconds=30), temp_root=tmp_path)
    yield svc
    svc.close()
    assert not svc.workspace.exists()


def test_voice_built_in_the_service_is_saved_offered_and_used(service: Service, vc: KnnVC) -> None:
    with service.uploads() as uploads:
        refs = [uploads.known(p, p.name) for p in REFS]
        voice, path = service.build_voice(uploads, refs, "alice smith", trim=False)
        folder = uploads.folder
    assert not folder.exists()  # the request's temp folder is gone
    assert path == service.voices_dir / "alice_smith.voice" and service.voice_names() == ["alice_smith"]
    assert [s.path for s in voice.sources] == [p.name for p in REFS]  # the names given, not temp paths
    with service.uploads() as uploads, pytest.raises(UsageError, match="exists"):
        service.build_voice(uploads, refs, "alice_smith")
    with service.uploads() as uploads:
        wav, rate = service.convert(uploads, SOURCE_WAV, Target(voice="alice_smith"))
    expected = vc.convert(SOURCE_WAV, vc.build_voice(REF_DIR, trim=False))
    assert rate == 16_000 and np.array_equal(wav, expected)
    missing = "no saved voice named 'bob'; the saved voices are"
    with service.uploads() as uploads, pytest.raises(VoiceError, match=missing):
        service.convert(uploads, SOURCE_WAV, Target(voice="bob"))
    with service.uploads() as uploads, pytest.raises(UsageError, match="not both"):
        service.convert(uploads, SOURCE_WAV, Target(voice="alice_smith", references=refs))


def test_limits_name_the_upload(service: Service, tmp_path: Path) -> None:
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(31 * 16_000, np.float32), 16_000)
    with service.uploads() as uploads:
        shown = uploads.known(long, "my talk.wav")
        with pytest.raises(TooLargeError, match="my talk.wav is 31 s long; this server takes at most 30 s"):
            service.convert(uploads, shown, Target(references=[shown]))
        empty = uploads.place("clip.wav", "source")
        empty.write_bytes(b"")
        with pytest.raises(AudioError) as caught:
            service.convert(uploads, empty, Target(references=[shown]))
        assert uploads.message(caught.value) == "clip.wav is empty (0 bytes); record or upload some speech"


def test_batch_zip_in_zip_out(service: Service, tmp_path: Path, vc: KnnVC) -> None:
    speech = SOURCE_WAV.read_bytes()
    archive = _zip(
        tmp_path / "talks.zip", {"day1/a.wav": speech, "b.wav": speech, "broken.wav": b"RIFF....", "x.txt": b""}
    )
    with service.uploads() as uploads:
        refs = [uploads.known(p, p.name) for p in REFS]
        target = Target(references=refs, options=ConvertOptions(trim=False))
        out, report = service.convert_zip(uploads, uploads.known(archive, archive.name), target, extension="flac")
    assert (len(report.converted), len(report.failed)) == (2, 1)
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        summary = json.loads(zf.read("report.json"))
        converted = sf.read(io.BytesIO(zf.read("b.flac")), dtype="float32")[0]
    assert out.name == "talks_ref_01.zip"
    assert names == ["b.flac", "day1/a.flac", "report.json"]
    assert summary["failures"][0]["file"] == "broken.wav" and "/tmp" not in json.dumps(summary)
    expected = vc.convert(SOURCE_WAV, vc.build_voice(REFS, trim=False))
    assert np.abs(converted - expected).max() < 1e-4  # FLAC is 24-bit
    assert not list((service.workspace / "jobs").iterdir())


# -- knnvc serve ----------------------------------------------------------------------------------------
def test_serve_warns_before_exposing_and_fails_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
    missing = ["--wavlm", str(tmp_path / "missing.pt")]
    exposed = cli("serve", "--host", "192.0.2.1", "--port", "7860", *missing)  # TEST-NET: not this machine's
    assert exposed.exit_code == 2 and "warning: listening on 192.0.2.1" in exposed.stderr
    assert "cannot listen on 192.0.2.1:7860" in one_line(exposed)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = cli("serve", "--port", str(port), *missing)
    assert taken.exit_code == 2 and "warning" not in taken.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(taken)
    no_weights = cli("serve", "--port", str(port), *missing)  # the port is free again: the weights fail next
    assert no_weights.exit_code == 4 and "missing.pt" in one_line(no_weights)
    assert cli("serve", "--port", "0").exit_code == 2


def test_the_page_offers_the_match_layers_the_encoder_runs(service: Service, vc: KnnVC, tmp_path: Path) -> None:
    """The match-layer slider ends at the loaded encoder's depth (6 by default); ``--max-match-layer`` loads more."""
    gr = pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from knnvc.web import page

    (layer,) = [c for c in controls() if c.name == "match_layer"]
    with gr.Blocks():
        slider = page._widget(service, layer, "match-layer")
    assert slider.maximum == vc.encoder.depth == 6
    missing = ["--wavlm", str(tmp_path / "never-loaded.pt")]  # a model loaded first would fail on this (exit 4)
    result = cli("serve", "--port", "0", "--max-match-layer", "8", *missing)
    assert result.exit_code == 2 and "never-loaded" not in result.stderr  # port 0 is refused before any model loads
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # the tiny WavLM has 8 layers: asked to run 9, the loader refuses, naming the layer the option asked for
    deeper = cli("serve", "--port", str(port), "--max-match-layer", "9", "--wavlm", TINY_WAVLM, "--device", "cpu")
    assert deeper.exit_code == UsageError.exit_code
    assert "match layer 9:" in one_line(deeper) and "has 8 layers" in one_line(deeper)
    assert cli("serve", "--max-match-layer", "25", *missing).exit_code == 2
