"""``knnvc live`` (extra ``[live]``): microphone -> ``Streamer`` -> speakers, through sounddevice (PortAudio).

The microphone is read in chunks at its own rate (the stream resamples to 16 kHz) and the converted audio is
written to the speakers at theirs, so any pair of devices works. A missing sounddevice package is one line on stderr
naming the extra to install (exit 8, as every missing extra); a missing PortAudio library or device, exit 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from knnvc.cli import common
from knnvc.cli.app import app
from knnvc.cli.stream import REFERENCE_HELP, StreamLoader, described, streaming
from knnvc.errors import DeviceError, UsageError
from knnvc.options import FRAME_RATE

if TYPE_CHECKING:
    from knnvc.stream.streamer import Streamer


@dataclass(frozen=True)
class AudioDevice:
    """A PortAudio device as sounddevice names it (index or name; None: the default) and its default rate."""

    device: int | str | None
    rate: int
    name: str


def open_sounddevice() -> Any:
    """The ``sounddevice`` module, or a one-line error saying what to install: ``ExtraError`` for the package,
    ``DeviceError`` for the PortAudio library it needs (a system library, not a pip extra)."""
    try:
        with common.needs_extra("knnvc live", "live"):
            import sounddevice
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        hint = "e.g. apt-get install libportaudio2"
        raise DeviceError(f"knnvc live needs the PortAudio library ({exc}); {hint}") from None
    return sounddevice


def find_device(sd: Any, device: str | None, kind: str) -> AudioDevice:
    """The ``kind`` ("input" or "output") device called ``device`` (an index, a name, or None: the default)."""
    wanted: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(wanted, kind)
    except (ValueError, sd.PortAudioError) as exc:
        which = f"{kind} device {device!r}" if device is not None else f"default {kind} device"
        raise DeviceError(f"no {which} ({exc}); see knnvc live --list-devices") from None
    return AudioDevice(wanted, int(info["default_samplerate"]), str(info["name"]))


def run(sd: Any, streamer: Streamer, mic: AudioDevice, speakers: AudioDevice) -> None:
    """Read a chunk from the microphone, convert, play; until Ctrl-C, then play the tail."""
    block = max(1, mic.rate // FRAME_RATE)  # read 20 ms at a time: a step starts as soon as it can
    try:
        with (
            sd.InputStream(samplerate=mic.rate, device=mic.device, channels=1, dtype="float32", blocksize=block) as ins,
            sd.OutputStream(samplerate=speakers.rate, device=speakers.device, channels=1, dtype="float32") as outs,
        ):
            try:
                while True:
                    data, _overflowed = ins.read(block)
                    converted = streamer.push(data[:, 0])
                    if len(converted):
                        outs.write(converted[:, None])
            except KeyboardInterrupt:
                outs.write(streamer.flush()[:, None])
    except sd.PortAudioError as exc:
        raise DeviceError(f"audio device failed: {exc}") from None


@app.command()
@common.takes(streaming)
def live(
    reference: Annotated[Path | None, typer.Argument(help=REFERENCE_HELP)] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List audio devices and exit.")] = False,
    input_device: Annotated[str | None, typer.Option("--input-device", help="Microphone: index or name.")] = None,
    output_device: Annotated[str | None, typer.Option("--output-device", help="Speakers: index or name.")] = None,
    *,
    streaming: StreamLoader,
    quiet: common.QuietOpt = False,
    verbose: common.VerboseOpt = False,
) -> None:
    """Speak into the microphone, hear it in REFERENCE's voice (extra [live]). Ctrl-C stops.

    --loudness is a fixed gain, measured from the voice (a pair: its target's speech) before the first chunk. A
    .pair REFERENCE, or --method mkl --source-speaker DIR, streams a fixed per-frame map: no kNN search.
    """
    with common.session(verbose, quiet):
        sd = open_sounddevice()
        if list_devices:
            common.err.print(str(sd.query_devices()), markup=False, highlight=False)
            return
        if reference is None:
            raise UsageError("knnvc live needs REFERENCE (a file, folder, .voice or .pair), or --list-devices")
        mic, speakers = find_device(sd, input_device, "input"), find_device(sd, output_device, "output")
        streamer = streaming(reference, mic.rate, speakers.rate)
        if not quiet:
            common.say("live:", "green", f"{mic.name} -> {speakers.name}; {described(streamer)}; Ctrl-C stops")
        run(sd, streamer, mic, speakers)
