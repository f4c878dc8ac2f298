"""The Gradio page: a Convert tab (upload or record; references, a saved voice or a saved pair; every control, the
method among them; play and download), a Batch tab (a zip in, a zip out) and a Voice tab (build a voice and save it).
Choosing a pair sets the method to LinearVC's (a pair always converts with its map).

Each handler calls ``Service`` and turns any failure into one status line (``error: ...``); the page never shows
a stack trace. The controls are made from ``ConvertOptions``' fields (``knnvc.web.controls``).

The handlers are also the page's API, as ``gradio_client`` sees it: ``/convert``, ``/convert_batch`` and
``/build_voice``, each parameter named as a client passes it (``source``, ``references``, ``voice``, ``pair``, then
the ``ConvertOptions`` fields, as in ``POST /api/convert``). Purely UI events (refreshing the voice and pair pickers,
the method following the pair) are private.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from knnvc.errors import KnnvcError, UsageError
from knnvc.options import ConvertOptions
from knnvc.web.controls import Control, controls, options_from_values
from knnvc.web.service import Notify, Service, Target, Uploads

log = logging.getLogger(__name__)

Inputs = dict[Any, Any]  # a Gradio handler given a set of inputs receives {component: value}

INTRO = (
    "# knnvc\nSay the **source**'s words in the **target**'s voice. Give a few minutes of the target's speech as "
    "reference files (kNN-VC; seconds will do with method **mkl**, MKL-VC), pick a saved voice, or pick a saved "
    "pair (LinearVC, a map from one source speaker to the target)."
)


@dataclass
class Pickers:
    """Every dropdown that offers saved voices or saved pairs, refreshed when the page loads and when a voice is
    built."""

    voices: list[gr.Dropdown] = field(default_factory=list)
    pairs: list[gr.Dropdown] = field(default_factory=list)

    @property
    def all(self) -> list[gr.Dropdown]:
        return [*self.voices, *self.pairs]


def build_page(service: Service) -> gr.Blocks:
    """The page's layout and event handlers, bound to ``service``."""
    with gr.Blocks(title="knnvc", delete_cache=(600, 3600), analytics_enabled=False) as page:
        gr.Markdown(INTRO)
        pickers = Pickers()
        with gr.Tab("Convert", id="convert"):
            _convert_tab(service, pickers)
        with gr.Tab("Batch", id="batch"):
            _batch_tab(service, pickers)
        with gr.Tab("Voice", id="voice"):
            _voice_tab(service, pickers)
        page.load(_refresher(service, pickers), outputs=pickers.all, api_visibility="private")
    page.queue(default_concurrency_limit=service.limits.max_waiting + 1)  # the service's queue orders the model
    return page


def _convert_tab(service: Service, pickers: Pickers) -> None:
    with gr.Row():
        with gr.Column():
            source = gr.Audio(
                sources=["upload", "microphone"], type="filepath", label="Source speech", elem_id="source"
            )
            refs, voice, pair = _target_inputs(service, "convert", pickers)
            widgets = _control_widgets(service, "convert", pickers)
            button = gr.Button("Convert", variant="primary", elem_id="convert-button")
        with gr.Column():
            result = gr.Audio(
                type="filepath", label="Result", interactive=False, buttons=["download"], elem_id="result"
            )
            status = _status("convert")
    _method_follows(service, pair, widgets)

    def run(values: Inputs, progress: gr.Progress) -> tuple[str | None, str]:
        def work(uploads: Uploads, notify: Notify) -> tuple[str | None, str]:
            src = _file(uploads, values[source], "give the source speech: upload a file or record")
            options = _options(service, widgets, values)
            target = Target(values[voice] or None, _files(uploads, values[refs]), options, pair=values[pair] or None)
            wav, rate = service.convert(uploads, src, target, notify)
            out = service.save(wav, rate, service.result_path(f"{src.stem}_converted.wav"))
            return str(out), f"done: {len(wav) / rate:.1f} s at {rate} Hz"

        return _guarded(service, work, progress, failed=(None,))

    handler, inputs = _named(run, {"source": source, "references": refs, "voice": voice, "pair": pair, **widgets})
    said = "Say the source's words in the target's voice; returns the result (WAV) and a status line."
    button.click(handler, inputs=inputs, outputs=[result, status], api_name="convert", api_description=said)


