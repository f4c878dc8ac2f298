"""The typer applications: ``knnvc`` and its command groups. Commands register themselves on these."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="knnvc: zero-shot voice conversion (kNN-VC). Say any source's words in a target speaker's voice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
voice_app = typer.Typer(
    help="Build and inspect saved voices (matching sets).", no_args_is_help=True, rich_markup_mode=None
)
train_app = typer.Typer(
    help="Train your own vocoder: prematch features, then train HiFi-GAN.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(voice_app, name="voice")
app.add_typer(train_app, name="train")
