"""`bilevel train`: the trainer's own command (trainer/cli.py), registered here."""

from trainer.cli import add_train_parser as add_parser

__all__ = ["add_parser"]