def _batch_tab(service: Service, pickers: Pickers) -> None:
    with gr.Row():
        with gr.Column():
            archive = gr.File(label="Sources: a .zip of audio files", file_types=[".zip"], elem_id="batch-zip")
            refs, voice, pair = _target_inputs(service, "batch", pickers)
            fmt = gr.Dropdown(["wav", "flac", "ogg"], value="wav", label="output format", elem_id="batch-format")
            widgets = _control_widgets(service, "batch", pickers)
            button = gr.Button("Convert all", variant="primary", elem_id="batch-button")
        with gr.Column():
            result = gr.File(label="Results (.zip, with report.json)", interactive=False, elem_id="batch-result")
            status = _status("batch")
    _method_follows(service, pair, widgets)

    def run(values: Inputs, progress: gr.Progress) -> tuple[str | None, str]:
        def work(uploads: Uploads, notify: Notify) -> tuple[str | None, str]:
            zipped = _file(uploads, values[archive], "give a .zip of the audio files to convert")
            options = _options(service, widgets, values)
            target = Target(values[voice] or None, _files(uploads, values[refs]), options, pair=values[pair] or None)
            out, report = service.convert_zip(uploads, zipped, target, values[fmt], notify)
            line = f"converted {len(report.converted)} of {report.total} files in {report.wall_seconds:.1f} s"
            if report.failed:
                first = report.failed[0]
                said = uploads.message(first.error)
                said = said if uploads.shown(first.source) in said else f"{uploads.shown(first.source)}: {said}"
                line += f"; {len(report.failed)} failed (first: {said}); report.json in the zip lists each"
            return str(out), line

        return _guarded(service, work, progress, failed=(None,))

    named = {"archive": archive, "references": refs, "voice": voice, "pair": pair, "format": fmt, **widgets}
    handler, inputs = _named(run, named)
    said = "Convert every audio file in a .zip; returns a .zip of the results with report.json, and a status line."
    button.click(handler, inputs=inputs, outputs=[result, status], api_name="convert_batch", api_description=said)


def _voice_tab(service: Service, pickers: Pickers) -> None:
    where = f"saved in {service.voices_dir}" if service.voices_dir else "not kept (start with --voices DIR to keep)"
    pairs = "A pair (LinearVC) saved there as NAME.pair is offered by name too." if service.voices_dir else ""
    gr.Markdown(f"Build a voice from reference speech once; use it by name afterwards. Voices are {where}. {pairs}")
    with gr.Row():
        with gr.Column():
            refs = gr.File(
                file_count="multiple", file_types=["audio"], label="Reference speech", elem_id="voice-references"
            )
            name = gr.Textbox(label="Voice name", placeholder="alice", max_lines=1, elem_id="voice-name")
            trim = gr.Checkbox(value=ConvertOptions().trim, label="trim silence from each reference's ends")
            button = gr.Button("Build voice", variant="primary", elem_id="voice-button")
        with gr.Column():
            result = gr.File(label="Voice file", interactive=False, elem_id="voice-result")
            status = _status("voice")

    def run(values: Inputs, progress: gr.Progress) -> tuple[Any, ...]:
        def work(uploads: Uploads, notify: Notify) -> tuple[Any, ...]:
            files = _files(uploads, values[refs])
            if not files:
                raise UsageError("give reference speech of the target speaker")
            built, path = service.build_voice(uploads, files, values[name] or "", trim=values[trim], notify=notify)
            line = f"built {built.name!r}: {built.seconds:.1f} s of speech, {built.num_frames} frames"
            return (str(path), line + (f", saved as {path.name}" if service.voices_dir else ""))

        return _guarded(service, work, progress, failed=(None,))

    handler, inputs = _named(run, {"references": refs, "name": name, "trim": trim})
    said = "Build a voice from reference speech and save it by name; returns the .voice file and a status line."
    built = button.click(handler, inputs=inputs, outputs=[result, status], api_name="build_voice", api_description=said)
    built.then(_refresher(service, pickers), outputs=pickers.all, api_visibility="private")  # offered at once


