"""``knnvc train``: prematch features and train a HiFi-GAN vocoder (issue 5/5). Heavy imports stay inside commands."""

from __future__ import annotations

import typer

train_app = typer.Typer(help="Train your own vocoder: prematch features, then train HiFi-GAN.", no_args_is_help=True)
