"""The ``agentstream`` command: one module per command group."""

from agentstream.cli.app import app, main

__all__ = ["app", "main"]