def _target_inputs(service: Service, tab: str, pickers: Pickers) -> tuple[gr.File, gr.Dropdown, gr.Dropdown]:
    """The target's inputs: reference files, a saved voice's picker and a saved pair's (which join ``pickers``)."""
    refs = gr.File(
        file_count="multiple", file_types=["audio"], label="Target: reference speech", elem_id=f"{tab}-references"
    )
    # any name: an API client may name a voice saved since the page loaded (the service refuses unknown ones)
    names = ["", *service.voice_names()]
    voice = gr.Dropdown(names, value="", label="…or a saved voice", elem_id=f"{tab}-voice", allow_custom_value=True)
    pair = gr.Dropdown(
        ["", *service.pair_names()], value="", label="…or a saved pair (LinearVC: its source speaker's speech only)",
        elem_id=f"{tab}-pair", allow_custom_value=True,
    )  # fmt: skip
    pickers.voices.append(voice)
    pickers.pairs.append(pair)
    return refs, voice, pair


def _method_follows(service: Service, pair: gr.Dropdown, widgets: dict[str, gr.components.Component]) -> None:
    """A UI event: choosing a pair sets the method to the pair's own (``linear`` for LinearVC's W, ``mkl`` for a
    speaker-level MKL-VC map: a pair converts with its map); clearing it goes back from a pair's method to kNN."""
    method = widgets.get("method")
    if method is None:
        return

    def follow(chosen: str | None, current: str | None) -> Any:
        if chosen:
            from knnvc.errors import KnnvcError
            from knnvc.voice import Pair

            try:
                return gr.Dropdown(value=Pair.load(service.pair(chosen)).method)
            except KnnvcError:  # a pair that cannot load says so when it is used: the method stays as it is
                return gr.Dropdown(value=current)
        return gr.Dropdown(value="knn" if current == "linear" else current)

    pair.change(follow, inputs=[pair, method], outputs=[method], api_visibility="private")


def _control_widgets(service: Service, tab: str, pickers: Pickers) -> dict[str, gr.components.Component]:
    """One widget per ``ConvertOptions`` field, keyed by field name; voice pickers join ``pickers``."""
    with gr.Accordion("Controls", open=True):
        widgets = {c.name: _widget(service, c, f"{tab}-{c.name.replace('_', '-')}") for c in controls()}
    pickers.voices += [w for c in controls() if c.kind == "voice" and isinstance(w := widgets[c.name], gr.Dropdown)]
    return widgets


def _widget(service: Service, control: Control, elem_id: str) -> gr.components.Component:
    info = control.help or None
    if control.kind == "voice":
        names = ["", *service.voice_names()]
        label = f"{control.label} (a saved voice)"
        return gr.Dropdown(names, value="", label=label, info=info, elem_id=elem_id, allow_custom_value=True)
    if control.kind == "bool":
        return gr.Checkbox(value=bool(control.default), label=control.label, info=info, elem_id=elem_id)
    if control.kind == "choice":
        return gr.Dropdown(
            list(control.choices), value=control.default, label=control.label, info=info, elem_id=elem_id
        )
    if control.kind in ("int", "float") and control.hint is not None and not control.optional:
        hint = control.hint
        high = min(hint.high, service.vc.encoder.depth) if control.name == "match_layer" else hint.high  # runs
        return gr.Slider(hint.low, high, value=control.default, step=hint.step, label=control.label, info=info,
                         elem_id=elem_id)  # fmt: skip
    if control.kind in ("int", "float") and not control.optional:
        precision = 0 if control.kind == "int" else None
        return gr.Number(value=control.default, label=control.label, info=info, precision=precision, elem_id=elem_id)
    value = "" if control.default is None else str(control.default)  # optional numbers: text, blank for none
    label = control.label + (" (blank: none)" if control.optional else "")
    return gr.Textbox(value=value, label=label, info=info, max_lines=1, elem_id=elem_id)


