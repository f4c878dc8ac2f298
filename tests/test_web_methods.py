"""MKL-VC and LinearVC on the web side: the method and its block size as controls, ``POST /api/convert`` with each
method (the authors' fixture audio reproduced over HTTP), a saved or uploaded pair as the target, and the one-line
JSON errors with their status codes. In process (FastAPI's test client on the tiny models), so it stays cheap; the
page's side is in ``tests/test_web.py``.
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from knnvc.errors import UsageError
from knnvc.options import METHODS, MKL_BLOCK, ConvertOptions
from knnvc.voice import Pair, Voice
from knnvc.web.controls import controls, options_from_form, options_from_values
from knnvc.web.service import Limits, Service, Target, UnfitTargetError
from tests.conftest import FIXTURES, REF_DIR, SOURCE_WAV, SPEECH
from tests.fault_tools import tiny_pipeline

pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("fastapi", reason="the web extra is not installed: pip install -e '.[web]'")
from fastapi.testclient import TestClient  # noqa: E402

from knnvc.web.app import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest

PAIR_SOURCE = SPEECH / "pair" / "source"
PAIR_NAME = "m3_to_f2"  # the saved pair's name in the server's voices folder
REFS = sorted(REF_DIR.glob("*.wav"))
AS_THE_FIXTURES = {"trim": "false", "loudness": "none"}  # references untrimmed, the vocoder's own level


@functools.lru_cache(maxsize=1)
def tiny_pair() -> Pair:
    """LinearVC's non-parallel pair from the fixture's pair/source speaker to the references, on the tiny encoder
    (the ``linear_nonparallel`` fixture case; built once per process)."""
    return tiny_pipeline().build_pair(PAIR_SOURCE, REF_DIR, trim=False)


def save_tiny_pair(folder: Path) -> Path:
    """``tiny_pair`` saved as ``m3_to_f2.pair`` in ``folder``."""
    return tiny_pair().save(folder / f"{PAIR_NAME}.pair")


@pytest.fixture(scope="module")
def methods_outputs() -> dict[str, Any]:
    out: dict[str, Any] = torch.load(FIXTURES / "methods_outputs.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("web_methods")
    svc = Service(tiny_pipeline(), voices=root / "voices", limits=Limits(max_seconds=30), temp_root=root)
    save_tiny_pair(root / "voices")
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, page=False)) as test_client:
        yield test_client


def _file(field: str, path: Path, data: bytes | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (path.name, path.read_bytes() if data is None else data, "application/octet-stream"))


SOURCE = _file("source", SOURCE_WAV)
REFERENCES = [_file("reference", p) for p in REFS]


def _audio(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    wav, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 16_000 and len(wav) == sf.info(SOURCE_WAV).frames  # as long as the source
    return np.asarray(wav)


def _close(wav: np.ndarray, expected: torch.Tensor) -> None:
    """Within 1e-4 of the authors' audio (the WAV's 16-bit steps are 3e-5)."""
    assert np.abs(wav[: expected.numel()] - expected.numpy()).max() <= 1e-4


def _error(response: Any, status: int, words: str) -> str:
    body = response.json()
    assert response.status_code == status, (response.status_code, body)
    assert set(body) == {"error"} and "\n" not in body["error"] and words in body["error"], body
    assert "/tmp" not in body["error"], body  # the names given, never the server's temp paths
    return str(body["error"])


# -- the controls ------------------------------------------------------------------------------------------------
def test_the_method_is_a_choice_and_the_block_a_number() -> None:
    found = {c.name: c for c in controls()}
    method, block = found["method"], found["mkl_block"]
    assert (method.kind, method.choices, method.default) == ("choice", METHODS, "knn")
    assert "MKL-VC" in method.help and "LinearVC" in method.help  # from ConvertOptions' docstring
    assert (block.kind, block.default) == ("int", MKL_BLOCK) and block.hint is not None
    assert (block.hint.low, block.hint.high, block.hint.step) == (1, 64, 1)
    assert "MKL-VC" in block.help

    def no_voices(name: str) -> Voice:
        raise AssertionError(name)

    made = options_from_form({"method": "mkl", "mkl_block": "16"}, no_voices)
    assert made == ConvertOptions(method="mkl", mkl_block=16)
    assert options_from_values({"method": "linear", "mkl_block": 4.0}, no_voices).mkl_block == 4
    for form, message in [
        ({"method": "vits"}, "method takes one of knn, mkl, linear"),
        ({"mkl_block": "2.5"}, "mkl_block takes a whole number"),
        ({"mkl_block": "0"}, "MKL block size must be a whole number, at least 1"),
        ({"method": "mkl", "knn_weighting": "inverse-distance"}, "kNN weighting is a control of kNN matching"),
    ]:
        with pytest.raises(UsageError, match=message):
            options_from_form(form, no_voices)


# -- /api/convert ------------------------------------------------------------------------------------------------
def test_api_mkl_reproduces_the_authors_audio(client: TestClient, methods_outputs: dict) -> None:
    expected = methods_outputs["mkl_b2"]
    data = {"method": "mkl", "mkl_block": str(expected["block"]), **AS_THE_FIXTURES}
    _close(_audio(client.post("/api/convert", files=[SOURCE, *REFERENCES], data=data)), expected["wav"])


def test_api_pair_target_reproduces_linearvc(client: TestClient, service: Service, methods_outputs: dict) -> None:
    """A saved pair by name (the method is the pair's: none given, or linear) and the same pair uploaded."""
    expected = methods_outputs["linear_nonparallel"]["wav"]
    assert client.get("/api/voices").json() == {"voices": [], "pairs": [PAIR_NAME]}
    assert client.get("/api/health").json()["pairs"] == 1
    by_name = client.post("/api/convert", files=[SOURCE], data={"pair": PAIR_NAME, **AS_THE_FIXTURES})
    _close(_audio(by_name), expected)
    assert by_name.headers["content-disposition"] == f'attachment; filename="source_{PAIR_NAME}.wav"'
    assert service.voices_dir is not None
    saved = service.voices_dir / f"{PAIR_NAME}.pair"
    uploaded = client.post(
        "/api/convert", files=[SOURCE, _file("pair", saved)], data={"method": "linear", **AS_THE_FIXTURES}
    )
    assert np.array_equal(_audio(uploaded), _audio(by_name))


def test_api_refuses_a_method_that_does_not_fit_the_target(client: TestClient, tmp_path: Path) -> None:
    speech, rate = sf.read(REFS[0], dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, speech[rate // 2 : rate // 2 + int(0.3 * rate)], rate)  # 0.3 s from inside the sentence
    junk = tmp_path / "junk.pair"
    junk.write_text("not a pair")
    cases: list[tuple[list[Any], dict[str, str], int, str]] = [
        ([*REFERENCES], {"method": "linear"}, 422, "method linear (LinearVC) converts with a pair"),
        ([_file("reference", short)], {"method": "mkl", "trim": "false"}, 422, "MKL-VC needs at least 1 s"),
        ([], {"pair": PAIR_NAME, "method": "mkl"}, 422, "holds a fixed map"),
        ([], {"pair": "nobody"}, 422, f"no saved pair named 'nobody'; the saved pairs are: {PAIR_NAME}"),
        ([_file("pair", junk)], {}, 422, "junk.pair: not a knnvc pair file"),
        ([*REFERENCES], {"pair": PAIR_NAME}, 400, "give one target: reference audio or a pair, not both"),
        ([_file("pair", junk)], {"pair": PAIR_NAME}, 400, "'pair' was given twice"),
        ([], {"pair": PAIR_NAME, "method": "vits"}, 400, "method takes one of knn, mkl, linear"),
        ([], {"pair": PAIR_NAME, "mkl_block": "0"}, 400, "MKL block size must be a whole number"),
        ([*REFERENCES], {"method": "mkl", "match_layer": "4"}, 400, "a match layer is a control of kNN matching"),
    ]
    for files, data, status, words in cases:
        said = _error(client.post("/api/convert", files=[SOURCE, *files], data=data), status, words)
        assert str(tmp_path) not in said
    assert client.get("/api/health").json()["status"] == "ok"


def test_the_service_checks_the_target_before_reading_the_source(service: Service, tmp_path: Path) -> None:
    """LinearVC without a pair is refused before any upload is read: the source here is not even audio."""
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with service.uploads() as uploads, pytest.raises(UnfitTargetError, match="converts with a pair"):
        service.convert(uploads, text, Target(references=REFS, options=ConvertOptions(method="linear")))


def test_a_batch_converts_with_a_saved_pair(service: Service, methods_outputs: dict, tmp_path: Path) -> None:
    archive = tmp_path / "talks.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("day1/source.wav", SOURCE_WAV.read_bytes())
    target = Target(pair=PAIR_NAME, options=ConvertOptions(loudness=None))
    with service.uploads() as uploads:
        out, report = service.convert_zip(uploads, uploads.known(archive, archive.name), target)
    assert (len(report.converted), len(report.failed)) == (1, 0)
    assert out.name == f"talks_{tiny_pair().name}.zip"
    with zipfile.ZipFile(out) as zf:
        wav = sf.read(io.BytesIO(zf.read("day1/source.wav")), dtype="float32")[0]
    _close(wav, methods_outputs["linear_nonparallel"]["wav"])
