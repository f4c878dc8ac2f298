"""``python -m knnvc`` runs the CLI."""

from knnvc.cli import app

app()