def _options(service: Service, widgets: dict[str, gr.components.Component], values: Inputs) -> ConvertOptions:
    return options_from_values({name: values[widget] for name, widget in widgets.items()}, service.voice)


def _status(tab: str) -> gr.Textbox:
    """The one-line status box under a tab's result."""
    return gr.Textbox(label="Status", interactive=False, max_lines=1, elem_id=f"{tab}-status")


def _file(uploads: Uploads, path: str | None, missing: str) -> Path:
    """Gradio's one uploaded file, registered with the request's ``Uploads``; ``UsageError(missing)`` when nothing
    was given."""
    if not path:
        raise UsageError(missing)
    return uploads.known(Path(path), Path(path).name)


def _files(uploads: Uploads, paths: list[str] | None) -> list[Path]:
    """Gradio's uploaded files (in its cache, named as uploaded), registered with the request's ``Uploads`` for
    messages."""
    return [uploads.known(Path(p), Path(p).name) for p in paths or []]


def _named(
    run: Callable[[Inputs, gr.Progress], tuple[Any, ...]], inputs: dict[str, gr.components.Component]
) -> tuple[Callable[..., tuple[Any, ...]], list[gr.components.Component]]:
    """An event handler for ``inputs`` (parameter name: component) and the components in its parameters' order.

    Gradio names an endpoint's parameters after its function's, so the handler's signature lists ``inputs``' names:
    a ``gradio_client`` caller passes them by keyword (``source=...``, ``k=4``). The first one is required, the rest
    default to their component's value (else none). The handler calls ``run({component: value}, progress)``.
    """
    components = list(inputs.values())

    def handler(*args: Any) -> tuple[Any, ...]:
        *values, progress = args  # the inputs in order, then the Progress that the signature asks Gradio for
        return run(dict(zip(components, values, strict=True)), progress)

    first, *rest = inputs
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    named = [inspect.Parameter(first, kind), *(inspect.Parameter(name, kind, default=None) for name in rest)]
    progress = inspect.Parameter("progress", kind, default=gr.Progress())
    handler.__signature__ = inspect.Signature([*named, progress])  # type: ignore[attr-defined]
    return handler, components


def _refresher(service: Service, pickers: Pickers) -> Callable[[], tuple[Any, ...]]:
    """A UI event's handler: every picker offers the saved voices, or pairs, as they are now (``pickers.all``'s
    order)."""

    def refresh() -> tuple[Any, ...]:
        voices, pairs = ["", *service.voice_names()], ["", *service.pair_names()]
        return (
            *(gr.Dropdown(choices=voices) for _ in pickers.voices),
            *(gr.Dropdown(choices=pairs) for _ in pickers.pairs),
        )

    return refresh


def _guarded(
    service: Service,
    work: Callable[[Uploads, Notify], tuple[Any, ...]],
    progress: gr.Progress,
    *,
    failed: tuple[Any, ...],
) -> tuple[Any, ...]:
    """Run ``work`` in a fresh request folder (``Uploads``); any failure becomes ``(*failed, "error: <one line>")``."""

    def notify(description: str, fraction: float | None) -> None:
        progress(fraction, desc=description)

    with service.uploads() as uploads:
        try:
            return work(uploads, notify)
        except KnnvcError as exc:
            return (*failed, f"error: {uploads.message(exc)}")
        except Exception as exc:  # the page's boundary: log the traceback, show one line
            log.exception("unexpected error in the page")
            return (*failed, f"error: internal error ({type(exc).__name__}); the server log has the details")
