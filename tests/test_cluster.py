"""``knnvc convert IN_DIR VOICE -o OUT_DIR --ray local``: the folder conversion as a Ray Data job (tiny models).

One local Ray (2 CPUs) serves the whole module: starting Ray is the slow part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from knnvc import options, progress
from knnvc.batch import cluster, plan
from knnvc.batch.manifest import MANIFEST_NAME
from knnvc.errors import EXIT_PARTIAL, AudioError, UsageError
from knnvc.options import Models, PipelineSettings
from tests.conftest import REF_DIR, TINY_VOCODER, TINY_WAVLM
from tests.fault_tools import FAST, cli, json_summary, write_audio

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("one_torch_thread", "local_ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


def sources(root: Path) -> Path:
    """Five clips of different lengths in a tree, one of them stereo at 44.1 kHz."""
    for n, rel in enumerate(["a.wav", "b.wav", "deep/c.wav", "deep/er/d.wav", "e.wav"]):
        write_audio(root / rel, 0.3 + 0.15 * n)
    stereo = np.stack([np.sin(np.arange(44_100) / 9.0), np.cos(np.arange(44_100) / 7.0)], 1).astype(np.float32)
    sf.write(root / "deep" / "stereo.flac", 0.3 * stereo, 44_100)
    return root


def outputs(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): sf.read(p, dtype="float32")[0] for p in sorted(out.rglob("*.wav"))}


def test_ray_matches_the_local_run_and_resumes(tmp_path: Path, voice: Path) -> None:
    src = sources(tmp_path / "src")
    local = json_summary(cli("convert", src, voice, "-o", tmp_path / "local", *FAST, "--json"))
    result = cli("convert", src, voice, "-o", tmp_path / "ray", *FAST, "--json", "--ray", "local")
    assert result.exit_code == 0, result.stderr
    on_ray = json.loads(result.stdout)
    assert (on_ray["converted"], on_ray["failed"]) == (local["converted"], 0) == (6, 0)
    mine, theirs = outputs(tmp_path / "ray"), outputs(tmp_path / "local")
    assert sorted(mine) == sorted(theirs) == ["a.wav", "b.wav", "deep/c.wav", "deep/er/d.wav", "deep/stereo.wav",
                                              "e.wav"]  # fmt: skip
    for name, wav in mine.items():
        assert wav.shape == theirs[name].shape
        np.testing.assert_allclose(wav, theirs[name], atol=1e-4, err_msg=name)
    # The same settings record: the same settings key, and per file its status and seconds.
    record = json.loads((tmp_path / "ray" / MANIFEST_NAME).read_text())
    local_record = json.loads((tmp_path / "local" / MANIFEST_NAME).read_text())
    assert record["settings"].keys() == local_record["settings"].keys()
    assert all(e["status"] == "converted" and e["seconds"] > 0 for e in record["files"].values())
    # A rerun skips what is done; a lost output is made again, and only it.
    (tmp_path / "ray" / "deep" / "c.wav").unlink()
    again = json_summary(cli("convert", src, voice, "-o", tmp_path / "ray", *FAST, "--json", "--ray", "local"))
    assert (again["converted"], again["skipped"], again["skip_reasons"]) == (1, 5, {"done": 5})
    assert again["outputs"] == [str(tmp_path / "ray" / "deep" / "c.wav")]


def test_a_bad_file_is_named_and_the_others_convert(tmp_path: Path) -> None:
    src = sources(tmp_path / "src")
    (src / "deep" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really")
    out = tmp_path / "out"
    result = cli("convert", src, REF_DIR, "-o", out, *FAST, "--ray", "local", "--json")  # a voice from references
    assert result.exit_code == EXIT_PARTIAL
    summary = json.loads(result.stdout)
    assert (summary["converted"], summary["failed"]) == (6, 1)
    assert summary["failures"][0]["file"] == str(src / "deep" / "broken.wav")
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "broken.wav" in failed[0]
    assert not (out / "deep" / "broken.wav").exists() and len(outputs(out)) == 6
    record = json.loads((out / MANIFEST_NAME).read_text())
    assert record["files"]["deep/broken.wav"]["status"] == "failed"


def test_the_library_call_and_its_errors(tmp_path: Path, voice: Path) -> None:
    from knnvc.voice import Voice

    src = sources(tmp_path / "src")
    jobs = plan.plan(src, tmp_path / "out", "v")
    models = Models(str(TINY_WAVLM), str(TINY_VOCODER), PipelineSettings("cpu", batch_size=2))
    events: list[progress.Progress] = []
    report = cluster.run(jobs, Voice.load(voice), options.DEFAULT_OPTIONS, models, progress=events.append)
    assert report.ok and len(report.converted) == 6 and report.audio_seconds > 3
    assert sorted(e.index for e in events if e.stage == "done") == list(range(6))
    assert cluster.compute(models) == ("cpu", "float32")
    with pytest.raises(UsageError, match="no GPU"):
        cluster.layout({"CPU": 2.0}, Models("w", "v", PipelineSettings("cuda")))
    on_gpus = cluster.layout({"CPU": 64.0, "GPU": 8.0}, Models("w", "v"))
    assert (on_gpus.actors, on_gpus.num_gpus, on_gpus.device) == (8, 1.0, "cuda")
    assert isinstance(cluster._error("AudioError", "x"), AudioError)


def test_actors_that_cannot_start_stop_the_job_with_one_error(tmp_path: Path, voice: Path) -> None:
    from knnvc.errors import WeightsError
    from knnvc.voice import Voice

    jobs = plan.plan(sources(tmp_path / "src"), tmp_path / "out", "v")
    models = Models(str(tmp_path / "missing.pt"), str(TINY_VOCODER), PipelineSettings("cpu"))  # absent on the "nodes"
    report = cluster.run(jobs, Voice.load(voice), options.DEFAULT_OPTIONS, models)
    assert isinstance(report.stopped, WeightsError) and "missing.pt" in str(report.stopped)
    assert report.converted == [] and not (tmp_path / "out").exists()


def test_a_pair_reaches_the_actors(tmp_path: Path) -> None:
    """A ``.pair`` target on Ray (through the object store, as a voice goes): the outputs and the settings record
    are the local run's. (``--method`` and ``--mkl-block`` travel inside ``ConvertOptions``, as every control does.)"""
    from tests.test_methods_cli import PAIR_SOURCE

    src = tmp_path / "src"
    for n, rel in enumerate(["a.wav", "deep/b.wav"]):
        write_audio(src / rel, 0.4 + 0.3 * n)
    pair_file = tmp_path / "p.pair"
    built = cli("pair", "build", PAIR_SOURCE, REF_DIR, "-o", pair_file, "--wavlm", TINY_WAVLM, "--no-trim")
    assert built.exit_code == 0, built.output
    local = json_summary(cli("convert", src, pair_file, "-o", tmp_path / "local", *FAST, "--json"))
    on_ray = json_summary(cli("convert", src, pair_file, "-o", tmp_path / "ray", *FAST, "--json", "--ray", "local"))
    assert (on_ray["converted"], on_ray["failed"]) == (local["converted"], 0) == (2, 0)
    mine, theirs = outputs(tmp_path / "ray"), outputs(tmp_path / "local")
    assert sorted(mine) == sorted(theirs) == ["a.wav", "deep/b.wav"]
    for name, wav in mine.items():
        np.testing.assert_allclose(wav, theirs[name], atol=1e-4, err_msg=name)
    record = json.loads((tmp_path / "ray" / MANIFEST_NAME).read_text())
    assert record["settings"].keys() == json.loads((tmp_path / "local" / MANIFEST_NAME).read_text())["settings"].keys()
    (audio,) = [s["audio"] for s in record["settings"].values()]
    assert audio["options"]["method"] == "linear" and audio["voice"]["name"] == "p"
