"""``python -m conveyor`` runs the CLI."""

from .cli import main

main()
